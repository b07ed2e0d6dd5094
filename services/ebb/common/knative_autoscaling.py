"""The `autoscaling.knative.dev/*` annotations: names, aliases and Knative's rules (pure).

One table says which annotations exist, how else they may be spelled and what each value
must be; `check` applies it and returns the values that passed plus structured problems.
The webhook turns the problems into admission errors, the autoscaler into its own error
lines while it falls back to the cluster setting, so both refuse exactly the same things.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ebb.common.goparse import (
    INT32_MAX,
    SECOND_NS,
    OutOfRange,
    format_duration_s,
    format_number,
    parse_duration_ns,
    parse_float,
    parse_int,
)

GROUP = "autoscaling.knative.dev"
PREFIX = GROUP + "/"
KPA = "kpa.autoscaling.knative.dev"
CONCURRENCY = "concurrency"
RPS = "rps"
LINEAR = "linear"
WEIGHTED_EXPONENTIAL = "weighted-exponential"

TARGET_MIN = 0.01  # Knative's autoscaling.TargetMin: no target may be smaller
WINDOW_MIN_S = 6
WINDOW_MAX_S = 3600  # also the longest scale-down delay and pod retention
# Inclusive bounds, for the annotations and the config-autoscaler keys alike.
PANIC_WINDOW_PERCENTAGE = (1, 100)
PANIC_THRESHOLD_PERCENTAGE = (110, 1000)


class _Refused(Exception):
    """A value breaks its rule; the argument is Knative's message."""


# A rule turns an annotation's text into its value or raises _Refused.
Rule = Callable[[str], object]


def _one_of(accepted: Mapping[str, str], note: str = "") -> Rule:
    """A value from a fixed set; `accepted` maps each spelling to the value it stands for."""

    def rule(text: str) -> str:
        if text not in accepted:
            raise _Refused(f"invalid value: {text}{note}")
        return accepted[text]

    return rule


def _number(text: str) -> float:
    try:
        return parse_float(text)
    except ValueError:
        raise _Refused(f"invalid value: {text}") from None


def _number_in(low: float, high: float) -> Rule:
    def rule(text: str) -> float:
        value = _number(text)
        if not low <= value <= high:
            raise _Refused(f"expected {format_number(low)} <= {text} <= {format_number(high)}")
        return value

    return rule


def _target(text: str) -> float:
    value = _number(text)
    if value < TARGET_MIN:
        raise _Refused(f"target {text} should be at least {format_number(TARGET_MIN)}")
    return value


def _burst_capacity(text: str) -> float:
    # -1 keeps the activator in the path for good; any other negative means nothing.
    value = _number(text)
    if value < 0 and value != -1:
        raise _Refused(f"invalid value: {text}")
    return value


def _duration_in(low_s: int, high_s: int, *, whole_seconds: bool) -> Rule:
    """A Go duration within [low_s, high_s]; its value is in seconds (an int when whole)."""

    def rule(text: str) -> int | float:
        try:
            ns = parse_duration_ns(text)
        except ValueError:
            raise _Refused(f"invalid value: {text}") from None
        if not low_s * SECOND_NS <= ns <= high_s * SECOND_NS:
            low, high = format_duration_s(low_s), format_duration_s(high_s)
            raise _Refused(f"expected {low} <= {text} <= {high}")
        if whole_seconds and ns % SECOND_NS:
            raise _Refused("must be specified with at most second precision")
        return ns // SECOND_NS if whole_seconds else ns / SECOND_NS

    return rule


def _integer(text: str, bits: int = 32) -> int:
    try:
        return parse_int(text, bits)
    except ValueError:
        raise _Refused(f"invalid value: {text}") from None


def _scale_bound(text: str) -> int:
    """min-scale and max-scale, as Knative's getIntGE0: a non-negative int32."""
    try:
        value = parse_int(text, 32)
    except OutOfRange:
        value = -1
    except ValueError:
        raise _Refused(f"invalid value: {text}") from None
    if value < 0:
        raise _Refused(f"expected 0 <= {text} <= {INT32_MAX}")
    return value


def _initial_scale(text: str) -> int:
    # Knative reads it with strconv.Atoi: 64 bits, unlike the other scales.
    value = _integer(text, 64)
    if value < 0:
        raise _Refused(f"invalid value: {text} (must be greater than or equal to 0)")
    return value


# Canonical short name -> (older camelCase spellings, the rule its text must meet). The
# value a rule returns is a str for the choices, an int for the scales, seconds for the
# durations (an int for the whole-second ones) and a float for the rest.
_TABLE: dict[str, tuple[tuple[str, ...], Rule]] = {
    # Knative also admits the HPA and foreign classes; Ebb implements only the KPA, and a
    # class nobody implements would leave the revision unscaled.
    "class": ((), _one_of({KPA: KPA}, f" (Ebb supports only {KPA})")),
    "metric": ((), _one_of({CONCURRENCY: CONCURRENCY, RPS: RPS})),
    "target": ((), _target),
    "target-utilization-percentage": (("targetUtilizationPercentage",), _number_in(1, 100)),
    "target-burst-capacity": (("targetBurstCapacity",), _burst_capacity),
    "window": ((), _duration_in(WINDOW_MIN_S, WINDOW_MAX_S, whole_seconds=True)),
    "panic-window-percentage": (("panicWindowPercentage",), _number_in(*PANIC_WINDOW_PERCENTAGE)),
    "panic-threshold-percentage": (
        ("panicThresholdPercentage",),
        _number_in(*PANIC_THRESHOLD_PERCENTAGE),
    ),
    "min-scale": (("minScale",), _scale_bound),
    "max-scale": (("maxScale",), _scale_bound),
    "initial-scale": (("initialScale",), _initial_scale),
    "scale-down-delay": (("scaleDownDelay",), _duration_in(0, WINDOW_MAX_S, whole_seconds=True)),
    "activation-scale": ((), _integer),
    # Knative checks the algorithm only when the class is spelled out as KPA; in Ebb the
    # KPA is the only class, so it is checked always.
    "metric-aggregation-algorithm": (
        ("metricAggregationAlgorithm",),
        _one_of(
            {
                LINEAR: LINEAR,
                WEIGHTED_EXPONENTIAL: WEIGHTED_EXPONENTIAL,
                "weightedExponential": WEIGHTED_EXPONENTIAL,
            }
        ),
    ),
    "scale-to-zero-pod-retention-period": (
        ("scaleToZeroPodRetentionPeriod",),
        _duration_in(0, WINDOW_MAX_S, whole_seconds=False),
    ),
}

# Canonical name -> accepted spellings, canonical first (Knative's kmap.KeyPriority).
ALIASES: dict[str, tuple[str, ...]] = {name: (name, *old) for name, (old, _) in _TABLE.items()}
_CANONICAL_OF = {PREFIX + alias: name for name, aliases in ALIASES.items() for alias in aliases}

# The order `check` reports value problems in, after the key problems: the webhook's
# (Knative's ValidateAnnotations: class, min/max scale, floats, durations, metric,
# algorithm, initial scale).
REPORT_ORDER = (
    "class",
    "min-scale",
    "max-scale",
    "activation-scale",
    "panic-window-percentage",
    "panic-threshold-percentage",
    "target-utilization-percentage",
    "target",
    "target-burst-capacity",
    "window",
    "scale-down-delay",
    "scale-to-zero-pod-retention-period",
    "metric",
    "metric-aggregation-algorithm",
    "initial-scale",
)
assert sorted(REPORT_ORDER) == sorted(_TABLE)


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


def lookup(annotations: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(full key actually used, value) for a canonical name; the canonical spelling wins."""
    for alias in ALIASES[name]:
        if PREFIX + alias in annotations:
            return PREFIX + alias, annotations[PREFIX + alias]
    return None


@dataclass(frozen=True)
class Problem:
    """One broken rule: the full key(s) at fault and Knative's message.

    `name` is the canonical name whose value is refused, or None for a problem with the
    key itself: an unknown key, or a clash, where `keys` holds every spelling given
    (canonical first, and the canonical one is still used) and `message` is Knative's
    "expected exactly one, got both".
    """

    keys: tuple[str, ...]
    message: str
    name: str | None = None

    @property
    def clash(self) -> bool:
        return len(self.keys) > 1


@dataclass(frozen=True)
class Checked:
    """What `check` found: `values` by canonical name for every annotation that passed
    (see `_TABLE` for their types), and the problems: key problems, then the others in
    `REPORT_ORDER`."""

    values: Mapping[str, object]
    problems: tuple[Problem, ...]


def check(
    annotations: Mapping[str, str],
    *,
    max_scale_limit: int = 0,
    allow_zero_initial_scale: bool = False,
) -> Checked:
    """Apply every rule to the `autoscaling.knative.dev/*` annotations; never raises.

    `max_scale_limit` (0 = none) and `allow_zero_initial_scale` are the cluster settings
    of the same names. An annotation with a problem has no entry in `values`.
    """
    found = {name: hit for name in ALIASES if (hit := lookup(annotations, name)) is not None}
    parsed: dict[str, object] = {}
    refusals: dict[str, list[str]] = {}
    for name, (_, text) in found.items():
        try:
            parsed[name] = _TABLE[name][1](text)
        except _Refused as refused:
            refusals[name] = [str(refused)]
    for name, message in _across_keys(parsed, found, max_scale_limit, allow_zero_initial_scale):
        refusals.setdefault(name, []).append(message)
    problems = _key_problems(annotations) + [
        Problem((found[name][0],), message, name)
        for name in REPORT_ORDER
        for message in refusals.get(name, ())
    ]
    values = {name: value for name, value in parsed.items() if name not in refusals}
    return Checked(values=values, problems=tuple(problems))


def _key_problems(annotations: Mapping[str, str]) -> list[Problem]:
    # Ebb refuses keys it does not know: a typo ("min-scales") would otherwise be ignored
    # silently and the revision would scale in a way the user did not ask for.
    problems = [
        Problem((k,), f'invalid key name "{k}" (not a known autoscaling annotation)')
        for k in sorted(annotations)
        if k.startswith(PREFIX) and k not in _CANONICAL_OF
    ]
    for aliases in ALIASES.values():
        present = tuple(PREFIX + a for a in aliases if PREFIX + a in annotations)
        if len(present) > 1:
            problems.append(Problem(present, "expected exactly one, got both"))
    return problems


def _across_keys(
    parsed: Mapping[str, object],
    found: Mapping[str, tuple[str, str]],
    max_scale_limit: int,
    allow_zero_initial_scale: bool,
) -> list[tuple[str, str]]:
    """(name, message) for the rules between keys and settings, on values that parsed."""
    out: list[tuple[str, str]] = []
    # An absent or invalid bound counts as 0, as in Knative.
    low, high = parsed.get("min-scale", 0), parsed.get("max-scale", 0)
    if "max-scale" in parsed:
        if high != 0 and high < low:
            out.append(("max-scale", f"max-scale={high} is less than min-scale={low}"))
        if max_scale_limit > 0 and high > max_scale_limit:
            out.append(("max-scale", f"expected 1 <= {high} <= {max_scale_limit}"))
        if max_scale_limit > 0 and high == 0:
            message = f"max-scale=0 (unlimited), must be less than {max_scale_limit}"
            out.append(("max-scale", message))
    if "activation-scale" in parsed:
        activation = parsed["activation-scale"]
        if low > activation:
            message = f"min-scale={low} is greater than activation-scale={activation}"
            out.append(("activation-scale", message))
        elif high != 0 and high < activation:
            message = f"max-scale={high} is less than activation-scale={activation}"
            out.append(("activation-scale", message))
        elif activation < 2:
            message = f"activation-scale={activation} must be greater than 1"
            out.append(("activation-scale", message))
    if parsed.get("initial-scale") == 0 and not allow_zero_initial_scale:
        message = (
            f"invalid value: {found['initial-scale'][1]} (initial-scale=0 not allowed by cluster)"
        )
        out.append(("initial-scale", message))
    return out
