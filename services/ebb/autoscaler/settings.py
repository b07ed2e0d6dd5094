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

from ebb.common import knative_autoscaling
from ebb.common.goparse import (
    INT32_MAX,
    SECOND_NS,
    format_duration_s,
    format_number,
    parse_bool,
    parse_duration_ns,
    parse_float,
    parse_int,
)
from ebb.common.knative_autoscaling import (
    CONCURRENCY,
    LINEAR,
    PANIC_THRESHOLD_PERCENTAGE,
    PANIC_WINDOW_PERCENTAGE,
    RPS,
    TARGET_MIN,
    WINDOW_MAX_S,
    WINDOW_MIN_S,
)
from ebb.common.knative_autoscaling import KPA as KPA_CLASS
from ebb.common.settings import SettingsError

# Knative uses a fixed utilization for the rps metric (config's TargetUtilization, not a key).
RPS_TARGET_UTILIZATION = 0.7

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
            result = parse_int(str(value).strip(), 32)
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
    for attr, (low, high) in (
        ("panic_window_percentage", PANIC_WINDOW_PERCENTAGE),
        ("panic_threshold_percentage", PANIC_THRESHOLD_PERCENTAGE),
    ):
        if not low <= getattr(s, attr) <= high:
            fail(attr, getattr(s, attr), f"must be in {low}..{high}")
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


def resolve(
    settings: AutoscalerSettings, annotations: Mapping[str, str], container_concurrency: int
) -> Resolution:
    """Apply a revision's annotations over the cluster settings; never raises.

    The rules are the webhook's (`ebb.common.knative_autoscaling`); an annotation that
    breaks one is reported and the cluster setting is used instead.
    Worked example: CC = 10, `target: 50`, utilization 0.7 -> total = min(50, 10) = 10,
    TargetValue = 7; stable window 60 s x 10 % -> panic window 6 s.
    """
    checked = knative_autoscaling.check(
        {str(k): str(v) for k, v in annotations.items()},
        max_scale_limit=settings.max_scale_limit,
        allow_zero_initial_scale=settings.allow_zero_initial_scale,
    )
    ann = checked.values
    errors = [_annotation_error(p) for p in checked.problems if p.name is None]
    cc = container_concurrency
    if not 0 <= cc <= 1000:
        errors.append(f"spec.containerConcurrency: expected 0 <= {cc} <= 1000 (0 is used)")
        cc = 0
    # One line per refused annotation (its first problem), in the order they are applied.
    first: dict[str, knative_autoscaling.Problem] = {}
    for problem in checked.problems:
        if problem.name is not None:
            first.setdefault(problem.name, problem)
    errors += [_annotation_error(first[name]) for name in _REPORT_ORDER if name in first]

    # ResolveMetricTarget.
    metric = ann.get("metric", CONCURRENCY)
    if metric == RPS:
        total = settings.requests_per_second_target_default
        utilization = RPS_TARGET_UTILIZATION
    else:
        total = float(cc) if cc > 0 else settings.container_concurrency_target_default
        utilization = settings.container_concurrency_target_percentage
    if "target" in ann:
        target = ann["target"]
        total = min(target, float(cc)) if metric == CONCURRENCY and cc > 0 else target
    if "target-utilization-percentage" in ann:
        utilization = ann["target-utilization-percentage"] / 100.0
    target_value = max(TARGET_MIN, total * utilization)

    stable_window_s = ann.get("window", settings.stable_window_s)
    panic_window_percentage = ann.get("panic-window-percentage", settings.panic_window_percentage)
    # Half-up rounding, at least one 1 s bucket: 60 s x 10 % = 6 s; 15 s x 5 % = 0.75 -> 1 s.
    panic_window_s = max(1, math.floor(stable_window_s * panic_window_percentage / 100.0 + 0.5))
    panic_threshold_percentage = ann.get(
        "panic-threshold-percentage", settings.panic_threshold_percentage
    )

    config = RevisionScalingConfig(
        autoscaler_class=ann.get("class", settings.pod_autoscaler_class),
        metric=metric,
        container_concurrency=cc,
        total_value=total,
        target_value=target_value,
        target_utilization=utilization,
        target_burst_capacity=ann.get("target-burst-capacity", settings.target_burst_capacity),
        stable_window_s=stable_window_s,
        panic_window_percentage=panic_window_percentage,
        panic_window_s=panic_window_s,
        panic_threshold=panic_threshold_percentage / 100.0,
        max_scale_up_rate=settings.max_scale_up_rate,
        max_scale_down_rate=settings.max_scale_down_rate,
        min_scale=ann.get("min-scale", settings.min_scale),
        max_scale=ann.get("max-scale", settings.max_scale),
        initial_scale=ann.get("initial-scale", settings.initial_scale),
        scale_down_delay_s=ann.get("scale-down-delay", settings.scale_down_delay_s),
        activation_scale=ann.get("activation-scale", 1),
        aggregation=ann.get("metric-aggregation-algorithm", LINEAR),
        enable_scale_to_zero=settings.enable_scale_to_zero,
        scale_to_zero_grace_period_s=settings.scale_to_zero_grace_period_s,
        scale_to_zero_pod_retention_period_s=ann.get(
            "scale-to-zero-pod-retention-period", settings.scale_to_zero_pod_retention_period_s
        ),
        activator_capacity=settings.activator_capacity,
    )
    return Resolution(config=config, errors=tuple(errors))


# The order resolve() reports refused annotations in, after the unknown or doubly spelled
# keys and containerConcurrency (the webhook's order differs; these lines have always
# come in this one).
_REPORT_ORDER = (
    "class",
    "metric",
    "target",
    "target-utilization-percentage",
    "target-burst-capacity",
    "window",
    "panic-window-percentage",
    "panic-threshold-percentage",
    "min-scale",
    "max-scale",
    "activation-scale",
    "initial-scale",
    "scale-down-delay",
    "scale-to-zero-pod-retention-period",
    "metric-aggregation-algorithm",
)
assert sorted(_REPORT_ORDER) == sorted(knative_autoscaling.ALIASES)


def _annotation_error(problem: knative_autoscaling.Problem) -> str:
    """One error line, field path first; a clash is placed on the spelling not used."""
    if problem.clash:
        used, *others = problem.keys
        listed = ", ".join(problem.keys)
        return (
            f"{ANNOTATIONS_PATH}.{others[0]}: "
            f"expected exactly one of {listed}, got both ({used} is used)"
        )
    return f"{ANNOTATIONS_PATH}.{problem.keys[0]}: {problem.message}"


def revision_config(
    settings: AutoscalerSettings, annotations: Mapping[str, str], container_concurrency: int
) -> RevisionScalingConfig:
    """Like `resolve` but strict: raises AnnotationError listing every invalid annotation."""
    resolution = resolve(settings, annotations, container_concurrency)
    if resolution.errors:
        raise AnnotationError(list(resolution.errors))
    return resolution.config
