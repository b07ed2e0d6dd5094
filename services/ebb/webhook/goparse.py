"""Parse annotation values the way Knative's Go code does (strconv, time.ParseDuration)."""

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

INT32_MAX = 2**31 - 1
SECOND_NS = 1_000_000_000


class OutOfRange(ValueError):
    """The text is a well-formed integer that does not fit the Go type (strconv.ErrRange)."""


def parse_int(text: str, bits: int = 64) -> int:
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
    """strconv.ParseFloat(text, 64) for decimal notation; NaN and Inf are refused.

    Ebb refuses NaN/Inf on purpose: Go accepts them and then every range check passes.
    """
    if not _FLOAT.match(text):
        raise ValueError(f"invalid syntax: {text!r}")
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"out of range: {text!r}")
    return value


def parse_duration_ns(text: str) -> int:
    """time.ParseDuration: `[-+]?(digits[.digits]unit)+` or "0"; returns nanoseconds."""
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
    """time.Duration.String() for whole seconds: 0s, 6s, 1m0s, 1h0m0s (enough for bounds)."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    hours, rest = divmod(ns, 3600 * SECOND_NS)
    minutes, rest = divmod(rest, 60 * SECOND_NS)
    seconds = Fraction(rest, SECOND_NS)
    sec_text = str(int(seconds)) if seconds.denominator == 1 else f"{float(seconds):g}"
    if hours:
        return f"{sign}{hours}h{minutes}m{sec_text}s"
    if minutes:
        return f"{sign}{minutes}m{sec_text}s"
    return f"{sign}{sec_text}s"


def format_go_number(value: float | int) -> str:
    """fmt's %v for the bounds Knative prints: 1.0 -> "1", 0.01 -> "0.01"."""
    if isinstance(value, int):
        return str(value)
    return f"{value:g}"
