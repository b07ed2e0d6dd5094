"""Time-weighted concurrency, moved by hand: sum(concurrency x dt) / sum(dt) per period."""

import pytest

from ebb.queue.stats import ConcurrencyStats, Report

IN, OUT, IN_P, OUT_P = "in", "out", "in-proxied", "out-proxied"


def run(events, report_at, start=0.0):
    stats = ConcurrencyStats(start)
    for now, what in events:
        proxied = what.endswith("proxied")
        if what.startswith("in"):
            stats.request_in(now, proxied)
        else:
            stats.request_out(now, proxied)
    return stats, stats.report(report_at)


@pytest.mark.parametrize(
    ("events", "report_at", "expected"),
    [
        # idle second
        ([], 1.0, Report(0.0, 0.0, 0, 0, 1.0)),
        # one request for the whole second
        ([(0.0, IN)], 1.0, Report(1.0, 0.0, 1, 0, 1.0)),
        # one request for the first half: 0.5
        ([(0.0, IN), (0.5, OUT)], 1.0, Report(0.5, 0.0, 1, 0, 1.0)),
        # two overlapping: 1 x 0.25 + 2 x 0.5 + 1 x 0.25 = 1.5
        ([(0.0, IN), (0.25, IN), (0.75, OUT), (1.0, OUT)], 1.0, Report(1.5, 0.0, 2, 0, 1.0)),
        # proxied requests count in both figures
        ([(0.0, IN_P), (0.5, IN), (1.0, OUT_P)], 1.0, Report(1.5, 1.0, 2, 1, 1.0)),
        # ten 100 ms requests back to back: concurrency 1 throughout
        (
            [(t / 10, w) for i in range(10) for t, w in ((i, IN), (i + 1, OUT))],
            1.0,
            Report(1.0, 0.0, 10, 0, 1.0),
        ),
        # a 2 s period (the reporter was late)
        ([(0.0, IN), (1.0, OUT)], 2.0, Report(0.5, 0.0, 1, 0, 2.0)),
        # a request still in flight at the end of a 0-length period
        ([(0.0, IN)], 0.0, Report(1.0, 0.0, 1, 0, 0.0)),
    ],
)
def test_report(events, report_at, expected):
    _, report = run(events, report_at)
    assert report == pytest.approx(expected)


def test_periods_restart_counts_and_carry_concurrency():
    stats, first = run([(0.0, IN), (0.5, IN_P)], 1.0)
    assert first == Report(1.5, 0.5, 2, 1, 1.0)
    second = stats.report(2.0)  # both still in flight, nothing new arrived
    assert second == Report(2.0, 1.0, 0, 0, 1.0)
    stats.request_out(2.5)
    stats.request_out(2.5, proxied=True)
    assert stats.report(3.0) == Report(1.0, 0.5, 0, 0, 1.0)
    assert stats.report(4.0) == Report(0.0, 0.0, 0, 0, 1.0)


def test_clock_stepping_back_adds_no_negative_area():
    stats = ConcurrencyStats(10.0)
    stats.request_in(10.0)
    stats.request_out(9.0)  # an earlier time: ignored for the area
    assert stats.report(11.0) == Report(0.0, 0.0, 1, 0, 1.0)


def test_in_flight_counters():
    stats = ConcurrencyStats(0.0)
    stats.request_in(0.1, proxied=True)
    stats.request_in(0.2)
    assert (stats.concurrency, stats.proxied_concurrency) == (2, 1)
