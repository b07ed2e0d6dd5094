"""bench.autoscaler's pure parts: Prometheus text, histograms, ingest figures (per port, and
the target's fleet), the simulated queue's time-weighted report, reaction milestones,
summaries, options and verdicts."""

import math
from collections import Counter

import pytest

from bench import autoscaler as ba

METRICS = """\
# HELP ebb_autoscaler_stats_received_total Stats received on StatsService.StreamStats.
# TYPE ebb_autoscaler_stats_received_total counter
ebb_autoscaler_stats_received_total 12345.0
ebb_autoscaler_stats_dropped_total{reason="missing_revision"} 0.0
ebb_autoscaler_stats_dropped_total{reason="unknown_revision"} 7.0
ebb_autoscaler_desired_instances{namespace="bench",revision="bench-00001"} -1.0
ebb_autoscaler_tick_duration_seconds_bucket{le="0.005"} 1.0
ebb_autoscaler_tick_duration_seconds_bucket{le="0.01"} 3.0
ebb_autoscaler_tick_duration_seconds_bucket{le="0.1"} 5.0
ebb_autoscaler_tick_duration_seconds_bucket{le="+Inf"} 5.0
ebb_autoscaler_tick_duration_seconds_count 5.0
ebb_autoscaler_tick_duration_seconds_sum 0.125
ebb_autoscaler_tick_duration_seconds_created 1.7e+09
"""


def test_parse_prometheus_names_labels_values():
    samples = ba.parse_prometheus(METRICS)
    assert samples[0] == ba.Sample("ebb_autoscaler_stats_received_total", {}, 12345.0)
    desired = [s for s in samples if s.name == "ebb_autoscaler_desired_instances"]
    assert desired[0].labels == {"namespace": "bench", "revision": "bench-00001"}
    assert desired[0].value == -1.0
    inf = [s for s in samples if s.labels.get("le") == "+Inf"]
    assert inf[0].value == 5.0


def test_parse_prometheus_escapes_timestamps_and_special_values():
    text = 'm{a="x \\"q\\", y",b="back\\\\slash\\n"} +Inf 1700000000000\nn NaN\n'
    m, n = ba.parse_prometheus(text)
    assert m.labels == {"a": 'x "q", y', "b": "back\\slash\n"}
    assert m.value == math.inf
    assert math.isnan(n.value)


@pytest.mark.parametrize("line", ["just_a_name", 'm{a="1" 2', "m{a=1} 2", "m notanumber"])
def test_parse_prometheus_rejects(line):
    with pytest.raises(ValueError):
        ba.parse_prometheus(line)


def test_metric_total_sums_matching_labels():
    samples = ba.parse_prometheus(METRICS)
    assert ba.metric_total(samples, ba.RECEIVED) == 12345
    assert ba.metric_total(samples, ba.DROPPED) == 7
    assert ba.metric_total(samples, ba.DROPPED, {"reason": "missing_revision"}) == 0
    assert ba.metric_total(samples, "absent") == 0


def test_histogram_mean_and_max_bound():
    h = ba.histogram(ba.parse_prometheus(METRICS), ba.TICK_HISTOGRAM)
    assert h.count == 5 and h.sum == pytest.approx(0.125)
    assert h.mean == pytest.approx(0.025)
    assert h.max_bound() == 0.1  # every tick took at most 100 ms
    assert h.buckets[0] == (0.005, 1.0) and h.buckets[-1] == (math.inf, 5.0)


def test_histogram_minus_and_overflow():
    earlier = ba.Histogram(((0.01, 1.0), (0.1, 2.0), (math.inf, 2.0)), 0.05, 2.0)
    later = ba.Histogram(((0.01, 1.0), (0.1, 4.0), (math.inf, 5.0)), 20.35, 5.0)
    d = later.minus(earlier)
    assert d.count == 3 and d.sum == pytest.approx(20.3)
    assert d.buckets == ((0.01, 0.0), (0.1, 2.0), (math.inf, 3.0))
    assert d.max_bound() == math.inf  # one tick beyond the last finite bucket
    empty = earlier.minus(earlier)
    assert empty.max_bound() is None and empty.mean is None


def test_histogram_missing():
    with pytest.raises(ValueError):
        ba.histogram(ba.parse_prometheus("x 1\n"), ba.TICK_HISTOGRAM)


def test_ingest_figures():
    fig = ba.ingest_figures(100, 2, {"t": 10.0, "received": 1000, "dropped": 0, "cpu": 5.0},
                            {"t": 20.0, "received": 201_000, "dropped": 1000, "cpu": 13.0})
    assert fig.window_s == 10 and fig.accepted == 199_000
    assert fig.per_second == pytest.approx(19_900)
    assert fig.cores == pytest.approx(0.8)
    assert fig.per_cpu_second == pytest.approx(24_875)
    assert fig.cpu_us_per_stat == pytest.approx(8 / 199_000 * 1e6)
    assert fig.to_dict()["per_cpu_second"] == pytest.approx(24_875)
    idle = ba.ingest_figures(1, 1, {"t": 0, "received": 0, "dropped": 0, "cpu": 1},
                             {"t": 1, "received": 0, "dropped": 0, "cpu": 1})
    assert idle.per_cpu_second is None and idle.cpu_us_per_stat is None


@pytest.mark.parametrize(
    ("step", "start", "end", "expected"),
    [(None, 0, 1, 0), (5.0, 4.0, 5.0, 0), (4.5, 4.0, 5.0, 25.0), (3.0, 4.0, 5.0, 50.0),
     (4.0, 4.0, 6.0, 50.0), (4.0, 3.0, 5.0, 25.0), (1.0, 2.0, 2.0, 0.0)],
)
def test_time_weighted(step, start, end, expected):
    assert ba.time_weighted(50.0, step, start, end) == pytest.approx(expected)


def test_covering_scale():
    assert ba.covering_scale(50, 10) == 8  # ceil(50 / 7)
    assert ba.covering_scale(70, 10) == 10  # exactly on target, no float noise
    assert ba.covering_scale(0, 10) == 0


def seen(*items):
    return [ba.Seen(at, desired, panic) for at, desired, panic in items]


def test_reaction_times_and_baseline():
    decisions = seen((1.0, -1, False), (3.0, 1, False), (10.2, 1, False), (11.0, 2, True),
                     (13.0, 5, True), (15.0, 8, True), (17.0, 9, True))
    assert ba.baseline_desired(decisions, 10.0) == 1
    first, covered = ba.reaction_times(decisions, 10.0, 1, 8)
    assert first == pytest.approx(1.0)
    assert covered == pytest.approx(5.0)
    assert ba.reaction_times(decisions, 16.0, 8, 20) == (pytest.approx(1.0), None)
    assert ba.reaction_times([], 0.0, 1, 8) == (None, None)
    assert ba.baseline_desired(decisions, 0.5) is None


def test_reaction_times_ignores_decisions_before_the_step():
    decisions = seen((9.0, 8, True), (12.0, 3, True))
    assert ba.reaction_times(decisions, 10.0, 1, 8) == (pytest.approx(2.0), None)


def test_time_summary():
    assert ba.time_summary([]) == {}
    s = ba.time_summary([3.0, 1.0, 2.0, 10.0])
    assert s["n"] == 4 and s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 10.0
    assert s["p95"] == pytest.approx(8.95)


def test_formatting():
    assert ba.fmt_bound_ms(0.1) == "≤ 100 ms"
    assert ba.fmt_bound_ms(math.inf) == "> 10 s"
    assert ba.fmt_bound_ms(None) == "-"
    assert ba.fmt_opt(None, ".1f") == "-"
    assert ba.fmt_opt(2.345, ".1f", " ms") == "2.3 ms"


def test_stream_messages_cover_instances_in_batches():
    from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb

    msgs = ba.stream_messages(pb, namespace="bench", revisions=3, instances=5,
                              instance_offset=10, batch=2, concurrency=1.5, varied=False)
    decoded = [pb.StreamStatsRequest.FromString(m) for m in msgs]
    assert [len(d.stats) for d in decoded] == [2, 2, 1]
    stats = [s for d in decoded for s in d.stats]
    assert [s.instance for s in stats] == [f"bench-{j:06d}" for j in range(10, 15)]
    assert [s.revision.name for s in stats] == [ba.revision_name(j % 3) for j in range(10, 15)]
    assert all(s.average_concurrency == 1.5 and s.period_seconds == 1.0 for s in stats)
    jittered = ba.stream_messages(pb, namespace="bench", revisions=1, instances=4,
                                  instance_offset=0, batch=2, concurrency=10.0, varied=False,
                                  jitter=0.2, variants=3)
    assert len(jittered) == 6  # 2 messages per pass, 3 passes
    values = [s.average_concurrency for m in jittered
              for s in pb.StreamStatsRequest.FromString(m).stats]
    assert all(8.0 <= v <= 12.0 for v in values) and len(set(values)) > 1
    varied = ba.stream_messages(pb, namespace="bench", revisions=1, instances=3,
                                instance_offset=0, batch=10, concurrency=1.0, varied=True)
    values = [s.average_concurrency for s in pb.StreamStatsRequest.FromString(varied[0]).stats]
    assert values == [0.0, 0.5, 1.0]


def window(batch, received, cpu, port, shape="fast"):
    """An ingest figure over a 10 s window."""
    return ba.ingest_figures(batch, 2, {"t": 0, "received": 0, "dropped": 0, "cpu": 0},
                             {"t": 10, "received": received, "dropped": 0, "cpu": cpu},
                             shape=shape, port=port).to_dict()


def scale(port, received=199_000, cpu=6.0, **extra):
    """The target's fleet (10,000 connections at 0.5 s) on `port`: by default it kept up,
    taking 19,900/s at 0.6 cores."""
    fig = {**window(1, received, cpu, port, shape="scale"), "streams": 10_000,
           "period_s": 0.5, "arriving_per_s": 20_000.0, "sent": 300_000,
           "accepted_total": 300_000, "dropped_total": 0, "max_lag_s": 0.012,
           "rss_before_mb": 60.0, "rss_connected_mb": 80.0, "rss_window_end_mb": 90.0,
           "kb_per_connection": 2.0,
           "load_cores": 0.3, "connect_s": 1.5, **extra}
    fig.setdefault("shortfalls", ba.scale_shortfalls(fig, [{"accepted": 300_000}]))
    return fig


def result_with_everything():
    res = ba.Results(machine={"nproc": 2, "cpu_model": "x", "mem_total_mb": 1, "python": "3"})
    res.ingest = [window(100, 300_000, 9, "stats"), window(100, 200_000, 9, "grpc"),
                  window(1, 90_000, 9, "stats"), window(1, 60_000, 9, "grpc"),
                  scale("stats"),
                  scale("grpc", received=150_000, cpu=10.0, accepted_total=290_000)]
    res.ingest_clients = [[{"accepted": 1}], [{"accepted": 1}], [{"accepted": 1}],
                          [{"error": "UNAVAILABLE: gone"}], [{"accepted": 300_000}],
                          [{"accepted": 290_000}]]
    phase = {"ticks": 10.0, "mean_ms": 40.0, "max_bound_s": 0.05, "stats_per_s": 5000.0,
             "autoscaler_cores": 0.3, "decisions_per_tick": 12.0}
    spread = {**phase, "slices": 4, "ticks": 40.0, "mean_ms": 12.0, "max_bound_s": 0.025,
              "rounds": 10.0, "round_cpu_mean_ms": 48.0, "round_cpu_max_bound_s": 0.05,
              "gc": {"0": {"count": 3.0, "total_ms": 9.0, "max_bound_s": 0.005}}}
    res.tick_live = {"revisions": 5000,
                     "phases": {"constant load": phase,
                                "jitter load": {**phase, "max_bound_s": 0.25,
                                                "decisions_per_tick": None},
                                "jitter load, 4 slices": spread},
                     "whole_run": {"1": {"ticks": 24.0, "mean_ms": 60.0, "max_bound_s": 0.25}}}
    res.tick_pure = {"revisions": 5000, "ms": ba.time_summary([30.0, 31.0, 35.0]),
                     "collector_record_per_s": 80_000.0}
    res.reaction = {"level": 50.0, "target": 10.0, "covering_scale": 8,
                    "first_scale_up_s": ba.time_summary([1.0, 1.5, 2.0]),
                    "covering_s": ba.time_summary([6.0, 7.0]),
                    "first_loaded_stat_s": ba.time_summary([0.4, 0.6]),
                    "missed_first": 0, "missed_covering": 1}
    return res


def test_verdicts():
    found = ba.verdicts(result_with_everything())
    marks = {v.target: v.met for v in found}
    ingest = [m for t, m in marks.items() if t.startswith("ingest")]
    # The target's fleet first (kept up at 33,167 per CPU-second), then the stats port's
    # 33,333 and 10,000 per CPU-second; the gRPC port is the baseline beside them.
    assert ingest == [True, True, False]
    assert "the target's fleet: 10,000 connections × 1 stat per 0.5 s = 20,000/s" in found[0].target
    assert "(stats port)" in found[0].target
    assert "(gRPC port 22,222); 30,000/s wall at 0.90 cores" in found[1].measured
    live = [m for t, m in marks.items() if "live process" in t]
    pure = next(m for t, m in marks.items() if "pure" in t)
    assert live == [True, False, True] and pure is True
    covering = next(m for t, m in marks.items() if "covers the load" in t)
    first = next(m for t, m in marks.items() if "scaling up" in t)
    assert covering is False and first is True


def test_render_has_every_section():
    text = ba.render(result_with_everything())
    for part in ("Ingest", "Decision tick over 5,000 revisions", "Reaction", "jitter load",
                 "target (issue 3)", "UNAVAILABLE: gone", "NOT met",
                 "every revision once (round), CPU", "GC gen 0: 3×, 9 ms",
                 "Ingest at the target's scale", "| stats port |", "| gRPC port  |",
                 "60 → 80 → 90", "Stats port beside gRPC port",
                 "took 15,000/s of 20,000/s arriving"):
        assert part in text
    side = text.split("Stats port beside gRPC port")[1].split("\n\n")[1]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in side.splitlines()]
    assert cells[2:] == [["100 stats/message", "33,333", "22,222", "1.50×"],
                         ["1 stat/message", "10,000", "6,667", "1.50×"],
                         ["scale: 10,000 connections, 1 stat per 0.5 s each", "33,167",
                          "15,000", "2.21×"]]


def test_render_reads_figures_from_before_the_stats_port():
    res = ba.Results(machine={"nproc": 2})
    old = window(1, 90_000, 9, "grpc")
    del old["port"]  # JSON of a run before the stats port: every figure is the gRPC port's
    res.ingest, res.ingest_clients = [old], [[{"accepted": 1}]]
    text = ba.render(res)
    assert "| gRPC port |" in text and "beside" not in text
    assert "(1 stat/message, gRPC port) | 10,000 per CPU-second; 9,000/s" in text


def test_phase_label_and_by_phase():
    assert ba.phase_label({"stats_per_message": 100}) == "100 stats/message"
    assert ba.phase_label({"stats_per_message": 1, "shape": "fleet", "streams": 1000,
                           "period_s": 1.0}) == "fleet: 1,000 streams, 1 stat per 1 s each"
    figs = [window(1, 1, 1, "stats"), window(100, 1, 1, "grpc"), window(1, 2, 1, "grpc")]
    phases = ba.by_phase(figs)
    assert list(phases) == ["1 stat/message", "100 stats/message"]
    assert list(phases["1 stat/message"]) == ["stats", "grpc"]


@pytest.mark.parametrize(
    ("total", "parts", "expected"),
    [(10, 4, [3, 3, 2, 2]), (10_000, 4, [2500] * 4), (3, 4, [1, 1, 1]), (0, 2, [])],
)
def test_split_evenly(total, parts, expected):
    assert ba.split_evenly(total, parts) == expected


def test_scale_shortfalls():
    assert scale("stats")["shortfalls"] == []
    clients = [{"accepted": 300_000}]
    assert ba.scale_shortfalls(scale("stats", accepted_total=299_000), clients) == [
        "answered for 299,000 of 300,000 stats sent"]
    assert ba.scale_shortfalls(scale("stats", received=150_000), clients) == [
        "took 15,000/s of 20,000/s arriving"]
    assert ba.scale_shortfalls(scale("stats", max_lag_s=0.2), clients) == [
        "a message sent 200 ms late"]  # more than a quarter of the 0.5 s period
    dropped = ba.scale_shortfalls(scale("stats", accepted_total=299_990, dropped_total=10),
                                  clients)
    assert dropped == ["10 dropped"]
    failed = ba.scale_shortfalls(scale("stats"), [{"error": "RuntimeError('x')"}, {}])
    assert failed == ["1 generator(s) failed: RuntimeError('x')"]
    assert ba.scale_shortfalls(scale("stats"), [{}]) == ["a generator had no answer"]


def test_scale_verdict():
    kept = ba.scale_verdict({"stats": scale("stats"), "grpc": scale("grpc", received=80_000,
                                                                  cpu=10.0)})
    assert kept.met is True
    assert kept.measured.startswith("33,167 per CPU-second: took 19,900/s at 0.60 cores; "
                                    "300,000 of 300,000 stats sent accepted, none dropped, "
                                    "sent ≤ 12 ms late")
    assert "(gRPC port 8,000 per CPU-second: took 8,000/s at 1.00 cores, did not keep up)" \
        in kept.measured
    # Kept up, but on more than a core: 19,900/s at 1.2 cores.
    assert ba.scale_verdict({"stats": scale("stats", cpu=12.0)}).met is False
    behind = ba.scale_verdict({"stats": scale("stats", received=150_000, cpu=5.0)})
    assert behind.met is False and "did not keep up: took 15,000/s" in behind.measured
    small = scale("stats", streams=1000, arriving_per_s=2000.0, received=19_900, cpu=1.0)
    assert ba.scale_verdict({"stats": small}).met is None  # below the target's rate: n/a
    grpc_only = ba.scale_verdict({"grpc": scale("grpc")})
    assert "(gRPC port)" in grpc_only.target and "gRPC port 33" not in grpc_only.measured


def test_open_files_limit_and_scale_note():
    limits = ("Limit                     Soft Limit           Hard Limit           Units\n"
              "Max open files            20000                20000                files\n")
    assert ba.open_files_limit(limits) == 20_000
    assert ba.open_files_limit(limits.replace("20000 ", "unlimited ", 1)) is None
    assert ba.open_files_limit("") is None
    note = ba.scale_note(10_000, 0.5, 20_000)
    assert note.startswith("Scale phase: 10,000 connections × 1 stat per 0.5 s = 20,000 stats/s")
    assert "its limit here is 20,000" in note
    assert "limit" not in ba.scale_note(20_000, 1.0, 1 << 20)


def test_parse_args_bounds():
    s = ba.parse_args(["--parts", "tick", "--tick-revisions", "100", "--no-pin"])
    assert s.parts == ("tick",) and s.tick_revisions == 100 and s.pin is False
    assert ba.parse_args(["--quick"]).reaction_trials == 3
    assert ba.parse_args(["--fleet-period", "0.25"]).fleet_period_s == 0.25
    default = ba.parse_args([])
    assert default.ports == ("stats", "grpc")
    assert (default.scale_streams, default.scale_period_s, default.scale_clients) == (
        10_000, 0.5, 4)
    assert ba.parse_args(["--ports", "grpc"]).ports == ("grpc",)
    assert ba.parse_args(["--scale-streams", "0"]).scale_streams == 0
    assert ba.parse_args(["--quick"]).scale_streams == 2000
    for bad in (["--parts", "nope"], ["--clients", "0"], ["--batches", "0"],
                ["--ingest-duration", "1000"], ["--trials", "0"], ["--batches", "x"],
                ["--fleet-period", "0"], ["--ports", "http"], ["--ports", "stats,stats"],
                ["--ports", ","], ["--scale-streams", "-1"], ["--scale-period", "0"],
                ["--scale-clients", "0"], ["--scale-streams", "30000", "--scale-clients", "1"]):
        with pytest.raises(SystemExit):
            ba.parse_args(bad)


def test_due_streams_moves_on_where_float_rounding_meets_a_period_end():
    # Period 0.1 s in 10 ms steps: 0.2 + 0.1 rounds to the t the loop stands on; once
    # that hung. 20 s must send every stream exactly 200 times.
    offsets = ba.fleet_schedule(50, 0.1)
    sent = Counter()
    for step in range(2000):
        sent.update(ba.due_streams(offsets, 0.1, step * 0.01, (step + 1) * 0.01))
    assert sorted(set(sent.values())) == [200] and len(sent) == 50


def test_fleet_schedule_spreads_streams_over_the_period():
    assert ba.fleet_schedule(4, 1.0) == [0.0, 0.25, 0.5, 0.75]


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0.0, 1.0, [0, 1, 2, 3]),  # one period: each stream once
        (0.3, 0.5, []),  # 0.5 is the end: not yet
        (0.3, 0.51, [2]),
        (0.9, 1.3, [0, 1]),  # across a period boundary: 1.0 and 1.25
        (0.3, 2.3, [2, 3, 0, 1, 2, 3, 0, 1]),  # two periods: each stream twice
    ],
)
def test_due_streams_sends_each_stream_once_per_period(start, end, expected):
    assert ba.due_streams(ba.fleet_schedule(4, 1.0), 1.0, start, end) == expected


def test_live_tick_verdict_one_pass_and_spread():
    one = {"slices": 1, "mean_ms": 52.0, "max_bound_s": 0.1, "ticks": 10.0}
    assert ba.live_tick_verdict(5000, "constant", one).met
    spread = {"slices": 4, "mean_ms": 14.0, "max_bound_s": 0.025, "ticks": 40.0,
              "rounds": 10.0, "round_cpu_mean_ms": 120.0}
    verdict = ba.live_tick_verdict(5000, "jitter, 4 slices", spread)
    assert verdict.met is False  # a short pass does not hide a round over the target
    assert "CPU mean 120.0 ms over 10 rounds" in verdict.measured
    assert ba.live_tick_verdict(5000, "x", {**spread, "round_cpu_mean_ms": 60.0}).met


def test_gc_pause_summary_per_generation():
    def text(count2: float, sum2: float) -> str:
        lines = []
        for g, (count, total) in {"0": (3.0, 0.003), "2": (count2, sum2)}.items():
            lines += [
                f'ebb_autoscaler_gc_pause_seconds_bucket{{generation="{g}",le="0.05"}} {count}',
                f'ebb_autoscaler_gc_pause_seconds_bucket{{generation="{g}",le="+Inf"}} {count}',
                f'ebb_autoscaler_gc_pause_seconds_count{{generation="{g}"}} {count}',
                f'ebb_autoscaler_gc_pause_seconds_sum{{generation="{g}"}} {total}',
            ]
        return "\n".join(lines)

    before = ba.parse_prometheus(text(1.0, 0.02))
    after = ba.parse_prometheus(text(2.0, 0.05))
    summary = ba.gc_pause_summary(before, after)
    assert summary["2"]["count"] == 1.0
    assert summary["2"]["total_ms"] == pytest.approx(30.0)
    assert summary["0"]["count"] == 0.0
    assert ba.gc_pause_summary([], []) == {}


def test_a_fleet_at_one_message_a_second_is_shown_but_not_judged():
    res = ba.Results(machine={"nproc": 2})
    fleet = {**window(1, 10_000, 0.8, "stats", shape="fleet"), "streams": 1000, "period_s": 1.0}
    res.ingest, res.ingest_clients = [fleet, scale("stats")], [[{}], [{"accepted": 300_000}]]
    targets = [v.target for v in ba.verdicts(res)]
    assert len(targets) == 1 and "the target's fleet" in targets[0]
    assert "| 1 (fleet: 1,000 streams) | stats port |" in ba.render(res)
