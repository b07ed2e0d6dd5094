"""The `autoscaling.knative.dev/*` annotations: their names, aliases and Knative's rules."""

from __future__ import annotations

from collections.abc import Mapping

from ebb.webhook.goparse import (
    INT32_MAX,
    SECOND_NS,
    OutOfRange,
    format_duration_ns,
    format_go_number,
    parse_duration_ns,
    parse_float,
    parse_int,
)
from ebb.webhook.model import AdmissionSettings, FieldError

GROUP = "autoscaling.knative.dev"
PREFIX = GROUP + "/"
KPA = "kpa.autoscaling.knative.dev"
HPA = "hpa.autoscaling.knative.dev"

# Canonical name -> accepted spellings, canonical first (Knative's kmap.KeyPriority).
ALIASES: dict[str, tuple[str, ...]] = {
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
_CANONICAL_OF = {PREFIX + alias: name for name, aliases in ALIASES.items() for alias in aliases}

WINDOW_MIN_NS = 6 * SECOND_NS
WINDOW_MAX_NS = 3600 * SECOND_NS
TARGET_MIN = 0.01
PANIC_WINDOW_PCT = (1.0, 100.0)
PANIC_THRESHOLD_PCT = (110.0, 1000.0)
ALGORITHMS = ("linear", "weighted-exponential", "weightedExponential")


def key(name: str) -> str:
    """The full canonical annotation key of a short name: `autoscaling.knative.dev/min-scale`."""
    return PREFIX + name


def canonicalize(annotations: Mapping[str, str]) -> dict[str, str]:
    """Rename alias keys (`minScale`) to canonical ones (`min-scale`) when that is unambiguous.

    Ebb does this at defaulting so that every reader downstream (controller, autoscaler)
    only needs the canonical names. When both spellings are present nothing is renamed
    and validation reports the clash.
    """
    out = dict(annotations)
    for name, aliases in ALIASES.items():
        present = [PREFIX + a for a in aliases if PREFIX + a in out]
        if len(present) == 1 and present[0] != key(name):
            out[key(name)] = out.pop(present[0])
    return out


def _lookup(annotations: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(key actually used, value) for a canonical name; the canonical spelling wins."""
    for alias in ALIASES[name]:
        if PREFIX + alias in annotations:
            return PREFIX + alias, annotations[PREFIX + alias]
    return None


def no_autoscaling_annotations(annotations: Mapping[str, str], path: str) -> list[FieldError]:
    """Service, Configuration and Route metadata may not carry autoscaling annotations."""
    return [
        FieldError(
            path,
            f'invalid key name "{k}" '
            '(autoscaling annotations must be put under "spec.template.metadata.annotations" to work)',
        )
        for k in sorted(annotations)
        if k.startswith(GROUP)
    ]


def validate_annotations(
    annotations: Mapping[str, str], path: str, settings: AdmissionSettings
) -> list[FieldError]:
    """Every rule on the autoscaling annotations; `path` is the annotations map's path."""
    errs: list[FieldError] = []

    def at(k: str) -> str:
        return f"{path}.{k}"

    errs += _known_and_unique(annotations, at)
    class_ = _lookup(annotations, "class")
    errs += _validate_class(class_, at)
    errs += _validate_min_max(annotations, at, settings)
    errs += _validate_floats(annotations, at)
    errs += _validate_durations(annotations, at)
    errs += _validate_metric(annotations, at)
    errs += _validate_algorithm(annotations, at)
    errs += _validate_initial_scale(annotations, at, settings)
    return errs


def _known_and_unique(annotations: Mapping[str, str], at) -> list[FieldError]:
    # Ebb refuses keys it does not know: a typo ("min-scales") would otherwise be ignored
    # silently and the revision would scale in a way the user did not ask for.
    errs = []
    for k in sorted(annotations):
        if k.startswith(PREFIX) and k not in _CANONICAL_OF:
            errs.append(
                FieldError(at(k), f'invalid key name "{k}" (not a known autoscaling annotation)')
            )
    for aliases in ALIASES.values():
        present = [PREFIX + a for a in aliases if PREFIX + a in annotations]
        if len(present) > 1:
            errs.append(
                FieldError(", ".join(at(k) for k in present), "expected exactly one, got both")
            )
    return errs


def _validate_class(class_: tuple[str, str] | None, at) -> list[FieldError]:
    if class_ is None:
        return []
    k, v = class_
    if v == KPA:
        return []
    # Knative also admits hpa.autoscaling.knative.dev and foreign classes; Ebb only has the
    # KPA, and a class nobody implements would leave the revision unscaled.
    return [FieldError(at(k), f"invalid value: {v} (Ebb supports only {KPA})")]


def _int_ge0(annotations: Mapping[str, str], name: str, at) -> tuple[int, list[FieldError]]:
    found = _lookup(annotations, name)
    if found is None:
        return 0, []
    k, v = found
    try:
        value = parse_int(v, 32)
    except OutOfRange:
        return 0, [FieldError(at(k), f"expected 0 <= {v} <= {INT32_MAX}")]
    except ValueError:
        return 0, [FieldError(at(k), f"invalid value: {v}")]
    if value < 0:
        return 0, [FieldError(at(k), f"expected 0 <= {v} <= {INT32_MAX}")]
    return value, []


def _validate_min_max(
    annotations: Mapping[str, str], at, settings: AdmissionSettings
) -> list[FieldError]:
    min_scale, errs = _int_ge0(annotations, "min-scale", at)
    max_scale, max_errs = _int_ge0(annotations, "max-scale", at)
    errs += max_errs
    max_found = _lookup(annotations, "max-scale")
    if max_scale != 0 and max_scale < min_scale:
        errs.append(
            FieldError(
                at(max_found[0]), f"max-scale={max_scale} is less than min-scale={min_scale}"
            )
        )
    if max_found is not None and settings.max_scale_limit > 0 and not max_errs:
        limit = settings.max_scale_limit
        if max_scale > limit:
            errs.append(FieldError(at(max_found[0]), f"expected 1 <= {max_scale} <= {limit}"))
        if max_scale == 0:
            errs.append(
                FieldError(at(max_found[0]), f"max-scale=0 (unlimited), must be less than {limit}")
            )
    found = _lookup(annotations, "activation-scale")
    if found is not None:
        k, v = found
        try:
            activation = parse_int(v, 32)
        except ValueError:
            errs.append(FieldError(at(k), f"invalid value: {v}"))
        else:
            if min_scale > activation:
                errs.append(
                    FieldError(
                        at(k),
                        f"min-scale={min_scale} is greater than activation-scale={activation}",
                    )
                )
            elif max_scale != 0 and max_scale < activation:
                errs.append(
                    FieldError(
                        at(k), f"max-scale={max_scale} is less than activation-scale={activation}"
                    )
                )
            elif activation < 2:
                errs.append(
                    FieldError(at(k), f"activation-scale={activation} must be greater than 1")
                )
    return errs


def _validate_floats(annotations: Mapping[str, str], at) -> list[FieldError]:
    errs: list[FieldError] = []
    for name, (low, high) in (
        ("panic-window-percentage", PANIC_WINDOW_PCT),
        ("panic-threshold-percentage", PANIC_THRESHOLD_PCT),
        ("target-utilization-percentage", (1.0, 100.0)),
    ):
        found = _lookup(annotations, name)
        if found is None:
            continue
        k, v = found
        try:
            value = parse_float(v)
        except ValueError:
            errs.append(FieldError(at(k), f"invalid value: {v}"))
            continue
        if not low <= value <= high:
            errs.append(
                FieldError(
                    at(k), f"expected {format_go_number(low)} <= {v} <= {format_go_number(high)}"
                )
            )
    found = _lookup(annotations, "target")
    if found is not None:
        k, v = found
        try:
            value = parse_float(v)
        except ValueError:
            errs.append(FieldError(at(k), f"invalid value: {v}"))
        else:
            if value < TARGET_MIN:
                errs.append(
                    FieldError(
                        at(k), f"target {v} should be at least {format_go_number(TARGET_MIN)}"
                    )
                )
    found = _lookup(annotations, "target-burst-capacity")
    if found is not None:
        k, v = found
        try:
            value = parse_float(v)
        except ValueError:
            value = None
        if value is None or (value < 0 and value != -1):
            errs.append(FieldError(at(k), f"invalid value: {v}"))
    return errs


def _validate_durations(annotations: Mapping[str, str], at) -> list[FieldError]:
    errs: list[FieldError] = []
    low_text, high_text = format_duration_ns(WINDOW_MIN_NS), format_duration_ns(WINDOW_MAX_NS)
    found = _lookup(annotations, "window")
    if found is not None:
        k, v = found
        try:
            ns = parse_duration_ns(v)
        except ValueError:
            errs.append(FieldError(at(k), f"invalid value: {v}"))
        else:
            if not WINDOW_MIN_NS <= ns <= WINDOW_MAX_NS:
                errs.append(FieldError(at(k), f"expected {low_text} <= {v} <= {high_text}"))
            elif ns % SECOND_NS:
                errs.append(FieldError(at(k), "must be specified with at most second precision"))
    for name, whole_seconds in (
        ("scale-down-delay", True),
        ("scale-to-zero-pod-retention-period", False),
    ):
        found = _lookup(annotations, name)
        if found is None:
            continue
        k, v = found
        try:
            ns = parse_duration_ns(v)
        except ValueError:
            errs.append(FieldError(at(k), f"invalid value: {v}"))
            continue
        if not 0 <= ns <= WINDOW_MAX_NS:
            errs.append(FieldError(at(k), f"expected 0s <= {v} <= {high_text}"))
        elif whole_seconds and ns % SECOND_NS:
            errs.append(FieldError(at(k), "must be specified with at most second precision"))
    return errs


def _validate_metric(annotations: Mapping[str, str], at) -> list[FieldError]:
    found = _lookup(annotations, "metric")
    if found is None:
        return []
    k, v = found
    if v in ("concurrency", "rps"):
        return []
    return [FieldError(at(k), f"invalid value: {v}")]


def _validate_algorithm(annotations: Mapping[str, str], at) -> list[FieldError]:
    # Knative checks this only when the class is spelled out as KPA; in Ebb the KPA is the
    # only class, so it is checked always.
    found = _lookup(annotations, "metric-aggregation-algorithm")
    if found is None or found[1] in ALGORITHMS:
        return []
    return [FieldError(at(found[0]), f"invalid value: {found[1]}")]


def _validate_initial_scale(
    annotations: Mapping[str, str], at, settings: AdmissionSettings
) -> list[FieldError]:
    found = _lookup(annotations, "initial-scale")
    if found is None:
        return []
    k, v = found
    try:
        value = parse_int(v, 64)
    except ValueError:
        return [FieldError(at(k), f"invalid value: {v}")]
    if value < 0:
        return [FieldError(at(k), f"invalid value: {v} (must be greater than or equal to 0)")]
    if value == 0 and not settings.allow_zero_initial_scale:
        return [FieldError(at(k), f"invalid value: {v} (initial-scale=0 not allowed by cluster)")]
    return []
