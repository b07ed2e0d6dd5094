"""The queue's stats stream against a small in-process fake of the autoscaler's StatsService."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import helpers
import pytest
from queue_helpers import REVISION, free_port, run_app, run_queue

from ebb.api.autoscaler.v1 import autoscaler_pb2, autoscaler_pb2_grpc
from ebb.queue.reporter import Reporter
from ebb.queue.stats import ConcurrencyStats

GUARD_S = 20.0  # hang guard, not a performance threshold


class FakeStatsService(autoscaler_pb2_grpc.StatsServiceServicer):
    """Records every Stat it receives and how many streams were opened."""

    def __init__(self) -> None:
        self.stats: list[autoscaler_pb2.Stat] = []
        self.streams = 0

    async def StreamStats(self, request_iterator, context):  # noqa: N802 - gRPC's naming
        self.streams += 1
        count = 0
        async for request in request_iterator:
            self.stats.extend(request.stats)
            count += len(request.stats)
        return autoscaler_pb2.StreamStatsResponse(accepted=count)


@contextlib.asynccontextmanager
async def fake_autoscaler(port: int = 0):
    fake = FakeStatsService()
    server = grpc.aio.server()
    autoscaler_pb2_grpc.add_StatsServiceServicer_to_server(fake, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    assert bound, f"cannot bind 127.0.0.1:{port}"
    await server.start()
    try:
        yield fake, bound, server
    finally:
        await server.stop(0)


async def until(condition, what: str) -> None:
    """Poll a condition of the fake or the reporter; fail after GUARD_S (a hang guard)."""
    await helpers.until(condition, what, GUARD_S)


@contextlib.asynccontextmanager
async def running(reporter: Reporter):
    reporter.start()
    try:
        yield reporter
    finally:
        await reporter.stop(flush_timeout_s=0.5)


def make_reporter(port: int, stats: ConcurrencyStats, **kwargs) -> Reporter:
    return Reporter(
        f"127.0.0.1:{port}",
        instance="instance-1",
        namespace="default",
        revision=REVISION,
        snapshot=stats.report,
        started_at=time.monotonic(),
        **{"period_s": 0.05, "initial_backoff_s": 0.02, "max_backoff_s": 0.1, **kwargs},
    )


async def test_stats_arrive_each_period_with_their_figures():
    async with fake_autoscaler() as (fake, port, _):
        now = time.monotonic()
        stats = ConcurrencyStats(now)
        stats.request_in(now)
        stats.request_in(now, proxied=True)
        async with running(make_reporter(port, stats)) as reporter:
            await until(lambda: len(fake.stats) >= 3, "three stats")
            stats.request_out(time.monotonic())
            stats.request_out(time.monotonic(), proxied=True)
        assert fake.streams == 1  # one long-lived stream
        assert reporter.connects == 1
        first = fake.stats[0]
        assert first.instance == "instance-1"
        assert (first.revision.namespace, first.revision.name) == ("default", REVISION)
        assert first.average_concurrency == pytest.approx(2.0)
        assert first.average_proxied_concurrency == pytest.approx(1.0)
        assert (first.request_count, first.proxied_request_count) == (2, 1)
        assert first.period_seconds > 0
        assert first.process_uptime_seconds > 0
        assert first.timestamp.seconds > 0
        assert sum(s.request_count for s in fake.stats) == 2
        uptimes = [s.process_uptime_seconds for s in fake.stats]
        assert uptimes == sorted(uptimes)


async def test_reconnects_after_the_autoscaler_restarts():
    stats = ConcurrencyStats(time.monotonic())
    port = free_port()
    reporter = make_reporter(port, stats)
    async with running(reporter):
        async with fake_autoscaler(port) as (first, _, _):
            await until(lambda: len(first.stats) >= 2, "stats at the first autoscaler")
        # down: the reporter keeps ticking and retrying; nothing blocks
        await until(lambda: reporter.connects >= 3, "reconnection attempts while down")
        async with fake_autoscaler(port) as (second, _, _):
            stats.request_in(time.monotonic())
            await until(lambda: any(s.request_count for s in second.stats), "stats at the restarted autoscaler")
            stats.request_out(time.monotonic())
        assert second.streams >= 1


async def test_pending_stats_are_bounded_and_the_oldest_dropped():
    stats = ConcurrencyStats(time.monotonic())
    port = free_port()  # nobody listens yet
    reporter = make_reporter(port, stats, period_s=0.01, max_pending=3, max_backoff_s=0.05)
    async with running(reporter):
        await until(lambda: reporter.dropped >= 5, "stats dropped while the autoscaler is away")
        assert len(reporter._pending) <= 3
        async with fake_autoscaler(port) as (fake, _, _):
            await until(lambda: len(fake.stats) >= 5, "stats once the autoscaler is up")
    uptimes = [s.process_uptime_seconds for s in fake.stats]
    assert uptimes == sorted(uptimes)
    # what survived the outage is its most recent stats, not its first
    assert uptimes[0] > 5 * 0.01


async def test_queue_process_streams_its_request_counts(tmp_path):
    async with fake_autoscaler() as (fake, port, _):
        with run_app() as app:
            manager = run_queue(tmp_path, app.port, "--autoscaler", f"127.0.0.1:{port}")
            queue = await asyncio.to_thread(manager.__enter__)
            try:
                for headers in ({}, {}, {}, {"K-Proxy-Request": "activator"}):
                    status, _, _ = await asyncio.to_thread(queue.request, "GET", "/", headers=headers)
                    assert status == 200
                # probes are not requests
                assert (await asyncio.to_thread(queue.probe))[0] == 200
            finally:
                # stopping flushes the last, partial period
                await asyncio.to_thread(manager.__exit__, None, None, None)
            assert queue.proc.returncode == 0
        assert fake.streams == 1
        assert {(s.instance, s.revision.namespace, s.revision.name) for s in fake.stats} == {
            ("test-instance", "default", REVISION)
        }
        assert sum(s.request_count for s in fake.stats) == 4
        assert sum(s.proxied_request_count for s in fake.stats) == 1
