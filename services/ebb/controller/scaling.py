"""Client of the autoscaler's ScalingService: registers revisions, follows decisions.

Both directions survive restarts: the decision stream reconnects with backoff, and after a
reconnect every known revision is registered again (a restarted autoscaler knows nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.api.autoscaler.v1 import autoscaler_pb2_grpc as pb_grpc
from ebb.controller.reconcile import Decision, ScaleBounds
from ebb.controller.runtime import RevisionKey

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0


@dataclass(frozen=True)
class ScalingSpec:
    """What the autoscaler needs of a revision (mirrors autoscaler.v1.AutoscalingSpec)."""

    annotations: tuple[tuple[str, str], ...]
    container_concurrency: int
    reachable: bool
    ready_instances: int


def decision_from_proto(d: pb.ScaleDecision) -> Decision:
    """The controller's copy of a decision; bounds only when the autoscaler sent them."""
    bounds = None
    if d.HasField("bounds"):
        bounds = ScaleBounds(
            min_scale=d.bounds.min_scale,
            max_scale=d.bounds.max_scale,
            initial_scale=d.bounds.initial_scale,
        )
    return Decision(
        desired=d.desired_scale,
        excess_burst_capacity=d.excess_burst_capacity,
        panic=d.panic,
        stable_value=d.stable_value,
        panic_value=d.panic_value,
        requests_per_second=d.requests_per_second,
        bounds=bounds,
    )


class ScalingClient:
    """Keeps the autoscaler's registrations in sync and the latest decision per revision."""

    def __init__(self, address: str, on_change: Callable[[], None], interceptors=()) -> None:
        self._address = address
        self._on_change = on_change
        self.decisions: dict[RevisionKey, Decision] = {}
        self._specs: dict[RevisionKey, ScalingSpec] = {}
        self._pending: dict[RevisionKey, ScalingSpec | None] = {}
        self._wake = asyncio.Event()
        self._channel = grpc.aio.insecure_channel(address, interceptors=list(interceptors) or None)
        self._stub = pb_grpc.ScalingServiceStub(self._channel)
        self._tasks: list[asyncio.Task] = []
        self.connected = False

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._watch()), asyncio.ensure_future(self._send())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._channel.close()

    def register(self, key: RevisionKey, spec: ScalingSpec) -> None:
        """Idempotent: only a changed spec is sent."""
        if self._specs.get(key) != spec:
            self._specs[key] = spec
            self._pending[key] = spec
            self._wake.set()

    def unregister(self, key: RevisionKey) -> None:
        if key in self._specs:
            del self._specs[key]
            self.decisions.pop(key, None)
            self._pending[key] = None
            self._wake.set()

    def known(self) -> set[RevisionKey]:
        return set(self._specs)

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                key, spec = next(iter(self._pending.items()))
                try:
                    await self._call(key, spec)
                except grpc.aio.AioRpcError as exc:
                    log.debug("autoscaler registration failed", extra={"revision": str(key), "code": str(exc.code())})
                    await asyncio.sleep(BACKOFF_MAX_S / 5)
                    continue  # retried: the entry stays pending
                if self._pending.get(key) == spec:
                    del self._pending[key]

    async def _call(self, key: RevisionKey, spec: ScalingSpec | None) -> None:
        rev = pb.RevisionKey(namespace=key.namespace, name=key.name)
        if spec is None:
            await self._stub.UnregisterRevision(pb.UnregisterRevisionRequest(revision=rev), timeout=5)
            return
        res = await self._stub.RegisterRevision(
            pb.RegisterRevisionRequest(
                spec=pb.AutoscalingSpec(
                    revision=rev,
                    annotations=dict(spec.annotations),
                    container_concurrency=spec.container_concurrency,
                    reachable=spec.reachable,
                    ready_instances=spec.ready_instances,
                )
            ),
            timeout=5,
        )
        for warning in res.warnings:
            log.warning("autoscaler warning", extra={"revision": str(key), "warning": warning})

    async def _watch(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            try:
                stream = self._stub.WatchDecisions(pb.WatchDecisionsRequest())
                first = True
                async for msg in stream:
                    if first:
                        # (Re)connected: the autoscaler may have restarted, so register again.
                        first, backoff = False, BACKOFF_MIN_S
                        self.connected = True
                        self._pending.update(self._specs)
                        self._wake.set()
                    for d in msg.decisions:
                        key = RevisionKey(d.revision.namespace, d.revision.name)
                        if key not in self._specs:
                            continue
                        self.decisions[key] = decision_from_proto(d)
                    self._on_change()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.debug("decision stream broken", extra={"code": str(exc.code())})
            self.connected = False
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)
