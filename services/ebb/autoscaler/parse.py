"""Parse setting and annotation values the way Knative's Go code does (pure)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

_INT = re.compile(r"^[+-]?[0-9]+$")
_FLOAT = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_DURATION_PART = re.compile(r"([0-9]*)(\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")

SECOND_NS = 1_000_000_000
INT32_MAX = 2**31 - 1


def parse_int(text: str) -> int:
    """strconv.ParseInt(text, 10, 32): optional sign and decimal digits, fits in int32."""
    if not _INT.match(text):
        raise ValueError(f"not an integer: {text!r}")
    value = int(text)
    if not -(2**31) <= value <= INT32_MAX:
        raise ValueError(f"out of range: {text!r}")
    return value


def parse_float(text: str) -> float:
    """strconv.ParseFloat(text, 64) in decimal notation; NaN and Inf are refused.

    Go accepts "NaN" and "Inf", after which every range check passes; Ebb refuses them.
    """
    if not _FLOAT.match(text):
        raise ValueError(f"not a number: {text!r}")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"out of range: {text!r}")
    return value


def parse_bool(text: str) -> bool:
    """strconv.ParseBool: 1, t, T, TRUE, true, True and their false twins."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_duration_ns(text: str) -> int:
    """time.ParseDuration: `[-+]?(digits[.digits]unit)+` or "0"; returns nanoseconds."""
    body = text.strip()
    sign = 1
    if body[:1] in ("+", "-"):
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if body == "0":
        return 0
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    total = Fraction(0)
    pos = 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if not match or (not match.group(1) and match.group(2) in (None, ".")):
            raise ValueError(f"invalid duration {text!r}")
        whole = Fraction(int(match.group(1) or "0"))
        frac = match.group(2) or "."
        if len(frac) > 1:
            whole += Fraction(int(frac[1:]), 10 ** (len(frac) - 1))
        total += whole * _UNIT_NS[match.group(3)]
        pos = match.end()
    return sign * int(total)


def format_duration_s(seconds: float) -> str:
    """Go's Duration.String() for the values we print: 0s, 6s, 1.5s, 1m0s, 1h0m0s."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    rest = abs(seconds)
    hours, rest = divmod(rest, 3600)
    minutes, rest = divmod(rest, 60)
    sec = f"{rest:g}" if rest != int(rest) else str(int(rest))
    if hours:
        return f"{sign}{int(hours)}h{int(minutes)}m{sec}s"
    if minutes:
        return f"{sign}{int(minutes)}m{sec}s"
    return f"{sign}{sec}s"


def format_number(value: float | int) -> str:
    """fmt's %v for numbers: 2.0 -> "2", 0.5 -> "0.5", 1e-05 -> "1e-05"."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    return f"{value:g}"
