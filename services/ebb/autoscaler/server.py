"""The autoscaler's gRPC edge: StatsService, ScalingService, the tick loop and the watchers.

All decisions happen in `MultiScaler` (pure); this module converts protos to values and
back, runs the 2 s tick, pokes a revision at zero when load arrives, and fans verdicts
out to every `WatchDecisions` stream. `close()` ends the tick loop and every open stream
cleanly, so the server can stop without waiting out its grace period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import grpc
from prometheus_client import CollectorRegistry

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.api.autoscaler.v1 import autoscaler_pb2_grpc as pb_grpc
from ebb.autoscaler.collector import UNDECODABLE, StatValue
from ebb.autoscaler.metrics import AutoscalerMetrics
from ebb.autoscaler.multiscaler import MultiScaler, RevisionSpec, Verdict
from ebb.autoscaler.settings import RPS, AutoscalerSettings, RevisionScalingConfig
from ebb.common.metrics import new_registry
from ebb.common.server import ServiceCore

log = logging.getLogger("ebb.autoscaler")

STATS_SERVICE = pb.DESCRIPTOR.services_by_name["StatsService"].full_name
SCALING_SERVICE = pb.DESCRIPTOR.services_by_name["ScalingService"].full_name

INTERNAL_ERROR = "internal_error"  # a stat whose handling raised (a bug); counted as dropped
_NANOS_PER_SECOND = 1_000_000_000


class _Undecodable:
    """What `decode_stats_request` returns for bytes that are not a StreamStatsRequest."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDECODABLE_MESSAGE"


UNDECODABLE_MESSAGE = _Undecodable()


def decode_stats_request(data: bytes) -> pb.StreamStatsRequest | _Undecodable:
    """StreamStats' request deserializer: the message, or UNDECODABLE_MESSAGE.

    gRPC ends the whole call when a deserializer raises, so one corrupt message would
    cost a reporter its stream (and every stat queued behind it) without being counted.
    gRPC frames each message by length, so the next one is read intact: the handler
    counts this one as dropped and reads on.
    """
    try:
        return pb.StreamStatsRequest.FromString(data)
    except Exception:  # DecodeError, or anything else the parser may raise on garbage
        return UNDECODABLE_MESSAGE


def add_stats_servicer(servicer: pb_grpc.StatsServiceServicer, server: grpc.aio.Server) -> None:
    """`add_StatsServiceServicer_to_server`, with the forgiving deserializer."""
    handlers = {
        "StreamStats": grpc.stream_unary_rpc_method_handler(
            servicer.StreamStats,
            request_deserializer=decode_stats_request,
            response_serializer=pb.StreamStatsResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(STATS_SERVICE, handlers),)
    )
    server.add_registered_method_handlers(STATS_SERVICE, handlers)


def stat_from_proto(stat: pb.Stat) -> StatValue:
    """The proto as a plain value; validation is the collector's job.

    Positional, and the revision read once: this runs for every stat received, and
    keyword arguments cost a third more."""
    revision = stat.revision
    return StatValue(
        stat.instance,
        revision.namespace,
        revision.name,
        stat.average_concurrency,
        stat.average_proxied_concurrency,
        stat.request_count,
        stat.proxied_request_count,
        stat.process_uptime_seconds,
        stat.period_seconds,
    )


def spec_from_proto(spec: pb.AutoscalingSpec) -> RevisionSpec:
    return RevisionSpec(
        namespace=spec.revision.namespace,
        name=spec.revision.name,
        annotations=dict(spec.annotations),
        container_concurrency=int(spec.container_concurrency),
        reachable=bool(spec.reachable),
        ready_instances=max(0, int(spec.ready_instances)),
    )


def decision_to_proto(
    verdict: Verdict, decided_at_s: float, config: RevisionScalingConfig | None
) -> pb.ScaleDecision:
    """The verdict as streamed; bounds from the revision's config (when registered).

    The bounds are min/max/initial scale as resolved (annotation, else cluster setting),
    so the controller, which does not read the cluster settings, clamps with the same
    values. One of these is built per changed verdict in the tick, so nested messages are
    filled in place: building them as messages and passing them as arguments (which copies
    them), and `Timestamp.FromNanoseconds` (pure Python), made it twice as costly.
    """
    decision = pb.ScaleDecision(
        desired_scale=verdict.desired,
        excess_burst_capacity=verdict.ebc,
        panic=verdict.panic,
        stable_value=verdict.stable_value,
        panic_value=verdict.panic_value,
        metric=pb.METRIC_RPS if verdict.metric == RPS else pb.METRIC_CONCURRENCY,
        requests_per_second=verdict.rps,
    )
    revision = decision.revision
    revision.namespace, revision.name = verdict.key
    stamp = decision.decided_at
    stamp.seconds, stamp.nanos = divmod(int(decided_at_s * 1e9), _NANOS_PER_SECOND)
    if config is not None:
        bounds = decision.bounds
        bounds.min_scale = config.min_scale
        bounds.max_scale = config.max_scale
        bounds.initial_scale = config.initial_scale
    return decision


class _Watcher:
    """One WatchDecisions stream: pending verdicts by revision (latest wins) and a wake-up."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.pending: dict[tuple[str, str], pb.ScaleDecision] = {}
        self.wake = asyncio.Event()

    def offer(self, key: tuple[str, str], decision: pb.ScaleDecision) -> None:
        if self.namespace and key[0] != self.namespace:
            return
        self.pending[key] = decision
        self.wake.set()


class AutoscalerServer:
    """Owns the MultiScaler and the asyncio side: tick loop, pokes, watcher fan-out.

    `clock` is a monotonic seconds clock (the running loop's time by default) and is the
    only time the decisions see; `wall_clock` only stamps `decided_at`. Metrics live on
    `registry` (a fresh one per server unless given), to be served by the process.
    """

    def __init__(
        self,
        settings: AutoscalerSettings,
        *,
        tick_interval_s: float = 2.0,
        tick_slices: int = 1,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if tick_slices < 1:
            raise ValueError(f"tick_slices = {tick_slices}, must be at least 1")
        self.scaler = MultiScaler(settings)
        self.tick_interval_s = tick_interval_s
        self.tick_slices = tick_slices
        # Each revision belongs to one slice (the least full when it was registered); the
        # loop decides one slice every tick_interval_s / tick_slices, so each revision is
        # still decided once per tick_interval_s, at its own phase, as Knative's
        # per-revision tickers do, and no single pass holds the event loop for all of them.
        self._slices: list[dict[tuple[str, str], None]] = [{} for _ in range(tick_slices)]
        self._slice_of: dict[tuple[str, str], int] = {}
        self._round_cpu_s = 0.0
        self._clock = clock
        self._wall_clock = wall_clock
        self._watchers: set[_Watcher] = set()
        self._decided_at: dict[tuple[str, str], float] = {}
        self._warned: dict[tuple[str, str], tuple[str, ...]] = {}
        self._logged: dict[tuple[str, str], tuple[int, bool]] = {}  # (desired, panic) last logged
        self._closed = asyncio.Event()
        self._tick_task: asyncio.Task[None] | None = None
        self.counters: Counter[str] = Counter()  # ticks, tick_errors, pokes, decisions, ...
        self._ready: dict[tuple[str, str], int] = {}  # ready instances as last registered
        self.registry = registry if registry is not None else new_registry()
        self.metrics = AutoscalerMetrics(self, self.registry)

    # -- lifecycle ---------------------------------------------------------------------

    def add_to(self, core: ServiceCore) -> None:
        """Register both services on a ServiceCore (for health and reflection by name)."""
        core.add(lambda s: add_stats_servicer(StatsServicer(self), s), STATS_SERVICE)
        core.add(
            lambda s: pb_grpc.add_ScalingServiceServicer_to_server(ScalingServicer(self), s),
            SCALING_SERVICE,
        )

    def now(self) -> float:
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        return self._clock()

    async def start(self) -> None:
        """Start the tick loop (idempotent)."""
        if self._tick_task is None:
            self.now()  # bind the loop clock while we are inside the loop
            self._tick_task = asyncio.ensure_future(self._tick_loop())

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def close(self) -> None:
        """Stop ticking and end every watch and stats stream; idempotent."""
        self._closed.set()
        for watcher in list(self._watchers):
            watcher.wake.set()
        if self._tick_task is not None:
            task, self._tick_task = self._tick_task, None
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- decisions ---------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        """One slice every tick_interval_s / tick_slices, on a fixed schedule: a slice's
        revisions are decided every tick_interval_s whatever the passes in between took."""
        loop = asyncio.get_running_loop()
        pause_s = self.tick_interval_s / self.tick_slices
        due = loop.time() + pause_s
        index = 0
        while not self._closed.is_set():
            try:
                await asyncio.wait_for(self._closed.wait(), timeout=max(0.0, due - loop.time()))
            except TimeoutError:
                pass
            if self._closed.is_set():
                return
            due += pause_s
            if due < loop.time() - self.tick_interval_s:
                due = loop.time() + pause_s  # far behind (a suspended process): start afresh
            try:
                self.tick_slice(index)  # with one slice, every revision: the same as tick()
            except Exception:  # the loop never dies of one bad step
                self.counters["tick_errors"] += 1
                log.exception("autoscaler tick failed")
            index = (index + 1) % self.tick_slices

    def tick(self) -> int:
        """Decide for every registered revision now; returns how many verdicts changed.

        Every verdict of one tick is stamped with the same `decided_at`: they are decided
        at one instant of the decision clock too.
        """
        changed, cpu_s = self._tick_keys(self.scaler.keys())
        self.metrics.observe_round(cpu_s)
        self._round_cpu_s = 0.0
        return changed

    def tick_slice(self, index: int) -> int:
        """Decide for the revisions of slice `index` (0 .. tick_slices - 1) now; returns how
        many verdicts changed. Slices 0 .. tick_slices - 1 in turn decide every revision
        once; the CPU of such a round is recorded when its last slice ends."""
        changed, cpu_s = self._tick_keys(list(self._slices[index]))
        self._round_cpu_s += cpu_s
        if index == self.tick_slices - 1:
            self.metrics.observe_round(self._round_cpu_s)
            self._round_cpu_s = 0.0
        return changed

    def _tick_keys(self, keys: list[tuple[str, str]]) -> tuple[int, float]:
        """Decide for `keys`: (verdicts changed, CPU seconds the pass took)."""
        self.counters["ticks"] += 1
        # Both measure the pass; decisions see only self.now(). Wall time above the thread's
        # CPU time is time the loop thread waited for the GIL or a CPU.
        started, started_cpu = time.perf_counter(), time.thread_time()
        now, decided_at = self.now(), self._wall_clock()
        changed = 0
        decide = self._decide
        for key in keys:
            changed += decide(key, now, decided_at)
        cpu_s = time.thread_time() - started_cpu
        self.metrics.observe_tick(time.perf_counter() - started, cpu_s)
        return changed, cpu_s

    def _decide(self, key: tuple[str, str], now: float, decided_at: float) -> int:
        try:
            verdict, changed = self.scaler.decide(key, now)
        except Exception:
            self.counters["decide_errors"] += 1
            log.exception("decision failed", extra={"revision": "/".join(key)})
            return 0
        if verdict is None:
            return 0
        self.counters["decisions"] += 1
        self._decided_at[key] = decided_at
        if changed:
            self._log_decision(verdict)
            self._publish(verdict, decided_at)
            return 1
        return 0

    def _to_proto(self, verdict: Verdict, decided_at: float) -> pb.ScaleDecision | None:
        """The verdict as streamed, or None (logged and counted) when it cannot be built.

        The decider keeps every number within the proto's types; should one still not
        fit, only this revision's verdict is lost: the pass goes on for the others and
        the watchers' snapshots leave it out.
        """
        try:
            return decision_to_proto(verdict, decided_at, self.scaler.config(verdict.key))
        except Exception:
            self.counters["publish_errors"] += 1
            log.exception("cannot publish decision", extra={"revision": "/".join(verdict.key)})
            return None

    def _log_decision(self, verdict: Verdict) -> None:
        """Log a verdict whose desired scale or panic mode moved.

        A change of EBC alone is streamed to the watchers but not logged: under real load
        EBC moves with the panic average on most ticks, and a JSON line for each of them
        cost more than the decisions themselves.
        """
        headline = (verdict.desired, verdict.panic)
        if self._logged.get(verdict.key) == headline:
            return
        self._logged[verdict.key] = headline
        log.info(
            "scale decision",
            extra={
                "revision": "/".join(verdict.key),
                "desired": verdict.desired,
                "raw_desired": verdict.raw_desired,
                "ebc": verdict.ebc,
                "panic": verdict.panic,
                "stable": verdict.stable_value,
                "panic_value": verdict.panic_value,
            },
        )

    def _publish(self, verdict: Verdict, decided_at: float) -> None:
        if not self._watchers:
            return  # nobody to tell: the proto would be built for nothing
        decision = self._to_proto(verdict, decided_at)
        if decision is None:
            return
        for watcher in list(self._watchers):
            watcher.offer(verdict.key, decision)

    def take_stats(self, stats) -> tuple[int, int]:
        """Record a batch of proto stats; returns (accepted, dropped). Never raises."""
        accepted = dropped = 0
        now = self.now()
        record = self.scaler.record
        pokes: list[tuple[str, str]] = []
        for stat in stats:
            try:
                value = stat_from_proto(stat)
                reason, poke = record(now, value)
            except Exception:
                log.exception("stat handling failed")
                self.scaler.collector.dropped[INTERNAL_ERROR] += 1
                dropped += 1
                continue
            if reason is None:
                accepted += 1
                if poke and value.revision not in pokes:
                    pokes.append(value.revision)
            else:
                dropped += 1
                log.debug("stat dropped", extra={"reason": reason, "instance": value.instance})
        for key in pokes:
            # Load for a revision at zero: decide now rather than at the next tick.
            self.counters["pokes"] += 1
            self._decide(key, now, self._wall_clock())
        return accepted, dropped

    def drop_undecodable(self) -> None:
        """Count a stream message that did not decode as a StreamStatsRequest."""
        self.scaler.collector.dropped[UNDECODABLE] += 1

    def register(self, spec: RevisionSpec) -> tuple[str, ...]:
        warnings, verdict = self.scaler.register(spec, self.now())
        self._ready[spec.key] = spec.ready_instances
        if spec.key not in self._slice_of:
            index = min(range(self.tick_slices), key=lambda i: len(self._slices[i]))
            self._slices[index][spec.key] = None
            self._slice_of[spec.key] = index
        # The controller re-registers on every change of ready instances: warn once per change.
        if warnings and self._warned.get(spec.key) != warnings:
            log.warning(
                "invalid autoscaling annotations",
                extra={"revision": "/".join(spec.key), "warnings": warnings},
            )
        self._warned[spec.key] = warnings
        if verdict is not None:
            decided_at = self._decided_at[spec.key] = self._wall_clock()
            self._publish(verdict, decided_at)
        return warnings

    def unregister(self, key: tuple[str, str]) -> None:
        self.scaler.unregister(key)
        self._ready.pop(key, None)
        index = self._slice_of.pop(key, None)
        if index is not None:
            self._slices[index].pop(key, None)
        self._decided_at.pop(key, None)
        self._warned.pop(key, None)
        self._logged.pop(key, None)

    def ready_instances(self) -> dict[tuple[str, str], int]:
        """Ready instances by revision, as the controller last registered them (a copy)."""
        return dict(self._ready)

    def snapshot(self, namespace: str) -> list[pb.ScaleDecision]:
        now = self._wall_clock()
        decisions = []
        for verdict in self.scaler.latest(namespace):
            decision = self._to_proto(verdict, self._decided_at.get(verdict.key, now))
            if decision is not None:
                decisions.append(decision)
        return decisions

    # -- watchers ----------------------------------------------------------------------

    async def watch(self, namespace: str) -> AsyncIterator[pb.WatchDecisionsResponse]:
        """First the latest verdict of every revision, then each new one, until close()."""
        watcher = _Watcher(namespace)
        self._watchers.add(watcher)
        try:
            yield pb.WatchDecisionsResponse(decisions=self.snapshot(namespace))
            while not self._closed.is_set():
                await watcher.wake.wait()
                watcher.wake.clear()
                if self._closed.is_set():
                    return
                batch, watcher.pending = list(watcher.pending.values()), {}
                if batch:
                    yield pb.WatchDecisionsResponse(decisions=batch)
        finally:
            self._watchers.discard(watcher)

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)


class StatsTally:
    """One StreamStats call's totals, whichever transport carries it (grpcio's servicer
    below, or the HTTP/2 stats port in `statsport`)."""

    __slots__ = ("_owner", "_peer", "accepted", "dropped", "undecodable")

    def __init__(self, owner: AutoscalerServer, peer: Callable[[], str]) -> None:
        self._owner = owner
        self._peer = peer  # called only to log the first undecodable message
        self.accepted = self.dropped = self.undecodable = 0

    def take(self, request: pb.StreamStatsRequest | _Undecodable) -> None:
        """Record one decoded message (or count one that did not decode)."""
        if request is UNDECODABLE_MESSAGE:
            self._owner.drop_undecodable()
            if self.undecodable == 0:  # once per stream: a broken reporter repeats every second
                log.warning("undecodable stats message dropped", extra={"peer": self._peer()})
            self.dropped += 1
            self.undecodable += 1
            return
        accepted, dropped = self._owner.take_stats(request.stats)
        self.accepted += accepted
        self.dropped += dropped

    def response(self) -> pb.StreamStatsResponse:
        return pb.StreamStatsResponse(accepted=self.accepted, dropped=self.dropped)


class StatsServicer(pb_grpc.StatsServiceServicer):
    def __init__(self, owner: AutoscalerServer) -> None:
        self._owner = owner

    async def StreamStats(self, request_iterator, context):
        """Take every message until the client ends the stream or the server closes.

        A message that did not decode (see `decode_stats_request`) is dropped and counted
        as `undecodable`, and the stream reads on.

        A reader task per stream runs a plain `async for`, and the handler waits once for
        either that task or close(), answering with the totals so far either way. Racing
        every single read against close() instead (a task and an `asyncio.wait` per
        message) cost about a third of the CPU of a one-stat message.
        """
        tally = StatsTally(self._owner, context.peer)
        reader = asyncio.ensure_future(self._read(request_iterator, tally))
        closed = asyncio.ensure_future(self._owner.wait_closed())
        try:
            await asyncio.wait({reader, closed}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                reader.result()  # a failed read ends the call with its error
        finally:
            closed.cancel()
            reader.cancel()
        return tally.response()

    @staticmethod
    async def _read(request_iterator, tally: StatsTally) -> None:
        take = tally.take
        async for request in request_iterator:
            take(request)


class ScalingServicer(pb_grpc.ScalingServiceServicer):
    def __init__(self, owner: AutoscalerServer) -> None:
        self._owner = owner

    async def RegisterRevision(self, request, context):
        spec = spec_from_proto(request.spec)
        if not spec.namespace or not spec.name:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "spec.revision: namespace and name are required"
            )
        warnings = list(self._owner.register(spec))
        if request.spec.ready_instances < 0:
            warnings.append(
                f"spec.ready_instances: expected 0 <= {request.spec.ready_instances} (0 is used)"
            )
        return pb.RegisterRevisionResponse(warnings=warnings)

    async def UnregisterRevision(self, request, context):
        self._owner.unregister((request.revision.namespace, request.revision.name))
        return pb.UnregisterRevisionResponse()

    async def WatchDecisions(self, request, context):
        async for response in self._owner.watch(request.namespace):
            yield response
