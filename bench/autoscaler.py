"""`python -m bench.autoscaler`: the autoscaler's performance figures (issue 3), one run.

Three figures, each printed beside its target:

  ingest    stats/s one real autoscaler process (`python -m ebb.autoscaler`) absorbs, per
            CPU-second of that process, each phase once on the stats port (HTTP/2 read in
            the event loop: what queues and activators use) and once on the gRPC port
            (grpcio), back to back (`--ports`): K load-generator processes stream
            pre-serialised `StreamStatsRequest`s as fast as the stream takes them, 100
            stats per message (an activator-like batch) and 1 per message (what a queue
            sends); then the queue-shaped "fleet": `python -m bench.autoscaler _fleet`
            processes holding hundreds of grpcio streams each, one connection per stream,
            every stream sending one 1-stat message per `--fleet-period` (1 s, as a
            queue) at its own phase; last the target's own shape, "scale": `_h2fleet`
            processes (bench/statsfleet.py, HTTP/2 spoken directly) holding 10,000
            connections that send one stat per 0.5 s each, 20,000 stats/s arriving, with
            the autoscaler's memory per connection. Accepted stats come from
            `ebb_autoscaler_stats_received_total` minus drops, CPU from /proc/PID/stat,
            both sampled over a window after a warm-up.
  tick      one decision tick over 5,000 revisions: the live process's
            `ebb_autoscaler_tick_duration_seconds` histogram (and `..._tick_cpu_seconds`,
            the loop thread's CPU in the tick) while every revision gets one stat a
            second, once with the tick in one pass (`--tick-slices 1`) and once spread
            over 4 slices, where `..._round_cpu_seconds` gives the CPU to decide every
            revision once and the tick histogram the longest pass; GC pauses from
            `ebb_autoscaler_gc_pause_seconds`. And the pure path timed in-process
            (`MultiScaler.decide` for every revision, what `AutoscalerServer.tick` loops
            over).
  reaction  from a load step (a simulated queue's concurrency going 0 -> 50 for a revision
            with target 10, reported time-weighted once a second like the real queue) to
            the decisions on `WatchDecisions`: the first one that scales up, and the first
            with desired >= 8 = ceil(50 / (10 x 0.7)); default tick (2 s) and period (1 s).

Everything binds 127.0.0.1, every load is bounded in count and time, and every process
started is stopped at the end, on error and on SIGINT/SIGTERM (bench.procs.Processes).
`python -m bench.autoscaler _stream ...`, `... _fleet ...` and `... _h2fleet ...` are the
load generators' own entry points.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench import procs
from bench.procs import HOST, Proc, Processes, StartError
from bench.report import Verdict, markdown_table
from bench.stats import percentile

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
STREAM_METHOD = "/ebb.api.autoscaler.v1.StatsService/StreamStats"
TARGET_ANNOTATION = "autoscaling.knative.dev/target"

INGEST_TARGET = 20_000.0  # stats per CPU-second
FLEET_NOTE = ("Fleet phase (grpcio clients, one message a second per stream): shown, not "
              "judged. Its few stats a second each wake the autoscaler alone, so it gives "
              "the cost of a wake-up, not the capacity the target asks about; the scale "
              "phase judges that, at the target's rate.")
TARGET_INSTANCES = 20_000  # the fleet behind it: 20,000 instances reporting once a second
TICK_TARGET_MS = 100.0
REACTION_TARGET_S = 2.5

RECEIVED = "ebb_autoscaler_stats_received_total"
DROPPED = "ebb_autoscaler_stats_dropped_total"
TICK_HISTOGRAM = "ebb_autoscaler_tick_duration_seconds"
TICK_CPU_HISTOGRAM = "ebb_autoscaler_tick_cpu_seconds"  # absent before 2026-11-26 22:30
ROUND_CPU_HISTOGRAM = "ebb_autoscaler_round_cpu_seconds"  # absent before 2026-11-26 23:40
GC_HISTOGRAM = "ebb_autoscaler_gc_pause_seconds"  # by generation; same

MAX_DURATION_S = 300.0
MAX_REVISIONS = 20_000
MAX_INSTANCES = 200_000
MAX_CLIENTS = 16
MAX_FLEET_STREAMS = 20_000  # per load-generator process
MAX_SCALE_STREAMS = 100_000
MAX_TRIALS = 50

PORTS = ("stats", "grpc")  # the autoscaler's HTTP/2 stats port, then its grpcio port
PORT_NAMES = {"stats": "stats port", "grpc": "gRPC port"}
# A phase kept up when the stats taken over the window came to this share of those
# arriving, and no message waited longer than this share of the period to be sent.
KEPT_UP_SHARE = 0.98
MAX_LAG_SHARE = 0.25


# ---------------------------------------------------------------------------------------
# Pure helpers: Prometheus text, histograms, figures, reaction milestones


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _unescape(value: str) -> str:
    return re.sub(r"\\[\\\"n]", lambda m: _ESCAPES[m.group(0)], value)


def _number(text: str) -> float:
    lowered = text.lower()
    if lowered in ("+inf", "inf"):
        return math.inf
    if lowered == "-inf":
        return -math.inf
    return float(text)


def parse_prometheus(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition (comments and blank lines skipped):
    `name{a="1",b="x \\"y\\""} 2.5 [timestamp]` -> Sample(name, {a: 1, b: 'x "y"'}, 2.5).
    A line that does not parse raises ValueError naming it."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        labels: dict[str, str] = {}
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            end = brace + 1
            while True:
                while end < len(line) and line[end] in " ,":
                    end += 1
                if end < len(line) and line[end] == "}":
                    end += 1
                    break
                match = _LABEL.match(line, end)
                if match is None:
                    raise ValueError(f"bad labels in metrics line: {raw!r}")
                labels[match.group(1)] = _unescape(match.group(2))
                end = match.end()
            rest = line[end:].split()
        else:
            name, *rest = line.split()
        if not rest or not name:
            raise ValueError(f"no value in metrics line: {raw!r}")
        try:
            value = _number(rest[0])
        except ValueError:
            raise ValueError(f"bad value in metrics line: {raw!r}") from None
        out.append(Sample(name, labels, value))
    return out


def metric_total(samples: Iterable[Sample], name: str,
                 labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples named `name` whose labels include `labels` (0 when none)."""
    want = dict(labels or {})
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in want.items()))


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram: cumulative (upper bound, count) pairs ascending, sum, count."""

    buckets: tuple[tuple[float, float], ...]
    sum: float
    count: float

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def max_bound(self) -> float | None:
        """The smallest bucket bound that holds every observation: the largest one is at
        most this (inf when some fell beyond the last finite bound); None when empty."""
        if self.count <= 0:
            return None
        for bound, cumulative in self.buckets:
            if cumulative >= self.count:
                return bound
        return math.inf

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations made between `earlier` and this one (same buckets)."""
        before = dict(earlier.buckets)
        return Histogram(tuple((b, c - before.get(b, 0.0)) for b, c in self.buckets),
                         self.sum - earlier.sum, self.count - earlier.count)


def histogram(samples: Iterable[Sample], name: str) -> Histogram:
    """The histogram `name` (`name_bucket{le=..}`, `name_sum`, `name_count`) from samples;
    ValueError when it is not there."""
    buckets: dict[float, float] = {}
    total = count = None
    for s in samples:
        if s.name == f"{name}_bucket" and "le" in s.labels:
            bound = _number(s.labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + s.value
        elif s.name == f"{name}_sum":
            total = (total or 0.0) + s.value
        elif s.name == f"{name}_count":
            count = (count or 0.0) + s.value
    if not buckets or total is None or count is None:
        raise ValueError(f"no histogram {name} in the metrics")
    return Histogram(tuple(sorted(buckets.items())), total, count)


@dataclass(frozen=True)
class IngestFigures:
    """One ingest phase: what the autoscaler accepted over a window and what it cost."""

    stats_per_message: int
    clients: int
    window_s: float
    received: float
    dropped: float
    cpu_s: float
    # fast: few streams sending at once; fleet: many at 1 message/period (grpcio clients);
    # scale: the target's fleet (`_h2fleet`)
    shape: str = "fast"
    port: str = "grpc"  # which listener took them: "stats" or "grpc" (all before the stats port)

    @property
    def accepted(self) -> float:
        return self.received - self.dropped

    @property
    def per_second(self) -> float:
        return self.accepted / self.window_s if self.window_s > 0 else 0.0

    @property
    def per_cpu_second(self) -> float | None:
        return self.accepted / self.cpu_s if self.cpu_s > 0 else None

    @property
    def cores(self) -> float:
        return self.cpu_s / self.window_s if self.window_s > 0 else 0.0

    @property
    def cpu_us_per_stat(self) -> float | None:
        return self.cpu_s / self.accepted * 1e6 if self.accepted > 0 else None

    def to_dict(self) -> dict:
        return {**asdict(self), "accepted": self.accepted, "per_second": self.per_second,
                "per_cpu_second": self.per_cpu_second, "cores": self.cores,
                "cpu_us_per_stat": self.cpu_us_per_stat}


def ingest_figures(stats_per_message: int, clients: int, before: Mapping[str, float],
                   after: Mapping[str, float], shape: str = "fast",
                   port: str = "grpc") -> IngestFigures:
    """From two samplings {t, received, dropped, cpu} taken around a window."""
    return IngestFigures(stats_per_message, clients, after["t"] - before["t"],
                         after["received"] - before["received"],
                         after["dropped"] - before["dropped"], after["cpu"] - before["cpu"],
                         shape, port)


def phase_label(fig: Mapping) -> str:
    """The phase an ingest figure belongs to, whichever port it ran on."""
    shape = fig.get("shape", "fast")
    if shape == "fleet":
        return (f"fleet: {fig.get('streams', 0):,} streams, 1 stat per "
                f"{fig.get('period_s', 1):g} s each")
    if shape == "scale":
        return (f"scale: {fig.get('streams', 0):,} connections, 1 stat per "
                f"{fig.get('period_s', 1):g} s each")
    n = fig["stats_per_message"]
    return f"{n} stat{'s' if n > 1 else ''}/message"


def by_phase(figs: Iterable[Mapping]) -> dict[str, dict[str, Mapping]]:
    """{phase label: {port: figure}}, phases and ports in run order."""
    out: dict[str, dict[str, Mapping]] = {}
    for fig in figs:
        out.setdefault(phase_label(fig), {})[fig.get("port", "grpc")] = fig
    return out


def split_evenly(total: int, parts: int) -> list[int]:
    """`total` over `parts` as evenly as can be, the larger shares first: 10 over 4 ->
    [3, 3, 2, 2]; empty shares left out."""
    base, extra = divmod(total, parts)
    return [n for n in (base + (k < extra) for k in range(parts)) if n]


def scale_shortfalls(fig: Mapping, clients: Sequence[Mapping]) -> list[str]:
    """Why a scale phase did not keep up with its fleet ([] when it did): a generator's
    error or missing answer; stats sent but not answered for, or dropped; fewer taken in
    the window than arrived; a message sent later than MAX_LAG_SHARE of a period."""
    out = []
    errors = [c["error"] for c in clients if "error" in c]
    if errors:
        out.append(f"{len(errors)} generator(s) failed: {errors[0][:120]}")
    elif any("accepted" not in c for c in clients):
        out.append("a generator had no answer")
    sent = fig.get("sent", 0)
    answered = fig.get("accepted_total", 0) + fig.get("dropped_total", 0)
    if not errors and answered != sent:
        out.append(f"answered for {answered:,} of {sent:,} stats sent")
    if fig.get("dropped_total"):
        out.append(f"{fig['dropped_total']:,} dropped")
    arriving = fig.get("arriving_per_s", 0.0)
    if fig["per_second"] < KEPT_UP_SHARE * arriving:
        out.append(f"took {fig['per_second']:,.0f}/s of {arriving:,.0f}/s arriving")
    lag = fig.get("max_lag_s")
    if lag is not None and lag > MAX_LAG_SHARE * fig.get("period_s", 1.0):
        out.append(f"a message sent {lag * 1000:,.0f} ms late")
    return out


def scale_note(streams: int, period_s: float, limit: int | None) -> str:
    """Why the scale phase is not the target's 20,000 connections at one stat a second
    (when the autoscaler's open-files limit, `limit`, rules them out)."""
    text = (f"Scale phase: {streams:,} connections × 1 stat per {period_s:g} s = "
            f"{streams / period_s:,.0f} stats/s arriving.")
    # The autoscaler's own files (listeners, logs, the interpreter's) come on top.
    if limit is not None and limit < TARGET_INSTANCES + 100:
        text += (f" The target's {TARGET_INSTANCES:,} instances reporting once a second would "
                 f"be {TARGET_INSTANCES:,} connections, but the autoscaler holds one open file "
                 f"per connection and its limit here is {limit:,} (the hard limit), so that "
                 "many cannot be opened on this machine; the phase sends the stats over fewer "
                 "connections, each more often.")
    return text


def open_files_limit(limits_text: str) -> int | None:
    """The soft limit on open files in a /proc/PID/limits text (None: unlimited or absent)."""
    for line in limits_text.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files"):].split()[0]
            return int(soft) if soft.isdigit() else None
    return None


def time_weighted(level: float, step_at: float | None, start: float, end: float) -> float:
    """Average concurrency over (start, end] of a load that is 0 until `step_at` and
    `level` from then on (None: no step yet) - what a queue reports for that period.
    E.g. level 50, step half way through a 1 s period -> 25."""
    if end <= start:
        return 0.0
    if step_at is None or step_at >= end:
        return 0.0
    loaded = end - max(start, step_at)
    return level * loaded / (end - start)


@dataclass(frozen=True)
class Seen:
    """A decision for one revision as the watcher received it (monotonic seconds)."""

    at: float
    desired: int
    panic: bool


def reaction_times(seen: Sequence[Seen], step_at: float, baseline: int, cover: int
                   ) -> tuple[float | None, float | None]:
    """(seconds from the step to the first decision scaling above `baseline`, seconds to the
    first with desired >= `cover`); None where no such decision came."""
    first = covered = None
    for d in sorted(seen, key=lambda d: d.at):
        if d.at < step_at:
            continue
        if first is None and d.desired > baseline:
            first = d.at - step_at
        if covered is None and d.desired >= cover:
            covered = d.at - step_at
    return first, covered


def baseline_desired(seen: Sequence[Seen], step_at: float) -> int | None:
    """The desired scale last decided before the step (None: no decision before it)."""
    before = [d for d in sorted(seen, key=lambda d: d.at) if d.at < step_at]
    return before[-1].desired if before else None


def covering_scale(level: float, target: float, utilization: float = 0.7) -> int:
    """Instances the KPA wants for `level` concurrency: ceil(level / (target x util));
    50 at target 10 -> ceil(50 / 7) = 8."""
    return math.ceil(round(level / (target * utilization), 6))


def time_summary(values: Sequence[float]) -> dict[str, float]:
    """n, median, p95, min, max of timings (any unit); {} when empty."""
    if not values:
        return {}
    data = sorted(values)
    return {"n": len(data), "median": statistics.median(data), "p95": percentile(data, 95),
            "min": data[0], "max": data[-1]}


def fmt_opt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def fmt_bound_ms(bound_s: float | None) -> str:
    if bound_s is None:
        return "-"
    if math.isinf(bound_s):
        return "> 10 s"
    return f"≤ {bound_s * 1000:g} ms"


# ---------------------------------------------------------------------------------------
# The load generator (`python -m bench.autoscaler _stream`), a separate process


def stream_messages(pb, *, namespace: str, revisions: int, instances: int,
                    instance_offset: int, batch: int, concurrency: float,
                    varied: bool, jitter: float = 0.0, variants: int = 1,
                    seed: int = 1) -> list[bytes]:
    """Serialised StreamStatsRequests covering `instances` instances once, `batch` stats
    each, `variants` times over; instance j (counted from `instance_offset`) reports for
    revision j % revisions. Its value is `concurrency`, or (j % 40) / 2 when `varied`,
    times a random factor in [1 - jitter, 1 + jitter] (a different one in each variant)."""
    rng = random.Random(seed)
    out = []
    for _ in range(variants):
        out += _one_pass(pb, rng, namespace, revisions, instances, instance_offset, batch,
                         concurrency, varied, jitter)
    return out


def _one_pass(pb, rng: random.Random, namespace: str, revisions: int, instances: int,
              instance_offset: int, batch: int, concurrency: float, varied: bool,
              jitter: float) -> list[bytes]:
    out = []
    for first in range(0, instances, batch):
        request = pb.StreamStatsRequest()
        for j in range(instance_offset + first,
                       instance_offset + min(first + batch, instances)):
            value = (j % 40) / 2 if varied else concurrency
            if jitter:
                value *= rng.uniform(1 - jitter, 1 + jitter)
            stat = request.stats.add(
                instance=f"bench-{j:06d}",
                revision=pb.RevisionKey(namespace=namespace, name=revision_name(j % revisions)),
                average_concurrency=value, request_count=value * 10,
                process_uptime_seconds=100.0, period_seconds=1.0,
            )
            stat.timestamp.FromNanoseconds(time.time_ns())
        out.append(request.SerializeToString())
    return out


def revision_name(i: int) -> str:
    return f"bench-{i:05d}"


def run_stream(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscaler _stream")
    parser.add_argument("--target", required=True)
    parser.add_argument("--namespace", default=NAMESPACE)
    parser.add_argument("--revisions", type=int, required=True)
    parser.add_argument("--instances", type=int, required=True)
    parser.add_argument("--instance-offset", type=int, default=0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="stats/s; 0 = as fast as possible")
    parser.add_argument("--concurrency", type=float, default=1.0)
    parser.add_argument("--varied", action="store_true")
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--variants", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S or not 1 <= args.batch <= 10_000:
        parser.error("duration must be in (0, 300] s and batch in 1..10000")
    if not 1 <= args.instances <= MAX_INSTANCES or not 1 <= args.revisions <= MAX_REVISIONS:
        parser.error("instances or revisions out of range")
    if not 0 <= args.jitter < 1 or not 1 <= args.variants <= 100:
        parser.error("jitter must be in [0, 1), variants in 1..100")

    import grpc

    from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb

    messages = stream_messages(pb, namespace=args.namespace, revisions=args.revisions,
                               instances=args.instances, instance_offset=args.instance_offset,
                               batch=args.batch, concurrency=args.concurrency,
                               varied=args.varied, jitter=args.jitter, variants=args.variants)
    sizes = [min(args.batch, args.instances - i)
             for i in range(0, args.instances, args.batch)] * args.variants
    counts = {"messages": 0, "stats": 0}
    channel = grpc.insecure_channel(args.target)
    grpc.channel_ready_future(channel).result(timeout=10)
    # request_serializer None: the messages are already bytes.
    call = channel.stream_unary(STREAM_METHOD, request_serializer=None,
                                response_deserializer=pb.StreamStatsResponse.FromString)
    started = time.monotonic()
    deadline = started + args.duration

    def requests():
        next_at = time.monotonic()
        i = 0
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            k = i % len(messages)
            if args.rate > 0:  # paced: each message when its stats are due
                if now < next_at:
                    time.sleep(min(next_at - now, deadline - now))
                    continue
                next_at += sizes[k] / args.rate
            counts["messages"] += 1
            counts["stats"] += sizes[k]
            i += 1
            yield messages[k]

    result: dict = {"sent_messages": 0, "sent_stats": 0}
    try:
        response = call(requests(), timeout=args.duration + 60)
        result.update(accepted=response.accepted, dropped=response.dropped)
    except grpc.RpcError as exc:
        result["error"] = f"{exc.code().name}: {exc.details()}"
    finally:
        channel.close()
    result.update(sent_messages=counts["messages"], sent_stats=counts["stats"],
                  elapsed_s=time.monotonic() - started)
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


def fleet_schedule(streams: int, period_s: float) -> list[float]:
    """Each stream's send offset within a period: spread evenly, as a fleet of queues
    started at unrelated moments is. 4 streams, 1 s -> [0.0, 0.25, 0.5, 0.75]."""
    return [period_s * i / streams for i in range(streams)]


def due_streams(offsets: Sequence[float], period_s: float, start: float, end: float
                ) -> list[int]:
    """Indices of the streams whose send instants (offset + k x period, k >= 0) fall in
    [start, end), in time order; `offsets` sorted, each in [0, period). Found by bisection,
    so a step costs what it sends, not the fleet's size.
    Offsets [0, 0.5], period 1: [0.4, 1.2) -> [1, 0]."""
    out: list[int] = []
    start = max(0.0, start)
    if end <= start:
        return out
    # Period by period, each bound taken as `x - base` with the same floats the next call
    # uses: consecutive windows split the instants exactly, whatever the rounding.
    for k in range(math.floor(start / period_s), math.floor(end / period_s) + 1):
        base = k * period_s
        out.extend(range(bisect.bisect_left(offsets, start - base),
                         bisect.bisect_left(offsets, end - base)))
    return out


def run_fleet(argv: Sequence[str]) -> int:
    """Queue-shaped load: `--streams` long-lived StreamStats client streams over
    `--channels` connections (each its own TCP connection), every stream sending one
    1-stat message per `--period` at its own phase, for `--duration` seconds."""
    parser = argparse.ArgumentParser(prog="python -m bench.autoscaler _fleet")
    parser.add_argument("--target", required=True)
    parser.add_argument("--namespace", default=NAMESPACE)
    parser.add_argument("--revisions", type=int, required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--channels", type=int, default=0, help="0 = one per stream")
    parser.add_argument("--instance-offset", type=int, default=0)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--duration", type=float, required=True)
    args = parser.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S or not 0.01 <= args.period <= 60:
        parser.error("duration must be in (0, 300] s and period in [0.01, 60] s")
    if not 1 <= args.streams <= MAX_FLEET_STREAMS or not 1 <= args.revisions <= MAX_REVISIONS:
        parser.error("streams or revisions out of range")
    channels = args.channels or args.streams
    if not 1 <= channels <= args.streams:
        parser.error("channels must be in 1..streams")
    result = asyncio.run(_fleet(args, channels))
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


async def _fleet(args, channels: int) -> dict:
    import grpc

    from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
    from ebb.common.grpcstream import CHANNEL_OPTIONS

    messages = stream_messages(pb, namespace=args.namespace, revisions=args.revisions,
                               instances=args.streams, instance_offset=args.instance_offset,
                               batch=1, concurrency=1.0, varied=True)
    # A local subchannel pool per channel: otherwise channels to one target share a
    # connection, and the fleet would be a few multiplexed connections, not many queues.
    # The rest as a queue's reporter sets it (keepalive pings every 10 s among them).
    options = [("grpc.use_local_subchannel_pool", 1), *CHANNEL_OPTIONS]
    opened = [grpc.aio.insecure_channel(args.target, options=options) for _ in range(channels)]
    result: dict = {"streams": args.streams, "channels": channels, "sent_messages": 0}
    calls = []
    cpu0 = time.process_time()
    try:
        for channel in opened:
            await asyncio.wait_for(channel.channel_ready(), 30)
        for i in range(args.streams):
            method = opened[i % channels].stream_unary(
                STREAM_METHOD, request_serializer=None,
                response_deserializer=pb.StreamStatsResponse.FromString)
            calls.append(method(timeout=args.duration + 60))
        offsets = fleet_schedule(args.streams, args.period)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + args.duration
        done_until = started
        step = min(0.01, args.period / 10)
        sent = late = 0
        while done_until < deadline:
            now = loop.time()
            end = min(now, deadline)
            for i in due_streams(offsets, args.period, done_until - started, end - started):
                if calls[i].done():  # ended by the server: say why, stop
                    raise RuntimeError(f"stream {i} ended: {await calls[i].code()} "
                                       f"{await calls[i].details()}")
                await calls[i].write(messages[i])
                sent += 1
            late = max(late, loop.time() - end)
            done_until = end
            await asyncio.sleep(step)
        for call in calls:
            await call.done_writing()
        responses = await asyncio.gather(*calls)
        result.update(accepted=sum(r.accepted for r in responses),
                      dropped=sum(r.dropped for r in responses))
        result.update(sent_messages=sent, elapsed_s=loop.time() - started,
                      max_lag_s=late, cpu_s=time.process_time() - cpu0)
    except (grpc.RpcError, TimeoutError, RuntimeError, asyncio.InvalidStateError) as exc:
        result["error"] = repr(exc)[:300]
        for call in calls:
            call.cancel()
    finally:
        for channel in opened:
            await channel.close()
    return result


# ---------------------------------------------------------------------------------------
# Talking to a live autoscaler


class Autoscaler:
    """One `python -m ebb.autoscaler` process on free ports."""

    def __init__(self, processes: Processes, work: Path, name: str,
                 cpus: set[int] | None = None) -> None:
        self.processes = processes
        self.ready_file = work / f"{name}.ready.json"
        self.name = name
        self.cpus = cpus
        self.proc: Proc | None = None
        self.grpc = ""
        self.stats = ""  # the HTTP/2 stats port (StreamStats only)
        self.metrics = ""
        self.channel = None

    def start(self, log_level: str = "info", env: Mapping[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "ebb.autoscaler", "--grpc-port", "0", "--host", HOST,
                "--stats-port", "0", "--metrics-port", "0", "--ready-file", str(self.ready_file),
                "--log-level", log_level]
        self.proc = self.processes.start(self.name, argv, env=env, cwd=str(REPO),
                                         cpus=self.cpus)
        procs.wait_file(self.proc, self.ready_file, timeout_s=30)
        info = json.loads(self.ready_file.read_text())
        self.grpc, self.stats, self.metrics = info["grpc"], info["stats"], info["metrics"]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def address(self, port: str) -> str:
        """host:port of the "stats" port or the "grpc" port."""
        return {"stats": self.stats, "grpc": self.grpc}[port]

    def _fetch(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=30) as reply:
            return reply.read().decode()

    def scrape(self) -> list[Sample]:
        return parse_prometheus(self._fetch())

    def sample(self) -> dict[str, float]:
        """{t, received, dropped, cpu} now: t and cpu halfway through the fetch, around
        when the autoscaler read its counters. Not after parsing: with 1,000 revisions the
        text is ~700 KB, fetched in 100-200 ms and parsed in ~200 more, which put t up to a
        few hundred ms after the counters and a window's rate off by 2 %."""
        cpu0, t0 = procs.cpu_seconds(self.pid), time.monotonic()
        text = self._fetch()
        t1, cpu1 = time.monotonic(), procs.cpu_seconds(self.pid)
        samples = parse_prometheus(text)
        return {"t": (t0 + t1) / 2, "received": metric_total(samples, RECEIVED),
                "dropped": metric_total(samples, DROPPED), "cpu": (cpu0 + cpu1) / 2}

    def register(self, names: Sequence[str], *, namespace: str = NAMESPACE,
                 annotations: Mapping[str, str] | None = None, ready: int = 1,
                 reachable: bool = True) -> None:
        import grpc

        from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
        from ebb.api.autoscaler.v1 import autoscaler_pb2_grpc as pb_grpc

        if self.channel is None:
            self.channel = grpc.insecure_channel(self.grpc)
        stub = pb_grpc.ScalingServiceStub(self.channel)
        futures = []
        for name in names:
            spec = pb.AutoscalingSpec(revision=pb.RevisionKey(namespace=namespace, name=name),
                                      annotations=dict(annotations or {}),
                                      reachable=reachable, ready_instances=ready)
            futures.append(stub.RegisterRevision.future(
                pb.RegisterRevisionRequest(spec=spec), timeout=60))
            if len(futures) >= 64:
                for f in futures:
                    f.result()
                futures = []
        for f in futures:
            f.result()

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None:
            self.processes.stop(self.proc)
            self.proc = None


def start_streamers(processes: Processes, target: str, *, clients: int, revisions: int,
                    instances: int, batch: int, duration_s: float, rate: float = 0.0,
                    varied: bool = False, jitter: float = 0.0, variants: int = 1,
                    cpus: set[int] | None = None, tag: str = "ingest") -> list[Proc]:
    per = max(1, instances // clients)
    out = []
    for k in range(clients):
        argv = [sys.executable, "-m", "bench.autoscaler", "_stream", "--target", target,
                "--revisions", str(revisions), "--instances", str(per),
                "--instance-offset", str(k * per), "--batch", str(batch),
                "--duration", f"{duration_s:g}", "--rate", f"{rate / clients:g}"]
        if varied:
            argv.append("--varied")
        if jitter:
            argv += ["--jitter", f"{jitter:g}", "--variants", str(variants)]
        out.append(processes.start(f"{tag}-b{batch}-c{k}", argv, cwd=str(REPO), cpus=cpus))
    return out


def collect_streamers(processes: Processes, streamers: Sequence[Proc], timeout_s: float
                      ) -> list[dict]:
    results = []
    deadline = time.monotonic() + timeout_s
    for proc in streamers:
        try:
            proc.popen.wait(max(0.1, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - stopped below either way
            pass
        lines = [ln for ln in proc.log_tail(4000).splitlines() if ln.startswith("{")]
        try:
            results.append(json.loads(lines[-1]) if lines else {"error": proc.log_tail(500)})
        except ValueError:
            results.append({"error": proc.log_tail(500)})
        processes.stop(proc)
    return results


# ---------------------------------------------------------------------------------------
# The benchmark


@dataclass
class Settings:
    parts: tuple[str, ...] = ("ingest", "tick", "reaction")
    ingest_revisions: int = 1000
    ingest_instances: int = 20_000
    clients: int = 2
    batches: tuple[int, ...] = (100, 1)
    # Queue-shaped ingest: per load process, this many streams on their own connections,
    # one 1-stat message each per period. 500 connections a process stay under the usual
    # soft limit of 1,024 open files (the autoscaler raises its own at start).
    fleet_clients: int = 2
    fleet_streams: int = 500
    # One message a second per stream, as a queue sends. A shorter period raises the
    # arrival rate over the same connections: the cost per stat then falls (more messages
    # per wake-up), but more connections at 1 s raise it; see the docs' sweep.
    fleet_period_s: float = 1.0
    # The target's fleet (`_h2fleet`): 20,000 instances once a second would be 20,000
    # connections, but the autoscaler holds an open file per connection and its hard limit
    # on this machine is 20,000; 10,000 connections at one stat per 0.5 s carry the same
    # 20,000 stats/s. Split over processes so that each stays well under its own limit.
    scale_streams: int = 10_000
    scale_period_s: float = 0.5
    scale_clients: int = 4
    ports: tuple[str, ...] = PORTS
    ingest_warmup_s: float = 3.0
    ingest_duration_s: float = 10.0
    tick_revisions: int = 5000
    tick_slices: tuple[int, ...] = (1, 4)  # live tick: one pass, then spread over 4
    tick_warmup_s: float = 8.0
    tick_duration_s: float = 20.0
    pure_ticks: int = 20
    reaction_trials: int = 12
    reaction_stagger_s: float = 1.7
    reaction_prefill_s: float = 8.0
    reaction_timeout_s: float = 20.0
    pin: bool = True
    seed: int = 1
    out: Path | None = None
    keep: bool = False


@dataclass
class Results:
    machine: dict = field(default_factory=dict)
    ingest: list[dict] = field(default_factory=list)
    ingest_clients: list[list[dict]] = field(default_factory=list)
    tick_live: dict = field(default_factory=dict)
    tick_pure: dict = field(default_factory=dict)
    tick_server: dict = field(default_factory=dict)
    reaction: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(autoscaler CPUs, load-generator CPUs): the last CPU for the autoscaler, the rest
    for the load, when there are at least 2; else no pinning."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def log(text: str) -> None:
    print(f"[bench.autoscaler] {text}", file=sys.stderr, flush=True)


def run_ingest(s: Settings, processes: Processes, work: Path, res: Results) -> None:
    """Every phase once per port in `s.ports`, back to back, on one autoscaler."""
    mine, others = split_cpus() if s.pin else (None, None)
    scaler = Autoscaler(processes, work, "autoscaler-ingest", cpus=mine)
    scaler.start()
    try:
        names = [revision_name(i) for i in range(s.ingest_revisions)]
        scaler.register(names, ready=20)
        log(f"ingest: {len(names)} revisions registered; autoscaler pid {scaler.pid}"
            + (f" on CPU {sorted(mine)}" if mine else ""))
        for batch in s.batches:
            for port in s.ports:
                _ingest_fast(s, processes, scaler, res, others, batch, port)
        if s.fleet_streams:
            for port in s.ports:
                _ingest_fleet(s, processes, scaler, res, others, port)
            res.notes.append(FLEET_NOTE)
        if s.scale_streams:
            limit = open_files_limit(Path(f"/proc/{scaler.pid}/limits").read_text())
            res.notes.append(scale_note(s.scale_streams, s.scale_period_s, limit))
            for port in s.ports:
                _ingest_scale(s, processes, work, scaler, res, others, port)
    finally:
        scaler.close()


def _ingest_fast(s: Settings, processes: Processes, scaler: Autoscaler, res: Results,
                 cpus: set[int] | None, batch: int, port: str) -> None:
    """`clients` `_stream` processes sending `batch`-stat messages as fast as taken."""
    total_s = s.ingest_warmup_s + s.ingest_duration_s + 1.0
    streamers = start_streamers(processes, scaler.address(port), clients=s.clients,
                                revisions=s.ingest_revisions, instances=s.ingest_instances,
                                batch=batch, duration_s=total_s, cpus=cpus,
                                tag=f"ingest-{port}")
    time.sleep(s.ingest_warmup_s)
    before = scaler.sample()
    time.sleep(s.ingest_duration_s)
    after = scaler.sample()
    clients = collect_streamers(processes, streamers, timeout_s=total_s + 60)
    fig = ingest_figures(batch, s.clients, before, after, port=port)
    res.ingest.append(fig.to_dict())
    res.ingest_clients.append(clients)
    log(f"ingest {batch}/msg, {port} port: {fig.per_second:,.0f} stats/s wall, "
        f"{fig.cores:.2f} cores -> {fig.per_cpu_second or 0:,.0f} per CPU-second; "
        f"clients: {clients}")
    time.sleep(1.0)


def _ingest_fleet(s: Settings, processes: Processes, scaler: Autoscaler, res: Results,
                  cpus: set[int] | None, port: str) -> None:
    """`fleet_clients` processes of `fleet_streams` queue-like streams each (one connection
    per stream, one 1-stat message per `fleet_period_s` at its own phase)."""
    total_s = s.ingest_warmup_s + s.ingest_duration_s + 2.0
    fleet = []
    for k in range(s.fleet_clients):
        argv = [sys.executable, "-m", "bench.autoscaler", "_fleet",
                "--target", scaler.address(port),
                "--revisions", str(s.ingest_revisions), "--streams", str(s.fleet_streams),
                "--instance-offset", str(k * s.fleet_streams),
                "--period", f"{s.fleet_period_s:g}", "--duration", f"{total_s:g}"]
        fleet.append(processes.start(f"ingest-fleet-{port}-{k}", argv, cwd=str(REPO),
                                     cpus=cpus))
    time.sleep(s.ingest_warmup_s + 1.0)  # connecting takes a moment more
    before = scaler.sample()
    load0 = sum(procs.cpu_seconds(p.pid) for p in fleet)
    time.sleep(s.ingest_duration_s)
    after = scaler.sample()
    load_cores = (sum(procs.cpu_seconds(p.pid) for p in fleet) - load0) / s.ingest_duration_s
    clients = collect_streamers(processes, fleet, timeout_s=total_s + 90)
    fig = ingest_figures(1, s.fleet_clients, before, after, shape="fleet", port=port)
    res.ingest.append({**fig.to_dict(), "streams": s.fleet_streams * s.fleet_clients,
                       "period_s": s.fleet_period_s, "load_cores": load_cores})
    res.ingest_clients.append(clients)
    log(f"ingest fleet ({s.fleet_clients} x {s.fleet_streams} streams), {port} port: "
        f"{fig.per_second:,.0f} stats/s wall, {fig.cores:.2f} cores -> "
        f"{fig.per_cpu_second or 0:,.0f} per CPU-second; load {load_cores:.2f} cores; {clients}")


def wait_connected(gens: Sequence[Proc], timeout_s: float) -> float | None:
    """Seconds until every `_h2fleet` generator said `connected ...` or exited (a failure:
    its JSON line says why); None when some had done neither within `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if all(not p.alive() or "\nconnected " in "\n" + p.log_tail(4000) for p in gens):
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def _ingest_scale(s: Settings, processes: Processes, work: Path, scaler: Autoscaler,
                  res: Results, cpus: set[int] | None, port: str) -> None:
    """The target's shape: `scale_streams` connections over `scale_clients` `_h2fleet`
    processes, one 1-stat message per `scale_period_s` each. The autoscaler's RSS before
    they connect and once they are all connected (idle: they wait for the go file), then,
    sending, its CPU and the stats taken over the window, as in the other phases; at the
    end each generator sums its streams' answers, to show every stat sent was taken."""
    from bench.statsfleet import CONNECT_TIMEOUT_S, FINISH_TIMEOUT_S

    shares = split_evenly(s.scale_streams, s.scale_clients)
    go = work / f"scale-{port}.go"
    go.unlink(missing_ok=True)
    send_s = s.ingest_warmup_s + s.ingest_duration_s + 1.0
    rss0 = procs.rss_bytes(scaler.pid)
    gens = []
    for k, n in enumerate(shares):
        argv = [sys.executable, "-m", "bench.autoscaler", "_h2fleet",
                "--target", scaler.address(port), "--revisions", str(s.ingest_revisions),
                "--streams", str(n), "--instance-offset", str(sum(shares[:k])),
                "--period", f"{s.scale_period_s:g}", "--duration", f"{send_s:g}",
                "--go-file", str(go)]
        gens.append(processes.start(f"ingest-scale-{port}-{k}", argv, cwd=str(REPO), cpus=cpus))
    connect_s = wait_connected(gens, CONNECT_TIMEOUT_S + 30)
    rss1 = procs.rss_bytes(scaler.pid)
    go.touch()  # even after a failed connect: the generators that are up run and finish
    time.sleep(s.ingest_warmup_s)
    before = scaler.sample()
    load0 = sum(procs.cpu_seconds(p.pid) for p in gens if p.alive())
    time.sleep(s.ingest_duration_s)
    after = scaler.sample()
    rss2 = procs.rss_bytes(scaler.pid)
    load_cores = (sum(procs.cpu_seconds(p.pid) for p in gens if p.alive()) - load0
                  ) / s.ingest_duration_s
    clients = collect_streamers(processes, gens, timeout_s=send_s + FINISH_TIMEOUT_S + 30)
    fig = ingest_figures(1, len(gens), before, after, shape="scale", port=port).to_dict()
    lags = [c["max_lag_s"] for c in clients if "max_lag_s" in c]
    fig.update(streams=s.scale_streams, period_s=s.scale_period_s,
               arriving_per_s=s.scale_streams / s.scale_period_s, connect_s=connect_s,
               sent=sum(c.get("sent_messages", 0) for c in clients),
               accepted_total=sum(c.get("accepted", 0) for c in clients),
               dropped_total=sum(c.get("dropped", 0) for c in clients),
               max_lag_s=max(lags) if lags else None, load_cores=load_cores,
               rss_before_mb=rss0 / 2**20, rss_connected_mb=rss1 / 2**20,
               rss_window_end_mb=rss2 / 2**20,
               kb_per_connection=(rss1 - rss0) / 1024 / s.scale_streams)
    fig["shortfalls"] = scale_shortfalls(fig, clients)
    res.ingest.append(fig)
    res.ingest_clients.append(clients)
    log(f"ingest scale ({s.scale_streams} connections at {s.scale_period_s:g} s), {port} "
        f"port: {fig['per_second']:,.0f} stats/s wall, {fig['cores']:.2f} cores -> "
        f"{fig['per_cpu_second'] or 0:,.0f} per CPU-second; RSS {rss0 / 2**20:.0f} -> "
        f"{rss1 / 2**20:.0f} MiB connected; load {load_cores:.2f} cores; "
        f"shortfalls {fig['shortfalls']}; {clients}")
    time.sleep(1.0)


class Watcher:
    """A WatchDecisions stream read on a thread: decisions per revision with arrival times."""

    def __init__(self, target: str, namespace: str) -> None:
        import grpc

        from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
        from ebb.api.autoscaler.v1 import autoscaler_pb2_grpc as pb_grpc

        self.channel = grpc.insecure_channel(target)
        stub = pb_grpc.ScalingServiceStub(self.channel)
        self.call = stub.WatchDecisions(pb.WatchDecisionsRequest(namespace=namespace))
        self.seen: dict[str, list[Seen]] = {}
        self.count = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            for response in self.call:
                now = time.monotonic()
                with self.lock:
                    for d in response.decisions:
                        self.count += 1
                        self.seen.setdefault(d.revision.name, []).append(
                            Seen(now, d.desired_scale, d.panic))

    def decisions(self, name: str) -> list[Seen]:
        with self.lock:
            return list(self.seen.get(name, []))

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()
        self.thread.join(5)


TICK_PHASES = (("constant", 0.0), ("jitter", 0.2))  # load per revision: steady / ±20 %


def run_tick_live(s: Settings, processes: Processes, work: Path, res: Results) -> None:
    """For each of `tick_slices`: a fresh autoscaler (`--tick-slices N`) with
    `tick_revisions` revisions; each gets one stat a second (one instance each, 500 stats
    per message), first at a constant value per revision (after the first ticks few
    verdicts change), then jittering ±20 % from second to second (most verdicts change
    every tick: a log line and a message to the watcher each).

    With one slice the tick histogram times the whole tick. With N slices it times one
    pass over a slice (the longest the event loop is held by decisions), and the round
    histogram gives the CPU to decide every revision once (the sum of N passes)."""
    res.tick_live = {"revisions": s.tick_revisions, "phases": {}, "whole_run": {}}
    for slices in s.tick_slices:
        _tick_live_once(s, processes, work, res, slices)


def _tick_live_once(s: Settings, processes: Processes, work: Path, res: Results,
                    slices: int) -> None:
    mine, others = split_cpus() if s.pin else (None, None)
    scaler = Autoscaler(processes, work, f"autoscaler-tick-{slices}", cpus=mine)
    # By environment, not flag: code from before --tick-slices ignores it (one pass).
    scaler.start(env={"EBB_AUTOSCALER_TICK_SLICES": str(slices)})
    watcher = None
    try:
        names = [revision_name(i) for i in range(s.tick_revisions)]
        t0 = time.monotonic()
        scaler.register(names, ready=1)
        log(f"tick ({slices} slice(s)): {len(names)} revisions registered in "
            f"{time.monotonic() - t0:.1f} s")
        watcher = Watcher(scaler.grpc, NAMESPACE)
        start = scaler.scrape()
        for phase, jitter in TICK_PHASES:
            total_s = s.tick_warmup_s + s.tick_duration_s + 1.0
            streamers = start_streamers(processes, scaler.stats, clients=1,
                                        revisions=s.tick_revisions,
                                        instances=s.tick_revisions, batch=500,
                                        duration_s=total_s, rate=s.tick_revisions,
                                        varied=True, jitter=jitter,
                                        variants=10 if jitter else 1, cpus=others,
                                        tag=f"tick-{slices}-{phase}")
            time.sleep(s.tick_warmup_s)
            before = scaler.scrape()
            cpu0, t_a, watched0 = procs.cpu_seconds(scaler.pid), time.monotonic(), watcher.count
            load0 = os.getloadavg()[0]
            time.sleep(s.tick_duration_s)
            after = scaler.scrape()
            cpu1, t_b, watched1 = procs.cpu_seconds(scaler.pid), time.monotonic(), watcher.count
            clients = collect_streamers(processes, streamers, timeout_s=total_s + 60)
            h = histogram(after, TICK_HISTOGRAM).minus(histogram(before, TICK_HISTOGRAM))
            h_cpu = tick_cpu(before, after)
            h_round = tick_cpu(before, after, ROUND_CPU_HISTOGRAM)
            gc_pauses = gc_pause_summary(before, after)
            accepted = (metric_total(after, RECEIVED) - metric_total(after, DROPPED)
                        - metric_total(before, RECEIVED) + metric_total(before, DROPPED))
            rounds = h_round.count if h_round else h.count
            key = f"{phase} load" + ("" if slices == 1 else f", {slices} slices")
            res.tick_live["phases"][key] = {
                "jitter": jitter, "slices": slices, "ticks": h.count,
                "mean_ms": fmt_ms_value(h.mean),
                "max_bound_s": h.max_bound(), "buckets": h.buckets,
                "cpu_mean_ms": fmt_ms_value(h_cpu.mean) if h_cpu else None,
                "rounds": rounds,
                "round_cpu_mean_ms": fmt_ms_value(h_round.mean) if h_round else None,
                "round_cpu_max_bound_s": h_round.max_bound() if h_round else None,
                "gc": gc_pauses,
                "stats_per_s": accepted / (t_b - t_a),
                "autoscaler_cores": (cpu1 - cpu0) / (t_b - t_a),
                "decisions_per_tick": (watched1 - watched0) / rounds if rounds else None,
                "loadavg_1m": [load0, os.getloadavg()[0]],
                "streamer": clients,
            }
            log(f"tick live {key}: {res.tick_live['phases'][key]}")
        h_all = histogram(scaler.scrape(), TICK_HISTOGRAM).minus(
            histogram(start, TICK_HISTOGRAM))
        res.tick_live["whole_run"][str(slices)] = {
            "ticks": h_all.count, "mean_ms": fmt_ms_value(h_all.mean),
            "max_bound_s": h_all.max_bound()}
    finally:
        if watcher is not None:
            watcher.close()
        scaler.close()


def gc_pause_summary(before: Sequence[Sample], after: Sequence[Sample]) -> dict[str, dict]:
    """Per generation: collections, total ms and the bound on the longest, between two
    scrapes; generations never collected are left out, so {} from an autoscaler without
    the histogram."""
    out = {}
    for generation in ("0", "1", "2"):
        def pick(samples: Sequence[Sample], g: str = generation) -> list[Sample]:
            return [x for x in samples if x.labels.get("generation", g) == g]
        try:
            h = histogram(pick(after), GC_HISTOGRAM).minus(histogram(pick(before), GC_HISTOGRAM))
        except ValueError:
            continue  # no such generation (or no histogram at all: older code)
        out[generation] = {"count": h.count, "total_ms": h.sum * 1000,
                           "max_bound_s": h.max_bound()}
    return out


def tick_cpu(before: Sequence[Sample], after: Sequence[Sample],
             name: str = TICK_CPU_HISTOGRAM) -> Histogram | None:
    """The ticks' CPU-time histogram (or `name`) between two scrapes; None from an
    autoscaler without it (older code, in a before/after comparison)."""
    try:
        return histogram(after, name).minus(histogram(before, name))
    except ValueError:
        return None


def fmt_ms_value(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def run_tick_pure(s: Settings, res: Results) -> None:
    """MultiScaler with 5,000 revisions and a fake clock: a full stable window of stats,
    then `pure_ticks` ticks 2 s apart (2 stats per revision between ticks, not timed)."""
    from ebb.autoscaler.collector import StatValue
    from ebb.autoscaler.multiscaler import MultiScaler, RevisionSpec
    from ebb.autoscaler.settings import AutoscalerSettings

    settings = AutoscalerSettings()
    scaler = MultiScaler(settings)
    now = 1000.0
    n = s.tick_revisions
    for i in range(n):
        scaler.register(RevisionSpec(NAMESPACE, revision_name(i), ready_instances=1 + i % 3,
                                     reachable=True), now)

    def load(i: int, second: int) -> float:
        base = (i % 40) / 2  # 0 .. 19.5: some idle, most under target, some over
        return base * (3.0 if (second // 10 + i) % 13 == 0 else 1.0)  # occasional bursts

    stats = 0

    def feed(second: int) -> float:
        nonlocal stats
        t = float(second)
        started = time.perf_counter()
        for i in range(n):
            scaler.record(t + 0.5, StatValue(f"inst-{i}", NAMESPACE, revision_name(i),
                                             load(i, second), request_count=load(i, second)))
        stats += n
        return time.perf_counter() - started

    feed_s = 0.0
    first = int(now)
    window = settings.stable_window_s
    for second in range(first, first + window):
        feed_s += feed(second)
    now = float(first + window)
    keys = scaler.keys()
    times_ms = []
    cpu_ms = []  # the thread's CPU time: what the tick costs whatever else the machine runs
    changed_total = 0
    for tick in range(s.pure_ticks + 2):  # the first two warm up, not counted
        for second in range(int(now), int(now) + 2):
            feed_s += feed(second)
        now += 2.0
        started, started_cpu = time.perf_counter(), time.thread_time()
        changed = 0
        for key in keys:
            _, did = scaler.decide(key, now)
            changed += did
        elapsed = (time.perf_counter() - started) * 1000
        elapsed_cpu = (time.thread_time() - started_cpu) * 1000
        if tick >= 2:
            times_ms.append(elapsed)
            cpu_ms.append(elapsed_cpu)
            changed_total += changed
    res.tick_pure = {"revisions": n, "ticks": len(times_ms), "ms": time_summary(times_ms),
                     "cpu_ms": time_summary(cpu_ms),
                     "all_ms": [round(v, 2) for v in times_ms],
                     "changed_verdicts_per_tick": changed_total / max(1, len(times_ms)),
                     "collector_record_per_s": stats / feed_s if feed_s else None}
    log(f"tick pure: {res.tick_pure['ms']}; collector.record {stats / feed_s:,.0f}/s")


def run_tick_server(s: Settings, res: Results) -> None:
    """`AutoscalerServer.tick()` in-process with a fake clock: the pure decisions plus what
    the server adds per decision (counters, timestamps) and per changed verdict (the proto
    offered to one watcher, and a JSON log line, written to /dev/null here, when desired
    or panic moved), without gRPC threads. Constant load first (few verdicts change), then
    ±20 % jitter (EBC moves on most ticks)."""
    import logging

    from ebb.autoscaler.collector import StatValue
    from ebb.autoscaler.multiscaler import RevisionSpec
    from ebb.autoscaler.server import AutoscalerServer, _Watcher
    from ebb.autoscaler.settings import AutoscalerSettings
    from ebb.common.logs import JsonFormatter

    logger = logging.getLogger("ebb.autoscaler")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    sink = open(os.devnull, "w")  # closed below
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter("autoscaler"))
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    try:
        now = [1000.0]
        server = AutoscalerServer(AutoscalerSettings(), clock=lambda: now[0])
        n = s.tick_revisions
        for i in range(n):
            server.register(RevisionSpec(NAMESPACE, revision_name(i), ready_instances=1,
                                         reachable=True))
        watcher = _Watcher("")
        server._watchers.add(watcher)  # one watcher, like the controller
        rng = random.Random(s.seed)

        def feed(second: int, jitter: float) -> None:
            for i in range(n):
                value = (i % 40) / 2
                if jitter:
                    value *= rng.uniform(1 - jitter, 1 + jitter)
                server.scaler.record(second + 0.5, StatValue(f"inst-{i}", NAMESPACE,
                                                            revision_name(i), value))

        for second in range(1000, 1030):
            feed(second, 0.0)
        now[0] = 1030.0
        out = {}
        ticks = max(4, s.pure_ticks // 2)
        for phase, jitter in TICK_PHASES:
            wall, cpu, changed = [], [], []
            for tick in range(ticks + 2):  # the first two settle, not counted
                for second in range(int(now[0]), int(now[0]) + 2):
                    feed(second, jitter)
                now[0] += 2.0
                started, started_cpu = time.perf_counter(), time.thread_time()
                did = server.tick()
                if tick >= 2:
                    wall.append((time.perf_counter() - started) * 1000)
                    cpu.append((time.thread_time() - started_cpu) * 1000)
                    changed.append(did)
                watcher.pending.clear()
            out[phase] = {"ms": time_summary(wall), "cpu_ms": time_summary(cpu),
                          "changed_verdicts_per_tick": statistics.mean(changed)}
        res.tick_server = {"revisions": n, "phases": out}
        log(f"tick server in-process: {out}")
    finally:
        logger.handlers, logger.propagate = saved[2], saved[1]
        logger.setLevel(saved[0])
        sink.close()


async def _reaction_async(s: Settings, target: str, stats_target: str, res: Results) -> None:
    """`target`: the gRPC port (registration, decisions); `stats_target`: where the
    simulated queues stream, the stats port as a real queue's."""
    import grpc

    from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
    from ebb.api.autoscaler.v1 import autoscaler_pb2_grpc as pb_grpc

    level, target_value = 50.0, 10.0
    cover = covering_scale(level, target_value)
    rng = random.Random(s.seed)
    namespace = "react"
    channel = grpc.aio.insecure_channel(target)
    stats_channel = grpc.aio.insecure_channel(stats_target)
    stub = pb_grpc.StatsServiceStub(stats_channel)
    scaling = pb_grpc.ScalingServiceStub(channel)
    loop = asyncio.get_running_loop()
    seen: dict[str, list[Seen]] = {}

    async def watch() -> None:
        call = scaling.WatchDecisions(pb.WatchDecisionsRequest(namespace=namespace))
        async for response in call:
            now = loop.time()
            for d in response.decisions:
                seen.setdefault(d.revision.name, []).append(Seen(now, d.desired_scale, d.panic))

    watch_task = loop.create_task(watch())

    async def trial(i: int) -> dict:
        name = f"react-{i:03d}"
        spec = pb.AutoscalingSpec(revision=pb.RevisionKey(namespace=namespace, name=name),
                                  annotations={TARGET_ANNOTATION: "10"}, reachable=True,
                                  ready_instances=1)
        await scaling.RegisterRevision(pb.RegisterRevisionRequest(spec=spec), timeout=10)
        call = stub.StreamStats()
        # The reporter's period boundaries have their own phase, as an instance's would;
        # the load steps at a random instant of a period, after a prefill of zeros.
        last = loop.time()
        next_report = last + rng.uniform(0.05, 1.0)
        step_at = last + s.reaction_prefill_s + rng.uniform(0.0, 1.0)
        first_loaded_sent: float | None = None
        deadline = step_at + s.reaction_timeout_s
        while loop.time() < deadline:
            await asyncio.sleep(max(0.0, next_report - loop.time()))
            now = loop.time()
            value = time_weighted(level, step_at, last, now)
            request = pb.StreamStatsRequest()
            request.stats.add(instance=f"{name}-inst", revision=spec.revision,
                              average_concurrency=value, request_count=value * 10,
                              process_uptime_seconds=now, period_seconds=now - last)
            await call.write(request)
            if value > 0 and first_loaded_sent is None:
                first_loaded_sent = now
            last = now
            next_report += 1.0
            if any(d.at >= step_at and d.desired >= cover for d in seen.get(name, [])):
                break
        with contextlib.suppress(Exception):
            await call.done_writing()
            await asyncio.wait_for(call, 5)
        decisions = seen.get(name, [])
        base = baseline_desired(decisions, step_at)
        first, covered = reaction_times(decisions, step_at, base if base is not None else 1,
                                        cover)
        after = [d.at - step_at for d in decisions if d.at >= step_at]
        return {"revision": name, "baseline_desired": base, "first_scale_up_s": first,
                "first_decision_s": min(after) if after else None,
                "covering_s": covered,
                "first_loaded_stat_s": None if first_loaded_sent is None
                else first_loaded_sent - step_at,
                "decisions_after_step": [(round(d.at - step_at, 3), d.desired, d.panic)
                                         for d in decisions if d.at >= step_at]}

    tasks = []
    for i in range(s.reaction_trials):
        tasks.append(loop.create_task(trial(i)))
        await asyncio.sleep(s.reaction_stagger_s)
    trials = await asyncio.gather(*tasks)
    watch_task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await watch_task
    await channel.close()
    await stats_channel.close()
    firsts = [t["first_scale_up_s"] for t in trials if t["first_scale_up_s"] is not None]
    covers = [t["covering_s"] for t in trials if t["covering_s"] is not None]
    res.reaction = {
        "level": level, "target": target_value, "covering_scale": cover,
        "trials": trials,
        "first_scale_up_s": time_summary(firsts),
        "covering_s": time_summary(covers),
        "missed_first": len(trials) - len(firsts),
        "missed_covering": len(trials) - len(covers),
        "first_loaded_stat_s": time_summary([t["first_loaded_stat_s"] for t in trials
                                             if t["first_loaded_stat_s"] is not None]),
        "first_decision_s": time_summary([t["first_decision_s"] for t in trials
                                          if t["first_decision_s"] is not None]),
    }


def run_reaction(s: Settings, processes: Processes, work: Path, res: Results) -> None:
    scaler = Autoscaler(processes, work, "autoscaler-reaction")
    scaler.start()
    try:
        asyncio.run(_reaction_async(s, scaler.grpc, scaler.stats, res))
        log(f"reaction: first scale-up {res.reaction['first_scale_up_s']}, "
            f"covering {res.reaction['covering_s']}")
    finally:
        scaler.close()


# ---------------------------------------------------------------------------------------
# Report


def verdicts(res: Results) -> list[Verdict]:
    phases = by_phase(res.ingest)
    out = [scale_verdict(ports) for ports in phases.values()
           if next(iter(ports.values())).get("shape") == "scale"]
    # A fleet of 1,000 streams at one message a second each is 1,000 stats/s arriving: each
    # message wakes the process alone, so its cost per stat is the wake-up's, not the
    # capacity the target asks about. It is shown in the tables, not judged; the scale
    # phase judges the target at its own rate.
    out += [ingest_verdict(label, ports) for label, ports in phases.items()
            if next(iter(ports.values())).get("shape") not in ("scale", "fleet")]
    for phase, h in res.tick_live.get("phases", {}).items():
        out.append(live_tick_verdict(res.tick_live["revisions"], phase, h))
    if res.tick_pure.get("ms"):
        ms = res.tick_pure["ms"]
        cpu = res.tick_pure.get("cpu_ms") or {}
        out.append(Verdict(
            f"tick over {res.tick_pure['revisions']:,} revisions ≤ {TICK_TARGET_MS:g} ms "
            "(pure MultiScaler, in-process)",
            f"median {ms['median']:.1f} ms, p95 {ms['p95']:.1f} ms over {ms['n']} ticks"
            + (f" (CPU median {cpu['median']:.1f} ms)" if cpu else ""),
            ms["p95"] <= TICK_TARGET_MS))
    if res.reaction:
        for key, label in (("covering_s", "first decision with desired ≥ "
                            f"{res.reaction['covering_scale']} (covers the load)"),
                           ("first_scale_up_s", "first decision scaling up")):
            summary = res.reaction[key]
            missed = res.reaction["missed_covering" if key == "covering_s" else "missed_first"]
            if not summary:
                out.append(Verdict(f"reaction ≤ {REACTION_TARGET_S:g} s: {label}",
                                   "no decision", False))
                continue
            out.append(Verdict(
                f"reaction ≤ {REACTION_TARGET_S:g} s: load step 0 → 50 to the {label}",
                f"median {summary['median']:.2f} s, p95 {summary['p95']:.2f} s, "
                f"max {summary['max']:.2f} s ({summary['n']} trials"
                + (f", {missed} never" if missed else "") + ")",
                summary["median"] <= REACTION_TARGET_S and missed == 0))
    return out


def _judged(ports: Mapping[str, Mapping]) -> tuple[str, Mapping, Mapping | None]:
    """(port, figure) judged against the target, the stats port's when it ran (it is what
    queues and activators use), and the gRPC port's figure beside it as the baseline."""
    port = "stats" if "stats" in ports else next(iter(ports))
    return port, ports[port], ports.get("grpc") if port != "grpc" else None


def ingest_verdict(label: str, ports: Mapping[str, Mapping]) -> Verdict:
    """One ingest phase against the target: stats per CPU-second of the autoscaler."""
    port, fig, base = _judged(ports)
    per = fig["per_cpu_second"]
    return Verdict(
        f"ingest ≥ {INGEST_TARGET:,.0f} stats/s on one core ({label}, {PORT_NAMES[port]})",
        f"{fmt_opt(per, ',.0f')} per CPU-second"
        + (f" (gRPC port {fmt_opt(base['per_cpu_second'], ',.0f')})" if base else "")
        + f"; {fig['per_second']:,.0f}/s wall at {fig['cores']:.2f} cores",
        None if per is None else per >= INGEST_TARGET)


def scale_verdict(ports: Mapping[str, Mapping]) -> Verdict:
    """The target itself, at its shape: the fleet's stats arriving over many connections.
    Met when the autoscaler kept up (took what arrived, answered for every stat sent,
    dropped none, the generators on time) at no more than one core: stats per CPU-second
    ≥ the target. Not judged (n/a) when the fleet sent less than the target's rate."""
    port, fig, base = _judged(ports)
    per = fig["per_cpu_second"]
    shortfalls = fig.get("shortfalls", [])
    arriving = fig.get("arriving_per_s", 0.0)
    lag = fig.get("max_lag_s")
    measured = (f"{fmt_opt(per, ',.0f')} per CPU-second: took {fig['per_second']:,.0f}/s at "
                f"{fig['cores']:.2f} cores; ")
    if shortfalls:
        measured += "did not keep up: " + "; ".join(shortfalls)
    else:
        measured += (f"{fig.get('accepted_total', 0):,} of {fig.get('sent', 0):,} stats sent "
                     f"accepted, none dropped, sent ≤ {fmt_opt(None if lag is None else lag * 1000, '.0f')} ms "
                     "late")
    if base:
        measured += (f" (gRPC port {fmt_opt(base['per_cpu_second'], ',.0f')} per CPU-second: "
                     f"took {base['per_second']:,.0f}/s at {base['cores']:.2f} cores"
                     + (", did not keep up" if base.get("shortfalls") else "") + ")")
    met = (None if arriving < INGEST_TARGET or per is None
           else not shortfalls and per >= INGEST_TARGET)
    return Verdict(
        f"ingest ≥ {INGEST_TARGET:,.0f} stats/s on one core, the target's fleet: "
        f"{fig.get('streams', 0):,} connections × 1 stat per {fig.get('period_s', 1):g} s = "
        f"{arriving:,.0f}/s arriving ({PORT_NAMES[port]})", measured, met)


def live_tick_verdict(revisions: int, phase: str, h: Mapping) -> Verdict:
    """One live phase against the target. One slice: the tick's wall time (mean, and the
    histogram's bound on the longest). Spread: the CPU to decide every revision once
    (a round) and the longest pass, both of which must be within the target."""
    bound = h["max_bound_s"]
    target = f"tick over {revisions:,} revisions ≤ {TICK_TARGET_MS:g} ms (live process, {phase})"
    if h.get("slices", 1) <= 1:
        return Verdict(target, f"mean {fmt_opt(h['mean_ms'], '.1f', ' ms')}, max "
                       f"{fmt_bound_ms(bound)} over {h['ticks']:.0f} ticks",
                       None if bound is None else bound <= TICK_TARGET_MS / 1000)
    round_ms = h.get("round_cpu_mean_ms")
    ok = (None if bound is None or round_ms is None
          else bound <= TICK_TARGET_MS / 1000 and round_ms <= TICK_TARGET_MS)
    return Verdict(target, f"all revisions: CPU mean {fmt_opt(round_ms, '.1f', ' ms')} over "
                   f"{h['rounds']:.0f} rounds; longest pass {fmt_bound_ms(bound)} (mean "
                   f"{fmt_opt(h['mean_ms'], '.1f', ' ms')}, {h['slices']} passes a round)", ok)


def machine_line(m: Mapping) -> str:
    """The report's first line: the machine, and how busy it was while the run lasted."""
    text = (f"{m.get('nproc')} CPU ({m.get('cpu_model')}), {m.get('mem_total_mb')} MiB, "
            f"Python {m.get('python')}")
    if m.get("busy_cores") is not None:
        text += (f"; whole machine busy {m['busy_cores']:.2f} of {m.get('nproc')} cores on "
                 f"average during the run (this benchmark included), load average "
                 f"{' '.join(m.get('loadavg_at_start') or [])} at start")
    return text


def render_ingest(res: Results) -> list[str]:
    """The ingest tables: every phase and port; the target's fleet (scale); the two ports
    side by side."""
    lines = []
    rows, scale_rows = [], []
    for fig, clients in zip(res.ingest, res.ingest_clients, strict=True):
        errors = [c["error"] for c in clients if "error" in c]
        port = PORT_NAMES[fig.get("port", "grpc")]
        if fig.get("shape") == "scale":
            scale_rows.append([
                port, f"{fig['streams']:,}", f"{fig['arriving_per_s']:,.0f}",
                f"{fig['per_second']:,.0f}", f"{fig['cores']:.2f}",
                fmt_opt(fig["per_cpu_second"], ",.0f"), f"{fig['sent']:,}",
                f"{fig['accepted_total']:,}", f"{fig['dropped_total']:,}",
                fmt_opt(None if fig["max_lag_s"] is None else fig["max_lag_s"] * 1000, ".0f"),
                f"{fig['rss_before_mb']:.0f} → {fig['rss_connected_mb']:.0f} → "
                f"{fig['rss_window_end_mb']:.0f}",
                f"{fig['kb_per_connection']:.1f}", f"{fig['load_cores']:.2f}",
                "yes" if not fig["shortfalls"] else "; ".join(fig["shortfalls"])[:80]])
            continue
        totals = sum(c.get("accepted", 0) for c in clients)
        rows.append([str(fig["stats_per_message"])
                     + (f" (fleet: {fig.get('streams', 0):,} streams)"
                        if fig.get("shape") == "fleet" else ""), port, str(fig["clients"]),
                     f"{totals:,.0f}",
                     f"{fig['window_s']:.1f}", f"{fig['accepted']:,.0f}",
                     f"{fig['dropped']:,.0f}", f"{fig['per_second']:,.0f}",
                     f"{fig['cores']:.2f}", fmt_opt(fig["per_cpu_second"], ",.0f"),
                     fmt_opt(fig["cpu_us_per_stat"], ".1f"),
                     "; ".join(errors)[:60] or "-"])
    if rows:
        lines += ["Ingest (one autoscaler process; stats accepted over the window)", "",
                  markdown_table(("stats/msg", "port", "clients",
                                  "accepted (responses, whole run)", "window s",
                                  "accepted in window", "dropped", "stats/s",
                                  "autoscaler cores", "stats per CPU-s", "CPU µs/stat",
                                  "client errors"), rows, (False, False) + (True,) * 9 + (False,)),
                  ""]
    if scale_rows:
        lines += ["Ingest at the target's scale (`_h2fleet` connections, one stat each per "
                  "period; sent, accepted and dropped over the whole run, taken/s and cores "
                  "over the window; RSS before the fleet connects, once it is connected and "
                  "idle, at the window's end)",
                  "", markdown_table(("port", "connections", "arriving/s", "taken/s",
                                      "autoscaler cores", "stats per CPU-s", "sent",
                                      "accepted", "dropped", "max lag ms",
                                      "RSS MiB before → connected → sending", "KB/connection",
                                      "generator cores", "kept up"),
                                     scale_rows, (False,) + (True,) * 12 + (False,)), ""]
    pairs = [(label, ports) for label, ports in by_phase(res.ingest).items()
             if "stats" in ports and "grpc" in ports]
    if pairs:
        side = []
        for label, ports in pairs:
            stats, grpc = ports["stats"]["per_cpu_second"], ports["grpc"]["per_cpu_second"]
            side.append([label, fmt_opt(stats, ",.0f"), fmt_opt(grpc, ",.0f"),
                         fmt_opt(stats / grpc if stats and grpc else None, ".2f", "×")])
        lines += ["Stats port beside gRPC port (stats per CPU-second of the autoscaler)", "",
                  markdown_table(("phase", "stats port", "gRPC port", "stats ÷ gRPC"), side,
                                 (False, True, True, True)), ""]
    return lines


def render(res: Results) -> str:
    lines = [f"Ebb autoscaler benchmark — {machine_line(res.machine)}", ""]
    if res.ingest:
        lines += render_ingest(res)
    if res.tick_live or res.tick_pure or res.tick_server:
        rows = []
        for phase, h in res.tick_live.get("phases", {}).items():
            what = "tick" if h.get("slices", 1) <= 1 else "pass (one slice)"
            rows.append([f"live, {phase}: {what}, wall", f"{h['ticks']:.0f}",
                         fmt_opt(h["mean_ms"], ".1f"), "-", "-",
                         fmt_bound_ms(h["max_bound_s"]),
                         fmt_opt(h["decisions_per_tick"], ",.0f")])
            if h.get("cpu_mean_ms") is not None:
                rows.append([f"live, {phase}: {what}, CPU of the loop thread",
                             f"{h['ticks']:.0f}", f"{h['cpu_mean_ms']:.1f}", "-", "-", "-", "-"])
            if h.get("round_cpu_mean_ms") is not None and h.get("slices", 1) > 1:
                rows.append([f"live, {phase}: every revision once (round), CPU",
                             f"{h['rounds']:.0f}", f"{h['round_cpu_mean_ms']:.1f}", "-", "-",
                             fmt_bound_ms(h["round_cpu_max_bound_s"]), "-"])
        for slices, h in res.tick_live.get("whole_run", {}).items():
            rows.append([f"live, {slices} slice(s), whole run (first ticks too)",
                         f"{h['ticks']:.0f}", fmt_opt(h["mean_ms"], ".1f"), "-", "-",
                         fmt_bound_ms(h["max_bound_s"]), "-"])
        if res.tick_pure.get("ms"):
            ms = res.tick_pure["ms"]
            rows.append(["pure MultiScaler.decide × revisions (wall)", str(ms["n"]), "-",
                         f"{ms['median']:.1f}", f"{ms['p95']:.1f}", f"{ms['max']:.1f} ms",
                         fmt_opt(res.tick_pure.get("changed_verdicts_per_tick"), ",.0f")])
            cpu = res.tick_pure.get("cpu_ms")
            if cpu:
                rows.append(["pure, CPU time of the ticking thread", str(cpu["n"]), "-",
                             f"{cpu['median']:.1f}", f"{cpu['p95']:.1f}",
                             f"{cpu['max']:.1f} ms", "-"])
        for phase, h in res.tick_server.get("phases", {}).items():
            for key, kind in (("ms", "wall"), ("cpu_ms", "CPU")):
                t = h[key]
                if t:
                    rows.append([f"AutoscalerServer.tick() in-process, {phase} load ({kind})",
                                 str(t["n"]), "-", f"{t['median']:.1f}", f"{t['p95']:.1f}",
                                 f"{t['max']:.1f} ms",
                                 fmt_opt(h["changed_verdicts_per_tick"], ",.0f")
                                 if key == "ms" else "-"])
        n = (res.tick_live.get("revisions") or res.tick_pure.get("revisions")
             or res.tick_server.get("revisions"))
        lines += [f"Decision tick over {n:,} revisions (ms)", "",
                  markdown_table(("measure", "ticks", "mean", "median", "p95", "max",
                                  "changed verdicts/tick"), rows,
                                 (False, True, True, True, True, True, True)), ""]
        for phase, h in res.tick_live.get("phases", {}).items():
            gc_text = "; ".join(
                f"gen {g}: {v['count']:.0f}×, {v['total_ms']:.0f} ms, max "
                f"{fmt_bound_ms(v['max_bound_s'])}" for g, v in (h.get("gc") or {}).items()
                if v["count"])
            lines.append(f"live, {phase}: {h['stats_per_s']:,.0f} stats/s flowing, "
                         f"autoscaler at {h['autoscaler_cores']:.2f} cores"
                         + (f"; GC {gc_text}" if gc_text else ""))
        if res.tick_pure.get("collector_record_per_s"):
            lines.append(f"pure: Collector.record via MultiScaler.record "
                         f"{res.tick_pure['collector_record_per_s']:,.0f} stats/s "
                         "(no gRPC, no protobuf)")
        lines.append("")
    if res.reaction:
        r = res.reaction
        rows = []
        for key, label in (("first_loaded_stat_s", "first stat carrying the load sent"),
                           ("first_decision_s", "first decision after the step (any)"),
                           ("first_scale_up_s", "first decision scaling up"),
                           ("covering_s", f"first decision with desired ≥ {r['covering_scale']}")):
            t = r.get(key, {})
            rows.append([label, str(t.get("n", 0)),
                         fmt_opt(t.get("median"), ".2f"), fmt_opt(t.get("p95"), ".2f"),
                         fmt_opt(t.get("min"), ".2f"), fmt_opt(t.get("max"), ".2f")])
        lines += [f"Reaction: step 0 → {r['level']:g} concurrent, target {r['target']:g} "
                  "(seconds after the step)", "",
                  markdown_table(("milestone", "trials", "median", "p95", "min", "max"), rows,
                                 (False, True, True, True, True, True)), ""]
    lines += [markdown_table(("target (issue 3)", "measured", "verdict"),
                             [(v.target, v.measured, v.mark) for v in verdicts(res)]), ""]
    lines += res.notes
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscaler",
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--parts", default="ingest,tick,reaction",
                        help="which figures: ingest,tick,reaction (default all)")
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes (2)")
    parser.add_argument("--batches", default="100,1", help="stats per message, e.g. 100,1")
    parser.add_argument("--fleet-streams", type=int, default=500,
                        help="queue-shaped ingest: streams per load process (0 = skip)")
    parser.add_argument("--fleet-clients", type=int, default=2)
    parser.add_argument("--fleet-period", type=float, default=1.0,
                        help="queue-shaped ingest: seconds between one stream's messages (1, as "
                             "a queue; 0.1 = a fleet ten times the streams' arrival rate)")
    parser.add_argument("--scale-streams", type=int, default=10_000,
                        help="the target's fleet: connections in all (10000; 0 = skip)")
    parser.add_argument("--scale-period", type=float, default=0.5,
                        help="the target's fleet: seconds between one connection's stats (0.5)")
    parser.add_argument("--scale-clients", type=int, default=4,
                        help="the target's fleet: generator processes (4)")
    parser.add_argument("--ports", default=",".join(PORTS),
                        help="which autoscaler ports each ingest phase runs on, in order "
                             "(stats,grpc)")
    parser.add_argument("--ingest-duration", type=float, default=10.0,
                        help="measured seconds per ingest phase (10)")
    parser.add_argument("--ingest-warmup", type=float, default=3.0)
    parser.add_argument("--ingest-revisions", type=int, default=1000)
    parser.add_argument("--ingest-instances", type=int, default=20_000)
    parser.add_argument("--tick-revisions", type=int, default=5000)
    parser.add_argument("--tick-slices", default="1,4",
                        help="live tick runs, one per value of --tick-slices (1,4)")
    parser.add_argument("--tick-duration", type=float, default=20.0,
                        help="measured seconds of the live tick (20 = ~10 ticks)")
    parser.add_argument("--pure-ticks", type=int, default=20)
    parser.add_argument("--trials", type=int, default=12, help="reaction trials (12)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the autoscaler to the last CPU and the load to the others")
    parser.add_argument("--quick", action="store_true", help="smoke run: short and small")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    args = parser.parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    bad = [p for p in parts if p not in ("ingest", "tick", "reaction")]
    problems = [f"unknown part {p}" for p in bad]
    try:
        batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        batches, problems = (), [*problems, "batches must be integers"]
    try:
        tick_slices = tuple(int(n) for n in args.tick_slices.split(","))
    except ValueError:
        tick_slices, problems = (), [*problems, "tick-slices must be integers"]
    if any(not 1 <= n <= 100 for n in tick_slices):
        problems.append("tick-slices must be in 1..100")
    ports = tuple(p.strip() for p in args.ports.split(",") if p.strip())
    if not ports or any(p not in PORTS for p in ports) or len(set(ports)) < len(ports):
        problems.append(f"ports must be some of {','.join(PORTS)}, each once")
    s = Settings(parts=parts, ingest_revisions=args.ingest_revisions,
                 ingest_instances=args.ingest_instances, clients=args.clients,
                 batches=batches, ingest_warmup_s=args.ingest_warmup,
                 ingest_duration_s=args.ingest_duration, tick_revisions=args.tick_revisions,
                 tick_slices=tick_slices, fleet_streams=args.fleet_streams,
                 fleet_clients=args.fleet_clients, fleet_period_s=args.fleet_period,
                 scale_streams=args.scale_streams, scale_period_s=args.scale_period,
                 scale_clients=args.scale_clients, ports=ports,
                 tick_duration_s=args.tick_duration, pure_ticks=args.pure_ticks,
                 reaction_trials=args.trials, pin=not args.no_pin, out=args.out,
                 keep=args.keep)
    if args.quick:
        s.ingest_duration_s, s.ingest_warmup_s, s.tick_duration_s = 3.0, 1.0, 6.0
        s.tick_warmup_s, s.pure_ticks, s.reaction_trials = 4.0, 5, 3
        s.scale_streams = min(s.scale_streams, 2000)
    if not 0 <= s.fleet_streams <= MAX_FLEET_STREAMS or not 1 <= s.fleet_clients <= MAX_CLIENTS:
        problems.append(f"fleet-streams must be in 0..{MAX_FLEET_STREAMS}, "
                        f"fleet-clients in 1..{MAX_CLIENTS}")
    if not 0.01 <= s.fleet_period_s <= 60 or not 0.01 <= s.scale_period_s <= 60:
        problems.append("fleet-period and scale-period must be in [0.01, 60] s")
    if (not 0 <= s.scale_streams <= MAX_SCALE_STREAMS or not 1 <= s.scale_clients <= MAX_CLIENTS
            or -(-s.scale_streams // s.scale_clients) > MAX_FLEET_STREAMS):
        problems.append(f"scale-streams must be in 0..{MAX_SCALE_STREAMS}, scale-clients in "
                        f"1..{MAX_CLIENTS}, and at most {MAX_FLEET_STREAMS} streams a client")
    if not 1 <= s.clients <= MAX_CLIENTS:
        problems.append(f"clients must be in 1..{MAX_CLIENTS}")
    if any(not 1 <= b <= 10_000 for b in s.batches):
        problems.append("batches must be in 1..10000")
    for name, value in (("ingest-duration", s.ingest_duration_s),
                        ("ingest-warmup", s.ingest_warmup_s),
                        ("tick-duration", s.tick_duration_s)):
        if not 0 < value <= MAX_DURATION_S:
            problems.append(f"{name} must be in (0, {MAX_DURATION_S:g}] s")
    if not 1 <= s.tick_revisions <= MAX_REVISIONS or not 1 <= s.ingest_revisions <= MAX_REVISIONS:
        problems.append(f"revisions must be in 1..{MAX_REVISIONS}")
    if not 1 <= s.ingest_instances <= MAX_INSTANCES:
        problems.append(f"ingest-instances must be in 1..{MAX_INSTANCES}")
    if not 1 <= s.reaction_trials <= MAX_TRIALS or not 1 <= s.pure_ticks <= 1000:
        problems.append(f"trials must be in 1..{MAX_TRIALS}, pure-ticks in 1..1000")
    if problems:
        parser.error("; ".join(problems))
    return s


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_stream":
        return run_stream(argv[1:])
    if argv and argv[0] == "_fleet":
        return run_fleet(argv[1:])
    if argv and argv[0] == "_h2fleet":
        from bench import statsfleet

        return statsfleet.main(argv[1:])
    s = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ebb-bench-autoscaler-"))
    processes = Processes(work, uuid.uuid4().hex)
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # we fork while a channel is open
    res = Results(machine=procs.machine_info())
    busy0, wall0 = procs.busy_now(), time.monotonic()

    def body() -> None:
        if "ingest" in s.parts:
            run_ingest(s, processes, work, res)
        if "tick" in s.parts:
            run_tick_live(s, processes, work, res)
            run_tick_pure(s, res)
            run_tick_server(s, res)
        if "reaction" in s.parts:
            run_reaction(s, processes, work, res)

    code = procs.run_guarded("bench.autoscaler", processes, body, (StartError, OSError, ValueError))
    res.machine["busy_cores"] = (procs.busy_now() - busy0) / max(1e-9, time.monotonic() - wall0)
    print(render(res))
    if s.out is not None:
        s.out.parent.mkdir(parents=True, exist_ok=True)
        s.out.write_text(json.dumps(asdict(res), indent=1, default=str) + "\n")
        print(f"\nJSON: {s.out}")
    if s.keep or code:
        print(f"bench.autoscaler: logs kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
