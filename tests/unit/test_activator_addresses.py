"""Which instance addresses the activator uses and which it probes (tables)."""

from __future__ import annotations

from ebb.activator.addresses import AddressBook


def book(ready=(), not_ready=()) -> AddressBook:
    b = AddressBook()
    b.update(ready, not_ready)
    return b


def test_ready_addresses_are_used_at_once_not_ready_ones_probed():
    b = book(["a:1", "b:1"], ["c:1"])
    assert b.usable() == ["a:1", "b:1"]
    assert b.to_probe() == ["c:1"]
    assert b.needs_probe("c:1") and not b.needs_probe("a:1")
    assert not b.needs_probe("zz:1")  # unknown: nothing to probe


def test_a_passed_probe_makes_a_not_ready_address_usable_before_the_controller_says_so():
    b = book([], ["c:1"])
    b.probe_result("c:1", False)
    assert b.usable() == []
    b.probe_result("c:1", True)
    assert b.usable() == ["c:1"]
    assert b.to_probe() == []
    b.update([], ["c:1"])  # the controller has not caught up: still usable
    assert b.usable() == ["c:1"]
    b.update(["c:1"], [])  # now it has
    assert b.usable() == ["c:1"]


def test_ready_then_not_ready_needs_a_new_probe():
    b = book(["a:1"])
    b.update([], ["a:1"])
    assert b.usable() == [] and b.to_probe() == ["a:1"]
    b.probe_result("a:1", True)
    assert b.usable() == ["a:1"]


def test_connect_failure_takes_an_address_out_until_a_probe_passes():
    b = book(["a:1", "b:1"])
    b.connect_failed("a:1")
    assert b.usable() == ["b:1"] and b.to_probe() == ["a:1"]
    b.update(["a:1", "b:1"], [])  # the controller still lists it ready: still out
    assert b.usable() == ["b:1"]
    b.probe_result("a:1", True)
    assert b.usable() == ["a:1", "b:1"]


def test_unlisted_addresses_are_forgotten():
    b = book(["a:1"], ["c:1"])
    b.update(["b:1"], [])
    assert b.usable() == ["b:1"] and b.to_probe() == []
    assert "a:1" not in b and len(b) == 1
    b.probe_result("a:1", True)  # a late probe result of a forgotten address changes nothing
    b.connect_failed("a:1")
    assert b.usable() == ["b:1"]


def test_listed_both_ways_counts_as_ready():
    assert book(["a:1"], ["a:1"]).usable() == ["a:1"]
