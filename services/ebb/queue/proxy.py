"""The queue's hot path: an HTTP/1.1 reverse proxy from clients to one app.

The machinery (parsing, pooling, streaming, flow control, pipelining, timeouts) is
`ebb.common.http1`, shared with the activator. What is the queue's own:
  - the head sent to the app: Host restored from `K-Original-Host`, `X-Forwarded-For`
    extended with this hop, `Forwarded` (RFC 7239) built from the `X-Forwarded-*` headers
    when none came, the routing headers (`Knative-Serving-Namespace`, `-Revision`) dropped;
  - admission: the containerConcurrency breaker (CC slots, 10 x CC waiting, 503 beyond);
  - its probe answer (`K-Network-Probe: queue` -> 200 `queue` when the app is ready);
  - the per-second concurrency stats;
  - observability: request counts and latency in plain ints (`tally`, exported by
    `ebb.queue.metrics`), one request log line (`request_log`), the span attributes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ebb.common.http1 import (
    CLIENT_CLOSED,
    CRLF,
    TIMEOUT_KINDS,
    ClientConnection,
    Exchange,
    Handler,
    Limits,
    UpstreamPool,
    drop_headers,
    forwarded_header,
    forwarded_node,
)
from ebb.common.metrics import RequestTally
from ebb.common.stats import ConcurrencyStats
from ebb.queue.breaker import ADMITTED, QUEUED, Breaker
from ebb.queue.metrics import REJECT_OVERLOAD, REJECT_REASONS

__all__ = ["Proxy", "QueueConnection", "forwarded_header", "forwarded_node"]

PROBE_HEADER_VALUE = b"queue"
# `K-Network-Probe: wait-for-drain` is answered once the drain has ended: the user
# container's preStop hook on Kubernetes (k8s_objects.user_container).
WAIT_DRAIN_HEADER_VALUE = b"wait-for-drain"


class QueueConnection(ClientConnection):
    """A client of the queue: requests go to the app with Host and forwarding set, and
    without the routing pair (`Knative-Serving-Namespace`, `Knative-Serving-Revision`),
    which the parser keeps out of `_parts` and the queue does not send on."""

    __slots__ = ("_fwd_key", "_fwd_lines")

    def __init__(self, proxy: Proxy) -> None:
        super().__init__(proxy)
        # The forwarding lines last built and what they were built from: a connection's
        # requests nearly always carry the same values (behind the activator or a
        # gateway: the same X-Forwarded-* values), so they are built once per
        # connection rather than per request.
        self._fwd_key: tuple | None = None
        self._fwd_lines = b""

    def request_head(self, method: bytes, req_kind: int) -> bytes:
        parts = self._parts
        if self._drop:
            parts = drop_headers(parts, self._drop, 0)
        authority = self._orig_host or self._host or self.proxy.app_authority
        key = (self._xff, self._xfp, self._xfh, self._fwd)
        if key == self._fwd_key:
            forwarding = self._fwd_lines
        else:
            forwarding = self._forwarding()
            self._fwd_key = key
            self._fwd_lines = forwarding
        return b"".join(
            (
                method, b" ", self._url, b" HTTP/1.1\r\nHost: ", authority, CRLF,
                *parts,
                forwarding, self.framing(req_kind), CRLF,
            )
        )  # fmt: skip

    def _forwarding(self) -> bytes:
        """The forwarding lines for the app, as Knative's queue-proxy sends them:
        X-Forwarded-For extended with the client's address (started with it if none
        came); X-Forwarded-Proto as it came, if it came; Forwarded as it came, else built
        from the X-Forwarded-* headers as they came (`forwarded_header`), if any did."""
        xff = self._xff
        lines = b"X-Forwarded-For: " + (self.peer if xff is None else xff + b", " + self.peer) + CRLF
        xfp = self._xfp
        if xfp is not None:
            lines += b"X-Forwarded-Proto: " + xfp + CRLF
        fwd = self._fwd
        if fwd is None or not fwd.strip():
            fwd = forwarded_header(xff, self._xfh, xfp)
        if fwd:
            lines += b"Forwarded: " + fwd + CRLF
        return lines


class Proxy(Handler):
    """The queue's shared state: the app's address, pool, breaker, stats, readiness, drain."""

    connection_class = QueueConnection
    probe_value = PROBE_HEADER_VALUE
    wait_drain_value = WAIT_DRAIN_HEADER_VALUE

    def __init__(
        self,
        *,
        app_port: int,
        app_host: str = "127.0.0.1",
        stats: ConcurrencyStats | None = None,
        container_concurrency: int = 0,
        queue_depth: int | None = None,
        timeout_s: float = 300.0,
        response_start_timeout_s: float = 0.0,
        idle_timeout_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        request_log=None,
        span_attributes: dict[str, str] | None = None,
    ) -> None:
        super().__init__(clock)
        self.app_authority = f"{app_host}:{app_port}".encode()
        self.pool = UpstreamPool(self.loop, app_host, app_port, name=b"the app")
        self.stats = stats if stats is not None else ConcurrencyStats(clock())
        self.breaker: Breaker[Exchange] | None = None
        if container_concurrency >= 1:
            depth = 10 * container_concurrency if queue_depth is None else queue_depth
            self.breaker = Breaker(container_concurrency, depth)
            self.overload_body = (
                b"overload: queue full (container-concurrency=%d, queue-depth=%d)\n"
                % (container_concurrency, depth)
            )
        self.limits = Limits(timeout_s, response_start_timeout_s, idle_timeout_s)
        self.ready = False
        self.tally = RequestTally(REJECT_REASONS, TIMEOUT_KINDS)
        self.request_log = request_log  # ebb.queue.requestlog.RequestLog or None (off)
        self.span_attributes = span_attributes or {}  # e.g. ebb.revision, ebb.instance

    @property
    def healthy(self) -> bool:
        """What the `K-Network-Probe: queue` answer says: app ready and not draining."""
        return self.ready and not self.draining

    def probe_answer(self) -> tuple[int, bytes]:
        return (200, PROBE_HEADER_VALUE) if self.healthy else (503, b"not ready\n")

    def admit(self, ex: Exchange) -> None:
        ex.pool = self.pool
        ex.limits = self.limits
        now = ex.t_begin = self.clock()
        self.stats.request_in(now, ex.proxied)
        ex.arm_timer()
        breaker = self.breaker
        if breaker is not None:
            decision = breaker.acquire(ex)
            if decision == QUEUED:
                ex.waiting = True
                return
            if decision != ADMITTED:
                self.tally.reject(REJECT_OVERLOAD)
                ex.respond_local(503, self.overload_body)
                return
            ex.slot = True
        ex.go()

    def release(self, ex: Exchange) -> None:
        if ex.waiting:
            ex.waiting = False
            self.breaker.abandon(ex)
        elif ex.slot:
            ex.slot = None
            nxt = self.breaker.release()
            if nxt is not None:  # the slot passes to the longest waiter
                nxt.waiting = False
                nxt.slot = True
                self.loop.call_soon(nxt.go)
        now = ex.t_end = self.clock()
        self.stats.request_out(now, ex.proxied)
        self.tally.record(ex.status or CLIENT_CLOSED, ex.tag or b"", now - ex.t_begin)
        if self.request_log is not None:
            self.request_log.record(ex)

    def timed_out(self, ex: Exchange, kind: str) -> None:
        self.tally.timed_out(kind)

    def span_started(self, ex: Exchange) -> None:
        super().span_started(ex)
        ex.span.set_attributes(self.span_attributes)

    def close_pools(self) -> None:
        self.pool.close_all()
