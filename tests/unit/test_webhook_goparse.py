"""Go-compatible parsing of annotation values (time.ParseDuration, strconv) and k8s name checks."""

from __future__ import annotations

import pytest

from ebb.webhook.goparse import (
    OutOfRange,
    format_duration_ns,
    parse_duration_ns,
    parse_float,
    parse_int,
)
from ebb.webhook.names import dns1035_label_errors, dns1123_label_errors, is_qualified_name

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
        ("3ns", 3),
    ],
)
def test_parse_duration(text, ns):
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize("text", ["", "60", "s", ".s", "1x", "1 s", "-", "1s2", "1e3s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration_ns(text)


@pytest.mark.parametrize(
    ("ns", "text"), [(0, "0s"), (6 * S, "6s"), (90 * S, "1m30s"), (3600 * S, "1h0m0s"), (-S, "-1s")]
)
def test_format_duration(ns, text):
    assert format_duration_ns(ns) == text


def test_parse_int():
    assert parse_int("+5") == 5
    assert parse_int("-0") == 0
    assert parse_int("2147483647", 32) == 2147483647
    with pytest.raises(OutOfRange):
        parse_int("2147483648", 32)
    for bad in ("", " 1", "1_000", "1.0", "0x10"):
        with pytest.raises(ValueError):
            parse_int(bad)


def test_parse_float():
    assert parse_float("0.01") == 0.01
    assert parse_float("1e2") == 100.0
    assert parse_float(".5") == 0.5
    for bad in ("", "NaN", "inf", "1_0", " 1", "1e999"):
        with pytest.raises(ValueError):
            parse_float(bad)


def test_names():
    assert dns1035_label_errors("hello-1") == []
    assert dns1035_label_errors("a" * 64) == ["must be no more than 63 characters"]
    assert len(dns1035_label_errors("1a")) == 1
    assert dns1123_label_errors("1a") == []
    assert is_qualified_name("hello-00001")
    assert is_qualified_name("Foo_bar.baz")
    assert is_qualified_name("example.com/name")
    for bad in ("", "-a", "a/b/c", "/a", "a" * 64, "has space"):
        assert not is_qualified_name(bad)
