"""Go-compatible parsing and printing (time.ParseDuration, strconv, Duration.String, %v)."""

from __future__ import annotations

import pytest

from ebb.common.goparse import (
    INT32_MAX,
    OutOfRange,
    format_duration_s,
    format_number,
    parse_bool,
    parse_duration_ns,
    parse_float,
    parse_int,
)

S = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("6s", 6 * S),
        ("1m30s", 90 * S),
        ("1.5h", 5400 * S),
        ("500ms", S // 2),
        ("-1s", -S),
        ("+2m", 120 * S),
        (".5s", S // 2),
        ("5.s", 5 * S),
        ("1h0m0s", 3600 * S),
        ("10us", 10_000),
        ("10µs", 10_000),
        ("3ns", 3),
        ("0.1s", S // 10),  # exact: no float rounding
    ],
)
def test_parse_duration(text, ns):
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize(
    "text", ["", "60", "s", ".s", "1x", "1 s", "-", "1s2", "1e3s", " 6s", "6s "]
)
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration_ns(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0, "0s"),
        (6, "6s"),
        (1.5, "1.5s"),
        (90, "1m30s"),
        (60, "1m0s"),
        (3600, "1h0m0s"),
        (3661.5, "1h1m1.5s"),
        (-1, "-1s"),
        (0.25, "0.25s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration_s(seconds) == text


def test_parse_int():
    assert parse_int("+5", 32) == 5
    assert parse_int("-0", 32) == 0
    assert parse_int("2147483647", 32) == INT32_MAX
    assert parse_int("-2147483648", 32) == -(2**31)
    assert parse_int("2147483648", 64) == 2147483648
    for big in ("2147483648", "-2147483649"):
        with pytest.raises(OutOfRange):
            parse_int(big, 32)
    for bad in ("", " 1", "1_000", "1.0", "0x10", "+-1", "١"):
        with pytest.raises(ValueError) as err:
            parse_int(bad, 32)
        assert not isinstance(err.value, OutOfRange)


def test_parse_float():
    assert parse_float("0.01") == 0.01
    assert parse_float("1e2") == 100.0
    assert parse_float(".5") == 0.5
    assert parse_float("-3.") == -3.0
    for bad in ("", "NaN", "inf", "Inf", "1_0", " 1", "1e999", "0x1p3"):
        with pytest.raises(ValueError):
            parse_float(bad)


def test_parse_bool():
    for text in ("1", "t", "T", "TRUE", "true", "True"):
        assert parse_bool(text) is True
    for text in ("0", "f", "F", "FALSE", "false", "False"):
        assert parse_bool(text) is False
    for bad in ("", "yes", "tRUE", " true"):
        with pytest.raises(ValueError):
            parse_bool(bad)


@pytest.mark.parametrize(
    ("value", "text"),
    [(2.0, "2"), (0.5, "0.5"), (1e-05, "1e-05"), (110, "110"), (True, "true"), (0.01, "0.01")],
)
def test_format_number(value, text):
    assert format_number(value) == text
