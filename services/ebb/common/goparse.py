"""Parse and print values the way Knative's Go code does (strconv, time.ParseDuration; pure).

The autoscaler reads config-autoscaler values and annotations with these, the webhook
validates annotations with them; both must agree on what `1.5h` or `2147483648` means.
"""

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
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


class OutOfRange(ValueError):
    """The text is a well-formed integer that does not fit the Go type (strconv.ErrRange)."""


def parse_int(text: str, bits: int) -> int:
    """strconv.ParseInt(text, 10, bits): optional sign and decimal digits only.

    Raises ValueError for bad syntax, OutOfRange (a ValueError) when it does not fit.
    """
    if not _INT.match(text):
        raise ValueError(f"invalid syntax: {text!r}")
    value = int(text)
    if not -(2 ** (bits - 1)) <= value <= 2 ** (bits - 1) - 1:
        raise OutOfRange(f"out of range: {text!r}")
    return value


def parse_float(text: str) -> float:
    """strconv.ParseFloat(text, 64) in decimal notation; NaN and Inf are refused.

    Go accepts "NaN" and "Inf", after which every range check passes; Ebb refuses them
    (the syntax has no NaN, so only an overflow such as 1e999 is out of range).
    """
    if not _FLOAT.match(text):
        raise ValueError(f"invalid syntax: {text!r}")
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
    raise ValueError(f"invalid syntax: {text!r}")


def parse_duration_ns(text: str) -> int:
    """time.ParseDuration: `[-+]?(digits[.digits]unit)+` or "0"; returns nanoseconds.

    Like Go, white space is not trimmed: " 6s" is invalid.
    """
    body = text
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


def format_duration_ns(ns: int) -> str:
    """Duration.String() for the bounds Knative prints: 0s, 6s, 1m0s, 1h0m0s (exact)."""
    hours, rest = divmod(abs(ns), 3600 * SECOND_NS)
    minutes, rest = divmod(rest, 60 * SECOND_NS)
    seconds = Fraction(rest, SECOND_NS)
    sec = str(int(seconds)) if seconds.denominator == 1 else f"{float(seconds):g}"
    return _join_duration(ns < 0, int(hours), int(minutes), sec)


def format_duration_s(seconds: float) -> str:
    """Duration.String() for a number of seconds, fractions too: 0s, 1.5s, 1m0s, 1h0m0s."""
    hours, rest = divmod(abs(seconds), 3600)
    minutes, rest = divmod(rest, 60)
    sec = f"{rest:g}" if rest != int(rest) else str(int(rest))
    return _join_duration(seconds < 0, int(hours), int(minutes), sec)


def _join_duration(negative: bool, hours: int, minutes: int, sec: str) -> str:
    # Zero needs no case of its own: it has no hours or minutes and prints as "0s".
    sign = "-" if negative else ""
    if hours:
        return f"{sign}{hours}h{minutes}m{sec}s"
    if minutes:
        return f"{sign}{minutes}m{sec}s"
    return f"{sign}{sec}s"


def format_number(value: float | int) -> str:
    """fmt's %v for numbers and bools: 2.0 -> "2", 0.5 -> "0.5", 1e-05 -> "1e-05", true."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    return f"{value:g}"
