"""Autoscaler settings (Knative's `config-autoscaler`) and the per-revision scaling config (pure).

`AutoscalerSettings.from_mapping` takes Knative's key names and value syntax
(`stable-window: 60s`, `container-concurrency-target-percentage: 70`); every error names
the key and the allowed range. `resolve()` / `revision_config()` apply a revision's
`autoscaling.knative.dev/*` annotations over those settings, the way Knative's
`ResolveMetricTarget`, `MakeDecider` and annotation validation do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from ebb.autoscaler.parse import (
    INT32_MAX,
    SECOND_NS,
    format_duration_s,
    format_number,
    parse_bool,
    parse_duration_ns,
    parse_float,
    parse_int,
)
from ebb.common.settings import SettingsError

KPA_CLASS = "kpa.autoscaling.knative.dev"
HPA_CLASS = "hpa.autoscaling.knative.dev"
CONCURRENCY = "concurrency"
RPS = "rps"
LINEAR = "linear"
WEIGHTED_EXPONENTIAL = "weighted-exponential"

TARGET_MIN = 0.01  # Knative's autoscaling.TargetMin: no target may be smaller
WINDOW_MIN_S = 6
WINDOW_MAX_S = 3600
# Knative uses a fixed utilization for the rps metric (config's TargetUtilization, not a key).
RPS_TARGET_UTILIZATION = 0.7

ANNOTATION_GROUP = "autoscaling.knative.dev"
ANNOTATION_PREFIX = ANNOTATION_GROUP + "/"
ANNOTATIONS_PATH = "metadata.annotations"


class AnnotationError(SettingsError):
    """One or more `autoscaling.knative.dev/*` annotations are invalid; `.errors` lists them."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = list(errors)


# ---------------------------------------------------------------------------------------
# Cluster-wide settings


@dataclass(frozen=True)
class AutoscalerSettings:
    """Knative's config-autoscaler, with its defaults. Constructing one validates it."""

    enable_scale_to_zero: bool = True
    container_concurrency_target_default: float = 100.0
    # Target utilization as a fraction in (0, 1]; the key also accepts a percentage (70).
    container_concurrency_target_percentage: float = 0.7
    requests_per_second_target_default: float = 200.0
    # TBC: spare requests wanted beyond the load; -1 keeps the activator always in the path.
    target_burst_capacity: float = 211.0
    activator_capacity: float = 100.0
    stable_window_s: int = 60
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_to_zero_grace_period_s: float = 30.0
    scale_to_zero_pod_retention_period_s: float = 0.0
    scale_down_delay_s: int = 0
    initial_scale: int = 1
    allow_zero_initial_scale: bool = False
    min_scale: int = 0
    max_scale: int = 0  # 0 = unbounded
    max_scale_limit: int = 0  # 0 = no limit on max-scale
    pod_autoscaler_class: str = KPA_CLASS

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> AutoscalerSettings:
        """Build from Knative key names (`scale-to-zero-grace-period: 10s`); unknown keys are
        ignored as Knative does (see `unknown_keys`). Raises SettingsError naming the key."""
        values: dict[str, object] = {}
        for key, (attr, convert) in _KEYS.items():
            if key in data and data[key] is not None:
                values[attr] = convert(key, data[key])
        return cls(**values)

    def to_mapping(self) -> dict[str, object]:
        """The settings under their Knative key names (durations as Go strings)."""
        out: dict[str, object] = {}
        for key, (attr, _) in _KEYS.items():
            value = getattr(self, attr)
            out[key] = format_duration_s(value) if attr.endswith("_s") else value
        return out


def unknown_keys(data: Mapping[str, object]) -> list[str]:
    """Keys `from_mapping` ignores (Knative's own `_example` is not reported)."""
    return sorted(k for k in data if k not in _KEYS and not str(k).startswith("_"))


def _as_bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    try:
        return parse_bool(str(value).strip())
    except ValueError:
        raise SettingsError(f"{key} = {value!r}, must be true or false") from None


def _as_float(key: str, value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        result = float(value)
    else:
        try:
            result = parse_float(str(value).strip())
        except ValueError:
            raise SettingsError(f"{key} = {value!r}, must be a number") from None
    if not math.isfinite(result):
        raise SettingsError(f"{key} = {value!r}, must be a finite number")
    return result


def _as_int(key: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    else:
        try:
            result = parse_int(str(value).strip())
        except ValueError:
            raise SettingsError(f"{key} = {value!r}, must be an integer") from None
    if not -(2**31) <= result <= INT32_MAX:
        raise SettingsError(f"{key} = {value!r}, must fit in a 32-bit integer")
    return result


def _duration_ns(key: str, value: object) -> int:
    # A bare number (YAML `stable-window: 60`) is seconds; a string is a Go duration.
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise SettingsError(f"{key} = {value!r}, must be a duration like 30s, 1m30s or 500ms")
        return round(value * SECOND_NS)
    text = str(value).strip()
    try:
        return round(parse_float(text) * SECOND_NS)
    except ValueError:
        pass
    try:
        return parse_duration_ns(text)
    except ValueError:
        raise SettingsError(
            f"{key} = {value!r}, must be a duration like 30s, 1m30s or 500ms"
        ) from None


def _as_seconds(key: str, value: object) -> float:
    return _duration_ns(key, value) / SECOND_NS


def _as_whole_seconds(key: str, value: object) -> int:
    ns = _duration_ns(key, value)
    if ns % SECOND_NS:
        raise SettingsError(f"{key} = {format_duration_s(ns / SECOND_NS)}, must be whole seconds")
    return ns // SECOND_NS


def _as_fraction(key: str, value: object) -> float:
    # For legacy reasons Knative takes a fraction in (0, 1] or a percentage above 1.
    raw = _as_float(key, value)
    fraction = raw / 100.0 if raw > 1.0 else raw
    if not 0.0 < fraction <= 1.0:
        raise SettingsError(
            f"{key} = {format_number(raw)}, must be in (0, 1] as a fraction or (1, 100] as a percentage"
        )
    return fraction


def _as_str(key: str, value: object) -> str:
    return str(value).strip()


_Convert = Callable[[str, object], object]
_KEYS: dict[str, tuple[str, _Convert]] = {
    "enable-scale-to-zero": ("enable_scale_to_zero", _as_bool),
    "container-concurrency-target-default": ("container_concurrency_target_default", _as_float),
    "container-concurrency-target-percentage": (
        "container_concurrency_target_percentage",
        _as_fraction,
    ),
    "requests-per-second-target-default": ("requests_per_second_target_default", _as_float),
    "target-burst-capacity": ("target_burst_capacity", _as_float),
    "activator-capacity": ("activator_capacity", _as_float),
    "stable-window": ("stable_window_s", _as_whole_seconds),
    "panic-window-percentage": ("panic_window_percentage", _as_float),
    "panic-threshold-percentage": ("panic_threshold_percentage", _as_float),
    "max-scale-up-rate": ("max_scale_up_rate", _as_float),
    "max-scale-down-rate": ("max_scale_down_rate", _as_float),
    "scale-to-zero-grace-period": ("scale_to_zero_grace_period_s", _as_seconds),
    "scale-to-zero-pod-retention-period": ("scale_to_zero_pod_retention_period_s", _as_seconds),
    "scale-down-delay": ("scale_down_delay_s", _as_whole_seconds),
    "initial-scale": ("initial_scale", _as_int),
    "allow-zero-initial-scale": ("allow_zero_initial_scale", _as_bool),
    "min-scale": ("min_scale", _as_int),
    "max-scale": ("max_scale", _as_int),
    "max-scale-limit": ("max_scale_limit", _as_int),
    "pod-autoscaler-class": ("pod_autoscaler_class", _as_str),
}
KNATIVE_KEYS = tuple(_KEYS)
_KEY_OF = {attr: key for key, (attr, _) in _KEYS.items()}
assert set(_KEY_OF) == {f.name for f in fields(AutoscalerSettings)}


def _validate(s: AutoscalerSettings) -> None:
    def fail(attr: str, value: object, rule: str) -> None:
        shown = format_duration_s(value) if attr.endswith("_s") else format_number(value)
        raise SettingsError(f"{_KEY_OF[attr]} = {shown}, {rule}")

    for f in fields(s):
        value = getattr(s, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            fail(f.name, value, "must be a finite number")
    if s.container_concurrency_target_default <= 0:
        fail(
            "container_concurrency_target_default",
            s.container_concurrency_target_default,
            "must be greater than 0",
        )
    if not 0.0 < s.container_concurrency_target_percentage <= 1.0:
        fail(
            "container_concurrency_target_percentage",
            s.container_concurrency_target_percentage,
            "must be in (0, 1] as a fraction or (1, 100] as a percentage",
        )
    target = s.container_concurrency_target_percentage * s.container_concurrency_target_default
    if target < TARGET_MIN:
        raise SettingsError(
            "container-concurrency-target-percentage and container-concurrency-target-default "
            f"yield a target concurrency of {format_number(target)}, must be at least {TARGET_MIN}"
        )
    if s.requests_per_second_target_default < TARGET_MIN:
        fail(
            "requests_per_second_target_default",
            s.requests_per_second_target_default,
            f"must be at least {TARGET_MIN}",
        )
    if s.target_burst_capacity < 0 and s.target_burst_capacity != -1:
        fail(
            "target_burst_capacity",
            s.target_burst_capacity,
            "must be at least 0, or -1 (activator always in the path)",
        )
    if s.activator_capacity < 1:
        fail("activator_capacity", s.activator_capacity, "must be at least 1")
    if not WINDOW_MIN_S <= s.stable_window_s <= WINDOW_MAX_S:
        fail("stable_window_s", s.stable_window_s, "must be in 6s..1h")
    if s.stable_window_s != int(s.stable_window_s):
        fail("stable_window_s", s.stable_window_s, "must be whole seconds")
    if not 1 <= s.panic_window_percentage <= 100:
        fail("panic_window_percentage", s.panic_window_percentage, "must be in 1..100")
    if not 110 <= s.panic_threshold_percentage <= 1000:
        fail("panic_threshold_percentage", s.panic_threshold_percentage, "must be in 110..1000")
    if s.max_scale_up_rate <= 1.0:
        fail("max_scale_up_rate", s.max_scale_up_rate, "must be greater than 1.0")
    if s.max_scale_down_rate <= 1.0:
        fail("max_scale_down_rate", s.max_scale_down_rate, "must be greater than 1.0")
    if s.scale_to_zero_grace_period_s <= 0:
        fail(
            "scale_to_zero_grace_period_s",
            s.scale_to_zero_grace_period_s,
            "must be greater than 0s",
        )
    if s.scale_to_zero_pod_retention_period_s < 0:
        fail(
            "scale_to_zero_pod_retention_period_s",
            s.scale_to_zero_pod_retention_period_s,
            "must be at least 0s",
        )
    if not 0 <= s.scale_down_delay_s <= WINDOW_MAX_S:
        fail("scale_down_delay_s", s.scale_down_delay_s, "must be in 0s..1h")
    if s.scale_down_delay_s != int(s.scale_down_delay_s):
        fail("scale_down_delay_s", s.scale_down_delay_s, "must be whole seconds")
    if s.initial_scale < 0:
        fail("initial_scale", s.initial_scale, "must be at least 0")
    if s.initial_scale == 0 and not s.allow_zero_initial_scale:
        fail(
            "initial_scale",
            s.initial_scale,
            "must be at least 1 unless allow-zero-initial-scale is true",
        )
    if s.min_scale < 0:
        fail("min_scale", s.min_scale, "must be at least 0")
    if s.max_scale < 0:
        fail("max_scale", s.max_scale, "must be at least 0 (0 = unbounded)")
    if s.max_scale_limit < 0:
        fail("max_scale_limit", s.max_scale_limit, "must be at least 0 (0 = no limit)")
    if s.max_scale_limit > 0 and not 1 <= s.max_scale <= s.max_scale_limit:
        fail(
            "max_scale",
            s.max_scale,
            f"must be in 1..{s.max_scale_limit} when max-scale-limit is set",
        )
    if s.max_scale > 0 and s.max_scale < s.min_scale:
        fail(
            "max_scale",
            s.max_scale,
            f"must be at least min-scale = {s.min_scale} (or 0 = unbounded)",
        )
    if s.pod_autoscaler_class != KPA_CLASS:
        raise SettingsError(
            f"pod-autoscaler-class = {s.pod_autoscaler_class!r}, must be {KPA_CLASS} (the only class Ebb implements)"
        )


# ---------------------------------------------------------------------------------------
# Per-revision config


@dataclass(frozen=True)
class RevisionScalingConfig:
    """Everything the KPA needs of one revision, settings and annotations resolved."""

    autoscaler_class: str
    metric: str  # CONCURRENCY or RPS
    container_concurrency: int
    total_value: float  # target per instance before utilization (Knative's TotalValue)
    target_value: float  # what one instance should carry: max(0.01, total x utilization)
    target_utilization: float
    target_burst_capacity: float
    stable_window_s: int
    panic_window_percentage: float
    panic_window_s: int
    panic_threshold: float  # a ratio: 2.0 = 200 %
    max_scale_up_rate: float
    max_scale_down_rate: float
    min_scale: int
    max_scale: int
    initial_scale: int
    scale_down_delay_s: int
    activation_scale: int
    aggregation: str  # LINEAR or WEIGHTED_EXPONENTIAL
    enable_scale_to_zero: bool
    scale_to_zero_grace_period_s: float
    scale_to_zero_pod_retention_period_s: float
    activator_capacity: float


@dataclass(frozen=True)
class Resolution:
    """A revision's config plus the problems found; an invalid annotation falls back to the
    cluster setting and is reported in `errors` (field path first)."""

    config: RevisionScalingConfig
    errors: tuple[str, ...]


# Canonical name -> accepted spellings, canonical first (Knative's kmap.KeyPriority).
ANNOTATION_ALIASES: dict[str, tuple[str, ...]] = {
    "class": ("class",),
    "metric": ("metric",),
    "target": ("target",),
    "target-utilization-percentage": (
        "target-utilization-percentage",
        "targetUtilizationPercentage",
    ),
    "target-burst-capacity": ("target-burst-capacity", "targetBurstCapacity"),
    "window": ("window",),
    "panic-window-percentage": ("panic-window-percentage", "panicWindowPercentage"),
    "panic-threshold-percentage": ("panic-threshold-percentage", "panicThresholdPercentage"),
    "min-scale": ("min-scale", "minScale"),
    "max-scale": ("max-scale", "maxScale"),
    "initial-scale": ("initial-scale", "initialScale"),
    "scale-down-delay": ("scale-down-delay", "scaleDownDelay"),
    "activation-scale": ("activation-scale",),
    "metric-aggregation-algorithm": ("metric-aggregation-algorithm", "metricAggregationAlgorithm"),
    "scale-to-zero-pod-retention-period": (
        "scale-to-zero-pod-retention-period",
        "scaleToZeroPodRetentionPeriod",
    ),
}
_KNOWN_ANNOTATIONS = {
    ANNOTATION_PREFIX + a for aliases in ANNOTATION_ALIASES.values() for a in aliases
}
_ALGORITHMS = {
    LINEAR: LINEAR,
    WEIGHTED_EXPONENTIAL: WEIGHTED_EXPONENTIAL,
    "weightedExponential": WEIGHTED_EXPONENTIAL,
}


class _Annotations:
    """Reads annotations by canonical name and collects errors with their field paths."""

    def __init__(self, annotations: Mapping[str, str]) -> None:
        self._m = {str(k): str(v) for k, v in annotations.items()}
        self.errors: list[str] = []

    def error(self, key: str, rule: str) -> None:
        self.errors.append(f"{ANNOTATIONS_PATH}.{key}: {rule}")

    def get(self, name: str) -> tuple[str, str] | None:
        """(full key actually used, value) or None; the canonical spelling wins."""
        for alias in ANNOTATION_ALIASES[name]:
            key = ANNOTATION_PREFIX + alias
            if key in self._m:
                return key, self._m[key]
        return None

    def check_keys(self) -> None:
        for key in sorted(self._m):
            if key.startswith(ANNOTATION_PREFIX) and key not in _KNOWN_ANNOTATIONS:
                self.error(key, f'invalid key name "{key}" (not a known autoscaling annotation)')
        for aliases in ANNOTATION_ALIASES.values():
            present = [ANNOTATION_PREFIX + a for a in aliases if ANNOTATION_PREFIX + a in self._m]
            if len(present) > 1:
                self.error(
                    present[1],
                    f"expected exactly one of {', '.join(present)}, got both ({present[0]} is used)",
                )

    def number(
        self, name: str, low: float | None = None, high: float | None = None
    ) -> float | None:
        found = self.get(name)
        if found is None:
            return None
        key, text = found
        try:
            value = parse_float(text)
        except ValueError:
            self.error(key, f"invalid value: {text}")
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            self.error(key, f"expected {format_number(low)} <= {text} <= {format_number(high)}")
            return None
        return value

    def integer(self, name: str) -> int | None:
        """A non-negative int32, as Knative's getIntGE0."""
        found = self.get(name)
        if found is None:
            return None
        key, text = found
        try:
            value = parse_int(text)
        except ValueError:
            if text.lstrip("+-").isdigit():
                self.error(key, f"expected 0 <= {text} <= {INT32_MAX}")
            else:
                self.error(key, f"invalid value: {text}")
            return None
        if value < 0:
            self.error(key, f"expected 0 <= {text} <= {INT32_MAX}")
            return None
        return value

    def duration_s(
        self, name: str, low_s: int, high_s: int, whole_seconds: bool
    ) -> int | float | None:
        found = self.get(name)
        if found is None:
            return None
        key, text = found
        try:
            ns = parse_duration_ns(text)
        except ValueError:
            self.error(key, f"invalid value: {text}")
            return None
        if not low_s * SECOND_NS <= ns <= high_s * SECOND_NS:
            self.error(
                key, f"expected {format_duration_s(low_s)} <= {text} <= {format_duration_s(high_s)}"
            )
            return None
        if whole_seconds and ns % SECOND_NS:
            self.error(key, "must be specified with at most second precision")
            return None
        return ns // SECOND_NS if whole_seconds else ns / SECOND_NS


def resolve(
    settings: AutoscalerSettings, annotations: Mapping[str, str], container_concurrency: int
) -> Resolution:
    """Apply a revision's annotations over the cluster settings; never raises.

    Worked example: CC = 10, `target: 50`, utilization 0.7 -> total = min(50, 10) = 10,
    TargetValue = 7; stable window 60 s x 10 % -> panic window 6 s.
    """
    a = _Annotations(annotations)
    a.check_keys()

    cc = container_concurrency
    if not 0 <= cc <= 1000:
        a.errors.append(f"spec.containerConcurrency: expected 0 <= {cc} <= 1000 (0 is used)")
        cc = 0

    autoscaler_class = settings.pod_autoscaler_class
    found = a.get("class")
    if found is not None:
        # Knative also admits the HPA and foreign classes; Ebb implements only the KPA, and
        # a class nobody implements would leave the revision unscaled.
        if found[1] == KPA_CLASS:
            autoscaler_class = KPA_CLASS
        else:
            a.error(found[0], f"invalid value: {found[1]} (Ebb supports only {KPA_CLASS})")

    metric = CONCURRENCY
    found = a.get("metric")
    if found is not None:
        if found[1] in (CONCURRENCY, RPS):
            metric = found[1]
        else:
            a.error(found[0], f"invalid value: {found[1]}")

    # ResolveMetricTarget.
    if metric == RPS:
        total = settings.requests_per_second_target_default
        utilization = RPS_TARGET_UTILIZATION
    else:
        total = float(cc) if cc > 0 else settings.container_concurrency_target_default
        utilization = settings.container_concurrency_target_percentage
    target_ann = a.get("target")
    if target_ann is not None:
        try:
            target = parse_float(target_ann[1])
        except ValueError:
            a.error(target_ann[0], f"invalid value: {target_ann[1]}")
        else:
            if target < TARGET_MIN:
                a.error(target_ann[0], f"target {target_ann[1]} should be at least {TARGET_MIN}")
            else:
                total = min(target, float(cc)) if metric == CONCURRENCY and cc > 0 else target
    tu_pct = a.number("target-utilization-percentage", 1, 100)
    if tu_pct is not None:
        utilization = tu_pct / 100.0
    target_value = max(TARGET_MIN, total * utilization)

    tbc = settings.target_burst_capacity
    found = a.get("target-burst-capacity")
    if found is not None:
        try:
            value = parse_float(found[1])
        except ValueError:
            value = None
        if value is None or (value < 0 and value != -1):
            a.error(found[0], f"invalid value: {found[1]}")
        else:
            tbc = value

    window = a.duration_s("window", WINDOW_MIN_S, WINDOW_MAX_S, whole_seconds=True)
    stable_window_s = int(window) if window is not None else settings.stable_window_s
    pwp = a.number("panic-window-percentage", 1, 100)
    panic_window_percentage = pwp if pwp is not None else settings.panic_window_percentage
    # Half-up rounding, at least one 1 s bucket: 60 s x 10 % = 6 s; 15 s x 5 % = 0.75 -> 1 s.
    panic_window_s = max(1, math.floor(stable_window_s * panic_window_percentage / 100.0 + 0.5))
    ptp = a.number("panic-threshold-percentage", 110, 1000)
    panic_threshold = (ptp if ptp is not None else settings.panic_threshold_percentage) / 100.0

    min_ann = a.integer("min-scale")
    max_ann = a.integer("max-scale")
    min_scale = min_ann if min_ann is not None else settings.min_scale
    max_scale = max_ann if max_ann is not None else settings.max_scale
    max_key = a.get("max-scale")
    if max_ann is not None and max_key is not None:
        ann_min = min_ann or 0
        if max_ann != 0 and max_ann < ann_min:
            a.error(max_key[0], f"max-scale={max_ann} is less than min-scale={ann_min}")
            max_scale = settings.max_scale
        elif settings.max_scale_limit > 0 and max_ann > settings.max_scale_limit:
            a.error(max_key[0], f"expected 1 <= {max_ann} <= {settings.max_scale_limit}")
            max_scale = settings.max_scale
        elif settings.max_scale_limit > 0 and max_ann == 0:
            a.error(
                max_key[0], f"max-scale=0 (unlimited), must be less than {settings.max_scale_limit}"
            )
            max_scale = settings.max_scale

    activation_scale = 1
    found = a.get("activation-scale")
    if found is not None:
        key, text = found
        ann_min, ann_max = min_ann or 0, max_ann or 0
        try:
            value = parse_int(text)
        except ValueError:
            a.error(key, f"invalid value: {text}")
        else:
            if ann_min > value:
                a.error(key, f"min-scale={ann_min} is greater than activation-scale={value}")
            elif ann_max != 0 and ann_max < value:
                a.error(key, f"max-scale={ann_max} is less than activation-scale={value}")
            elif value < 2:
                a.error(key, f"activation-scale={value} must be greater than 1")
            else:
                activation_scale = value

    initial_scale = settings.initial_scale
    found = a.get("initial-scale")
    if found is not None:
        key, text = found
        try:
            value = parse_int(text)
        except ValueError:
            a.error(key, f"invalid value: {text}")
        else:
            if value < 0:
                a.error(key, f"invalid value: {text} (must be greater than or equal to 0)")
            elif value == 0 and not settings.allow_zero_initial_scale:
                a.error(key, f"invalid value: {text} (initial-scale=0 not allowed by cluster)")
            else:
                initial_scale = value

    delay = a.duration_s("scale-down-delay", 0, WINDOW_MAX_S, whole_seconds=True)
    scale_down_delay_s = int(delay) if delay is not None else settings.scale_down_delay_s
    retention = a.duration_s(
        "scale-to-zero-pod-retention-period", 0, WINDOW_MAX_S, whole_seconds=False
    )
    retention_s = (
        float(retention) if retention is not None else settings.scale_to_zero_pod_retention_period_s
    )

    aggregation = LINEAR
    found = a.get("metric-aggregation-algorithm")
    if found is not None:
        if found[1] in _ALGORITHMS:
            aggregation = _ALGORITHMS[found[1]]
        else:
            a.error(found[0], f"invalid value: {found[1]}")

    config = RevisionScalingConfig(
        autoscaler_class=autoscaler_class,
        metric=metric,
        container_concurrency=cc,
        total_value=total,
        target_value=target_value,
        target_utilization=utilization,
        target_burst_capacity=tbc,
        stable_window_s=stable_window_s,
        panic_window_percentage=panic_window_percentage,
        panic_window_s=panic_window_s,
        panic_threshold=panic_threshold,
        max_scale_up_rate=settings.max_scale_up_rate,
        max_scale_down_rate=settings.max_scale_down_rate,
        min_scale=min_scale,
        max_scale=max_scale,
        initial_scale=initial_scale,
        scale_down_delay_s=scale_down_delay_s,
        activation_scale=activation_scale,
        aggregation=aggregation,
        enable_scale_to_zero=settings.enable_scale_to_zero,
        scale_to_zero_grace_period_s=settings.scale_to_zero_grace_period_s,
        scale_to_zero_pod_retention_period_s=retention_s,
        activator_capacity=settings.activator_capacity,
    )
    return Resolution(config=config, errors=tuple(a.errors))


def revision_config(
    settings: AutoscalerSettings, annotations: Mapping[str, str], container_concurrency: int
) -> RevisionScalingConfig:
    """Like `resolve` but strict: raises AnnotationError listing every invalid annotation."""
    resolution = resolve(settings, annotations, container_concurrency)
    if resolution.errors:
        raise AnnotationError(list(resolution.errors))
    return resolution.config
