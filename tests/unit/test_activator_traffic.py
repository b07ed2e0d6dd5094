"""The activator's own stats per revision and its poke, with a fake clock."""

from __future__ import annotations

import pytest

from ebb.activator.traffic import POKE, RevisionLoad, Traffic


def arrive(traffic: Traffic, load: RevisionLoad, now: float) -> None:
    """A request arrives, counted as the activator counts it."""
    if not load.active:
        traffic.activate(load, now)
    load.request_in(now)


def test_poke_once_per_spell_of_activity():
    traffic = Traffic()
    load = RevisionLoad("default", "r", 0.0)
    arrive(traffic, load, 10.0)
    assert traffic.held(load) is True  # first held request: poke
    arrive(traffic, load, 10.1)
    assert traffic.held(load) is False  # the next ones do not
    load.request_out(10.5)
    load.request_out(10.5)
    traffic.collect(11.0)  # load in this period: still active, no new poke
    arrive(traffic, load, 11.2)
    assert traffic.held(load) is False
    load.request_out(11.3)
    traffic.collect(12.0)
    assert traffic.collect(13.0)[0][2].request_count == 0  # a silent period: reported once
    assert traffic.active == 0
    arrive(traffic, load, 20.0)
    assert traffic.held(load) is True  # a new spell pokes again


def test_poke_stat_is_one_request_one_in_flight():
    assert (POKE.average_concurrency, POKE.request_count) == (1.0, 1)
    assert (POKE.average_proxied_concurrency, POKE.proxied_request_count) == (0.0, 0)


def test_reports_time_weighted_concurrency_per_revision():
    traffic = Traffic()
    a = RevisionLoad("default", "a", 0.0)
    b = RevisionLoad("prod", "b", 0.0)
    # a: one request held for the first half of the second, b: two for the whole second
    arrive(traffic, a, 100.0)
    arrive(traffic, b, 100.0)
    arrive(traffic, b, 100.0)
    a.request_out(100.5)
    reports = {(ns, name): r for ns, name, r in traffic.collect(101.0)}
    assert reports[("default", "a")].average_concurrency == pytest.approx(0.5)
    assert reports[("default", "a")].request_count == 1
    assert reports[("prod", "b")].average_concurrency == pytest.approx(2.0)
    assert reports[("prod", "b")].period_s == pytest.approx(1.0)
    # next period: a is silent (reported at 0 once, then dropped); b still holds two
    reports = {(ns, name): r for ns, name, r in traffic.collect(102.0)}
    assert reports[("default", "a")].average_concurrency == 0
    assert reports[("prod", "b")].average_concurrency == pytest.approx(2.0)
    assert reports[("prod", "b")].request_count == 0
    assert [(ns, name) for ns, name, _ in traffic.collect(103.0)] == [("prod", "b")]


def test_a_revision_idle_for_long_starts_a_fresh_period():
    traffic = Traffic()
    load = RevisionLoad("default", "r", 0.0)  # created long ago
    arrive(traffic, load, 500.0)
    load.request_out(500.25)
    (_, _, report), = traffic.collect(500.5)
    assert report.period_s == pytest.approx(0.5)
    assert report.average_concurrency == pytest.approx(0.5)
