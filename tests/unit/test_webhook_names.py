"""Kubernetes name checks the webhook applies (DNS-1035 / DNS-1123 labels, qualified names)."""

from __future__ import annotations

from ebb.webhook.names import dns1035_label_errors, dns1123_label_errors, is_qualified_name


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
