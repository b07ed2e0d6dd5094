"""bench.stats and bench.report: percentiles, median and spread, paired ratios, tables and
verdicts (pure)."""

import pytest

from bench import report
from bench.stats import (
    Run,
    latency_summary,
    percentile,
    ratio,
    spread,
    summarize,
)


def run(path, rps, p50, repeat=0, app="fast", c=16, cpu=None, requests=None, other=None):
    return Run(app=app, path=path, concurrency=c, repeat=repeat, rps=rps, p50_ms=p50,
               p99_ms=p50 * 3, requests=requests if requests is not None else int(rps * 5),
               errors=0, proxy_cpu_s=cpu or {}, other_cpu_s=other)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([1, 2, 3, 4], 50, 2.5), ([1, 2, 3, 4], 0, 1), ([1, 2, 3, 4], 100, 4), ([7], 95, 7),
     (list(range(1, 101)), 95, 95.05), ([10, 20], 25, 12.5)],
)
def test_percentile(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_rejects():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_spread():
    s = spread([110, 90, 100])
    assert (s.median, s.low, s.high, s.n) == (100, 90, 110, 3)
    assert s.half_range_pct == pytest.approx(10.0)
    assert spread([5]).half_range_pct == 0.0
    assert spread([1, 2]).median == 1.5
    with pytest.raises(ValueError):
        spread([])


@pytest.mark.parametrize(("a", "b", "expected"),
                         [(2, 4, 0.5), (None, 1, None), (1, None, None), (1, 0, None)])
def test_ratio(a, b, expected):
    assert ratio(a, b) == expected


def test_latency_summary():
    out = latency_summary([float(v) for v in range(100, 0, -1)])
    assert out["n"] == 100 and out["max"] == 100
    assert out["p50"] == pytest.approx(50.5)
    assert latency_summary([]) == {}


def test_ratios_are_paired_per_repeat_then_median():
    # Repeat 0 ran on a fast moment, repeat 1 on a slow one: each path's own figures
    # swing 2x, but the queue is 1.2x Envoy within each repeat.
    runs = [run("envoy", 10_000, 1.0, 0), run("queue", 12_000, 0.8, 0),
            run("envoy", 5_000, 2.0, 1), run("queue", 6_000, 1.6, 1),
            run("direct", 50_000, 0.1, 0), run("direct", 25_000, 0.2, 1)]
    by_path = {s.path: s for s in summarize(runs)}
    queue = by_path["queue"]
    assert queue.vs["envoy"]["rps"] == pytest.approx(1.2)
    assert queue.vs["envoy"]["p50"] == pytest.approx(0.8)
    assert queue.vs["direct"]["rps"] == pytest.approx(0.24)
    assert queue.rps.median == 9_000 and queue.rps.n == 2
    assert by_path["envoy"].vs["envoy"]["rps"] == pytest.approx(1.0)


def test_missing_baseline_gives_no_ratio():
    (only,) = summarize([run("queue", 1000, 1.0)])
    assert only.vs == {"envoy": {"rps": None, "p50": None},
                       "direct": {"rps": None, "p50": None}}


def test_groups_keep_app_and_concurrency_apart():
    runs = [run("envoy", 100, 1, c=1), run("envoy", 200, 1, c=16),
            run("envoy", 300, 1, app="slow", c=1)]
    keys = [(s.app, s.path, s.concurrency) for s in summarize(runs)]
    assert keys == [("fast", "envoy", 1), ("fast", "envoy", 16), ("slow", "envoy", 1)]


def test_cpu_per_request_and_by_process():
    runs = [run("gateway", 1000, 1, cpu={"envoy": 0.2, "queue": 0.3}, requests=10_000)]
    (s,) = summarize(runs)
    assert s.cpu_s.median == pytest.approx(0.5)
    assert s.cpu_us_per_request.median == pytest.approx(50.0)
    assert s.proxy_cpu_s == {"envoy": 0.2, "queue": 0.3}
    (direct,) = summarize([run("direct", 1000, 1)])
    assert direct.cpu_s is None and direct.cpu_us_per_request is None


# -- report --


@pytest.mark.parametrize(("value", "text"),
                         [(0.0781, "0.078"), (1.234, "1.23"), (12.34, "12.3"), (100.44, "100.4"),
                          (None, "-")])
def test_fmt_ms(value, text):
    assert report.fmt_ms(value) == text


def test_fmt_others():
    assert report.fmt_rate(12345.6) == "12,346"
    assert report.fmt_ratio(0.8549) == "0.85×"
    assert report.fmt_ratio(None) == "-"
    assert report.fmt_spread(4.2, 3) == " ±4%"
    assert report.fmt_spread(4.2, 1) == ""


def test_markdown_table_aligns():
    text = report.markdown_table(("a", "num"), [("x", "1"), ("long", "22")], (False, True))
    assert text.splitlines() == ["| a    | num |", "|------|----:|", "| x    |   1 |",
                                 "| long |  22 |"]
    with pytest.raises(ValueError):
        report.markdown_table(("a", "b"), [("only one",)])


def test_closed_loop_table_rows_and_unavailable_paths():
    runs = [run("envoy", 10_000, 1.0, 0, cpu={"envoy": 1.0}, other=0.1),
            run("envoy", 11_000, 1.0, 1, cpu={"envoy": 1.0}, other=0.3),
            run("queue", 12_000, 0.8, 0, cpu={"queue": 1.0}),
            run("queue", 13_200, 0.8, 1, cpu={"queue": 1.0})]
    text = report.closed_loop_table(summarize(runs), {"activator": "n/a (activator not ready)"},
                                    ["fast"], ["envoy", "queue", "activator"])
    lines = text.splitlines()
    assert len(lines) == 2 + 3
    assert lines[0].startswith("| app ") and "×Envoy" in lines[0]
    queue = next(line for line in lines if "queue → app" in line and "activator" not in line)
    cells = [c.strip() for c in queue.strip("|").split("|")]
    assert cells[3] == "12,600 ±5%"  # median of 12,000 and 13,200, ± half range
    assert cells[4] == "1.20×"
    assert "n/a (activator not ready)" in lines[-1]
    envoy = next(line for line in lines if "Envoy → app" in line)
    assert envoy.rstrip(" |").endswith("0.20")  # median of the other-CPU gauge


def _open(path, repeat, p95, errors=0, rate=1000.0, lag_p99=1.0):
    return {"path": path, "repeat": repeat, "proxy_cpu_s": {"x": 0.5},
            "result": {"rate": rate, "duration_s": 10, "ok": 10_000 - errors,
                       "errors": {"timeout": errors},
                       "latency_ms": {"p50": p95 - 1, "p95": p95, "p99": p95 + 1},
                       "send_lag_ms": {"p99": lag_p99}}}


def test_open_loop_overhead_is_paired_by_repeat():
    runs = [_open("direct", 0, 101.0), _open("gateway", 0, 103.0),
            _open("direct", 1, 110.0), _open("gateway", 1, 111.0),
            _open("direct", 2, 101.5), _open("gateway", 2, 104.5)]
    by_path = {s.path: s for s in report.summarize_open_loop(runs)}
    assert by_path["gateway"].overhead_p95_ms == pytest.approx(2.0)  # median of 2, 1, 3
    assert by_path["direct"].overhead_p95_ms == 0
    assert by_path["gateway"].achieved_rps == 1000
    text = report.open_loop_table(list(by_path.values()), {}, ["direct", "gateway"])
    assert "+2.00" in text


def _summaries(queue_rps, queue_p50):
    runs = []
    for c in (1, 16):
        runs += [run("envoy", 10_000, 1.0, c=c), run("queue", queue_rps, queue_p50, c=c),
                 run("activator", 9_000, 1.0, c=c)]
    return summarize(runs)


def test_targets_met_and_not_met():
    open_ok = report.summarize_open_loop([_open("direct", 0, 101.0), _open("gateway", 0, 104.0)])
    verdicts = report.evaluate_targets(_summaries(10_500, 0.9), open_ok, {"queue": 30.0},
                                       {"gateway-activator": "n/a (activator not ready)"})
    marks = [v.met for v in verdicts]
    assert marks == [True, True, True, True, True]
    assert "c=1: 1.05×, c=16: 1.05×" in verdicts[0].measured

    open_bad = report.summarize_open_loop([_open("direct", 0, 101.0),
                                           _open("gateway", 0, 107.0)])
    verdicts = report.evaluate_targets(_summaries(9_000, 1.1), open_bad, {"queue": 48.0}, {})
    assert [v.met for v in verdicts] == [False, False, False, True, False]
    assert [v.mark for v in verdicts][:2] == ["NOT met", "NOT met"]


def test_the_gateway_cold_path_is_a_reference_not_a_target():
    runs = [run("envoy", 10_000, 1.0, c=16), run("gateway-activator", 4_000, 2.0, c=16)]
    summaries = summarize(runs)
    verdicts = report.evaluate_targets(summaries, [], {}, {})
    assert not any("gateway → activator" in v.target for v in verdicts)
    note = report.reference_note(summaries, {})
    assert "gateway → activator → queue → app" in note and "c=16: 0.40×" in note
    assert report.reference_note(summaries, {"gateway-activator": "n/a (not ready)"}) == ""
    assert report.reference_note(summarize([run("envoy", 10_000, 1.0)]), {}) == ""


def test_open_loop_errors_fail_the_latency_target():
    runs = [_open("direct", 0, 101.0), _open("gateway", 0, 102.0, errors=3)]
    verdicts = report.evaluate_targets([], report.summarize_open_loop(runs), {}, {})
    assert verdicts[2].met is False
    assert verdicts[0].met is None and verdicts[-1].met is None  # nothing measured


def test_open_loop_runs_of_a_starved_generator_are_discarded():
    late = report.MAX_SEND_LAG_P99_MS + 1
    runs = [_open("direct", 0, 101.0), _open("gateway", 0, 103.0),
            _open("direct", 1, 101.0), _open("gateway", 1, 900.0, errors=5, lag_p99=late),
            _open("direct", 2, 101.0, lag_p99=late), _open("gateway", 2, 150.0)]
    by_path = {s.path: s for s in report.summarize_open_loop(runs)}
    gateway = by_path["gateway"]
    assert (gateway.n, gateway.discarded) == (2, 1)
    assert gateway.errors == 0  # the discarded run's errors were the generator's
    assert gateway.overhead_p95_ms == pytest.approx(2.0)  # repeat 2 has no valid direct run
    assert (by_path["direct"].n, by_path["direct"].discarded) == (2, 1)
    assert "2 (1)" in report.open_loop_table(list(by_path.values()), {}, ["direct", "gateway"])
    assert report.generator_kept_up({"latency_ms": {}, "send_lag_ms": {"p99": 1}}) is False
