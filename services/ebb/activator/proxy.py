"""The activator's data plane: routes each request to its revision, holds it while the
revision has no free instance, and forwards it the moment one can take it.

The HTTP/1.1 machinery (parsing, pooling, streaming, flow control, timeouts) is
`ebb.common.http1`, shared with the queue. What is the activator's own:
  - the route: the gateway names the revision in `Knative-Serving-Namespace` and
    `Knative-Serving-Revision`; an unknown one is answered 404;
  - the head sent on: Host kept, the revision's `Knative-Serving-Namespace` and
    `Knative-Serving-Revision` sent on (the queue drops them before the app),
    `X-Forwarded-For` extended, `K-Proxy-Request: activator` added (so the queue counts the
    request as proxied);
  - admission: the revision's `Throttler` (a slot on an instance picked by the LB policy,
    or a place in the revision's line; 503 when the line is full) and the poke;
  - instances: learned from the controller (`apply`), probed by the activator itself
    while not ready, each with its own keep-alive pool;
  - a failed connect (nothing sent) is tried once more on another instance, if one is
    free; anything later is a 502;
  - observability: per revision request counts, latency, refusals, timeouts and holds
    in plain ints (exported by `ebb.activator.metrics`), and span attributes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence

from ebb.activator.addresses import AddressBook
from ebb.activator.endpoints import RevisionKey, RevisionSpec
from ebb.activator.metrics import (
    REJECT_NOT_SYNCED,
    REJECT_OVERLOAD,
    REJECT_REMOVED,
    REJECT_UNKNOWN,
    REVISION_REASONS,
    UNROUTED_REASONS,
    Holds,
)
from ebb.activator.probe import PERIOD_S as PROBE_PERIOD_S
from ebb.activator.probe import TIMEOUT_S as PROBE_TIMEOUT_S
from ebb.activator.probe import probe_delay, probe_queue
from ebb.activator.throttler import Instance, QueueFull, Throttler, assign
from ebb.activator.traffic import RevisionLoad, Traffic
from ebb.common import http1
from ebb.common.http1 import CLIENT_CLOSED, CRLF, TIMEOUT_KINDS, Exchange, drop_headers
from ebb.common.metrics import RequestTally
from ebb.common.settings import UNIX_ADDRESS_PREFIX

log = logging.getLogger(__name__)

PROBE_HEADER_VALUE = b"activator"
DEFAULT_QUEUE_DEPTH = 10_000  # Knative's activator: requests waiting per revision
MAX_TRIES = 2  # instances tried per request when connecting fails (nothing sent yet)

_PROXY_REQUEST = b"K-Proxy-Request: activator\r\n"
_DROP_PROXY_REQUEST = frozenset((b"k-proxy-request",))
_NO_ROUTE = (
    b"not found: no revision named; the request lacks the Knative-Serving-Namespace and "
    b"Knative-Serving-Revision headers\n"
)
_NOT_SYNCED = b"unavailable: the activator has not heard from the controller yet\n"

Probe = Callable[[str, int, float], Awaitable[bool]]


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); `unix:/abs/path` (a queue on this
    machine, listening on a unix socket) -> (path, UNIX_PORT); ValueError otherwise."""
    if address.startswith(UNIX_ADDRESS_PREFIX):
        path = address[len(UNIX_ADDRESS_PREFIX) :]
        if not path.startswith("/"):
            raise ValueError(f"address = {address!r}, must be unix:/ABSOLUTE/PATH")
        return path, http1.UNIX_PORT
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address = {address!r}, must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class Revision:
    """One revision as the activator carries it: limits, throttle, instances, load."""

    __slots__ = (
        "namespace",
        "name",
        "label",
        "spec",
        "limits",
        "throttler",
        "addresses",
        "load",
        "probes",
        "removed",
        "default_host",
        "route_lines",
        "overload_body",
        "removed_body",
        "tally",
        "holds",
        "span_attributes",
    )

    def __init__(self, spec: RevisionSpec, queue_depth: int, now: float, rng: random.Random | None):
        self.namespace = spec.namespace
        self.name = spec.name
        self.label = f"{spec.namespace}/{spec.name}"
        self.spec = spec
        self.throttler: Throttler[Exchange] = Throttler(spec.container_concurrency, queue_depth, rng)
        self.addresses = AddressBook()
        self.load = RevisionLoad(spec.namespace, spec.name, now)
        self.probes: dict[str, asyncio.Task[None]] = {}
        self.removed = False
        label = self.label.encode()
        self.default_host = f"{spec.name}.{spec.namespace}".encode()  # when the client sent no Host
        # The routing pair as sent on to the queue (the parser keeps it out of `_parts`).
        self.route_lines = b"Knative-Serving-Namespace: %s\r\nKnative-Serving-Revision: %s\r\n" % (
            spec.namespace.encode(),
            spec.name.encode(),
        )
        self.overload_body = b"overload: activator queue full (revision %s, queue-depth=%d)\n" % (
            label,
            queue_depth,
        )
        self.removed_body = b"not found: revision %s was removed\n" % label
        self.tally = RequestTally(REVISION_REASONS, TIMEOUT_KINDS)
        self.holds = Holds()
        self.span_attributes = {"ebb.namespace": spec.namespace, "ebb.revision": spec.name}
        self.configure(spec)

    def configure(self, spec: RevisionSpec) -> None:
        """Take the controller's figures; in-flight requests keep the limits they started with."""
        self.spec = spec
        self.throttler.set_container_concurrency(spec.container_concurrency)
        self.limits = http1.Limits(
            float(spec.timeout_s),
            float(spec.response_start_timeout_s),
            float(spec.idle_timeout_s),
            upstream=b"revision " + self.label.encode(),
            held_body=b"timeout: no instance of revision %s could take the request within "
            b"timeoutSeconds=%d\n" % (self.label.encode(), spec.timeout_s),
        )


class ActivatorConnection(http1.ClientConnection):
    """A client of the activator: its requests are resolved to a revision as parsed."""

    __slots__ = ("_fwd_key", "_fwd_tail")

    def __init__(self, proxy: Activator) -> None:
        super().__init__(proxy)
        # The forwarding lines last built and what they were built from: a connection's
        # requests (a gateway's keep-alive connection, a client's) nearly always carry the
        # same values, so the lines are built once per connection, not per request.
        self._fwd_key: tuple | None = None
        self._fwd_tail = b""

    def request_head(self, method: bytes, req_kind: int) -> bytes:
        namespace, name = self._route_ns, self._route_rev
        rev = None
        if namespace is not None and name is not None:
            names = self.proxy.revisions.get(namespace)
            if names is not None:
                rev = names.get(name)
        if rev is None:
            self._route = _unknown(namespace, name)
            return b""
        self._route = rev
        parts = self._parts
        drop = self._drop
        if self._proxy_req is not None:  # ours replaces the client's
            drop = _DROP_PROXY_REQUEST if drop is None else drop | _DROP_PROXY_REQUEST
        if drop:
            parts = drop_headers(parts, drop, 0)
        key = (self._xff, self._orig_host, self._xfp, self._fwd)
        if key == self._fwd_key:
            tail = self._fwd_tail
        else:
            tail = self._forwarding()
            self._fwd_key = key
            self._fwd_tail = tail
        return b"".join(
            (
                method, b" ", self._url, b" HTTP/1.1\r\nHost: ", self._host or rev.default_host, CRLF,
                rev.route_lines, *parts,
                tail, self.framing(req_kind), CRLF,
            )
        )  # fmt: skip

    def _forwarding(self) -> bytes:
        """The forwarding lines sent on: the headers the parser set aside that the queue
        reads (K-Original-Host, X-Forwarded-Proto, Forwarded) unchanged, X-Forwarded-For
        extended with the client's address, and our K-Proxy-Request."""
        kept = b""
        if self._orig_host is not None:
            kept += b"K-Original-Host: " + self._orig_host + CRLF
        if self._xfp is not None:
            kept += b"X-Forwarded-Proto: " + self._xfp + CRLF
        if self._fwd is not None:
            kept += b"Forwarded: " + self._fwd + CRLF
        xff = self.peer if self._xff is None else self._xff + b", " + self.peer
        return kept + b"X-Forwarded-For: " + xff + CRLF + _PROXY_REQUEST


def _unknown(namespace: bytes | None, name: bytes | None) -> bytes:
    """The 404 body for a request whose revision the activator does not know."""
    if namespace is None or name is None:
        return _NO_ROUTE
    return b"not found: unknown revision %s/%s (not in the controller's endpoints)\n" % (
        namespace[:253],
        name[:253],
    )


class Activator(http1.Handler):
    """The activator's state: revisions by name, their throttles and instances, its load."""

    connection_class = ActivatorConnection
    probe_value = PROBE_HEADER_VALUE

    def __init__(
        self,
        *,
        queue_depth: int = DEFAULT_QUEUE_DEPTH,
        clock: Callable[[], float] = time.monotonic,
        probe: Probe = probe_queue,
        probe_period_s: float = PROBE_PERIOD_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(clock)
        self.queue_depth = queue_depth
        # namespace -> name -> revision, by the header bytes (no decoding on the hot path)
        self.revisions: dict[bytes, dict[bytes, Revision]] = {}
        self._by_key: dict[RevisionKey, Revision] = {}
        self.traffic = Traffic()
        self.synced = False  # the controller's first snapshot has arrived
        self.on_poke: Callable[[str, str], None] | None = None  # send a poke stat
        self._probe = probe
        self._probe_period_s = probe_period_s
        self._probe_timeout_s = probe_timeout_s
        self._rng = rng
        self.unrouted = RequestTally(UNROUTED_REASONS)  # refused before a revision was known
        # (this activator's index, how many activators share the instances): the
        # controller's figures, see throttler.assign
        self.share = (0, 1)

    # -- Handler hooks (the hot path)

    @property
    def healthy(self) -> bool:
        return self.synced and not self.draining

    def probe_answer(self) -> tuple[int, bytes]:
        if self.healthy:
            return 200, PROBE_HEADER_VALUE
        return 503, b"draining\n" if self.draining else _NOT_SYNCED

    def admit(self, ex: Exchange) -> None:
        rev = ex.route
        if rev.__class__ is not Revision:  # the 404 body
            self.unrouted.reject(REJECT_UNKNOWN if self.synced else REJECT_NOT_SYNCED)
            ex.respond_local(404 if self.synced else 503, rev if self.synced else _NOT_SYNCED)
            return
        if rev.removed:
            self.unrouted.reject(REJECT_REMOVED)
            ex.respond_local(404, rev.removed_body)
            return
        ex.limits = rev.limits  # from here on the request counts (see `release`)
        now = ex.t_begin = self.clock()
        load = rev.load
        if not load.active:
            self.traffic.activate(load, now)
        load.request_in(now)
        ex.arm_timer()
        try:
            instance = rev.throttler.acquire(ex)
        except QueueFull:
            rev.tally.reject(REJECT_OVERLOAD)
            ex.respond_local(503, rev.overload_body)
            return
        if instance is None:
            ex.waiting = True
            rev.holds.held += 1
            if self.traffic.held(load) and self.on_poke is not None:
                self.on_poke(rev.namespace, rev.name)
            return
        ex.slot = instance
        ex.pool = instance.handle
        ex.tries = 1
        ex.go()

    def release(self, ex: Exchange) -> None:
        if ex.limits is None:  # answered before it counted (404, not synced)
            return
        rev = ex.route
        if ex.waiting:
            ex.waiting = False
            rev.throttler.abandon(ex)
        else:
            instance = ex.slot
            if instance is not None:
                ex.slot = None
                handed = rev.throttler.release(instance)
                if handed is not None:
                    self._hand(handed[0], handed[1])
        now = self.clock()
        rev.load.request_out(now)
        rev.tally.record(ex.status or CLIENT_CLOSED, ex.tag or b"", now - ex.t_begin)

    def timed_out(self, ex: Exchange, kind: str) -> None:
        if ex.limits is not None:  # counted: routed to a revision
            ex.route.tally.timed_out(kind)

    def span_started(self, ex: Exchange) -> None:
        super().span_started(ex)
        rev = ex.route
        if rev.__class__ is Revision:
            ex.span.set_attributes(rev.span_attributes)

    def _hand(self, ex: Exchange, instance: Instance) -> None:
        """`ex` waited and now holds a slot on `instance`: forward it (on the next turn of
        the loop, outside whatever callback freed the slot)."""
        held_s = self.clock() - ex.t_begin
        ex.route.holds.observe(held_s)
        span = ex.span
        if span is not None and span.is_recording():
            span.add_event(
                "instance acquired",
                {"ebb.instance": instance.address, "ebb.held_ms": round(held_s * 1000.0, 3)},
            )
        ex.waiting = False
        ex.slot = instance
        ex.pool = instance.handle
        ex.tries += 1
        self.loop.call_soon(ex.go)

    def connect_failed(self, ex: Exchange, exc: OSError) -> None:
        rev: Revision = ex.route
        instance: Instance = ex.slot
        if instance.active:
            log.warning(
                "cannot connect to an instance; probing it until it answers",
                extra={"revision": rev.label, "instance": instance.address, "error": str(exc)},
            )
            rev.addresses.connect_failed(instance.address)
            self._sync(rev)
        ex.slot = None
        handed = rev.throttler.release(instance)
        if handed is not None:
            self._hand(handed[0], handed[1])
        if ex.tries < MAX_TRIES:
            other = rev.throttler.try_acquire()
            if other is not None:
                ex.slot = other
                ex.pool = other.handle
                ex.tries += 1
                ex.go()
                return
        super().connect_failed(ex, exc)

    def close_pools(self) -> None:
        for rev in self._by_key.values():
            for instance in rev.throttler.instances:
                instance.handle.close_all()

    # -- what the controller says

    def apply(
        self,
        revisions: Sequence[RevisionSpec],
        removed: Sequence[RevisionKey],
        snapshot: bool,
        share: tuple[int, int] | None = None,
    ) -> None:
        """One endpoints message: changed revisions, removed ones; a snapshot is the whole
        state (revisions it does not name are gone). `share`: this activator's (index,
        count) among the activators, when the controller says (None: unchanged)."""
        if share is not None and share != self.share:
            self.share = share
            log.info("activators sharing the instances", extra={"index": share[0], "count": share[1]})
            for rev in list(self._by_key.values()):
                self._sync(rev)
        if snapshot:
            named = {(spec.namespace, spec.name) for spec in revisions}
            for key in [key for key in self._by_key if key not in named]:
                self._remove(key)
        for spec in revisions:
            self._upsert(spec)
        for key in removed:
            self._remove(key)
        if snapshot and not self.synced:
            self.synced = True
            log.info("endpoints synced", extra={"revisions": len(self._by_key)})

    def _upsert(self, spec: RevisionSpec) -> None:
        key = (spec.namespace, spec.name)
        rev = self._by_key.get(key)
        if rev is None:
            rev = Revision(spec, self.queue_depth, self.clock(), self._rng)
            self._by_key[key] = rev
            self.revisions.setdefault(spec.namespace.encode(), {})[spec.name.encode()] = rev
        elif spec != rev.spec:
            rev.configure(spec)
        rev.addresses.update(spec.addresses, spec.not_ready_addresses)
        self._sync(rev)

    def _remove(self, key: RevisionKey) -> None:
        rev = self._by_key.pop(key, None)
        if rev is None:
            return
        rev.removed = True
        names = self.revisions.get(key[0].encode())
        if names is not None:
            names.pop(key[1].encode(), None)
            if not names:
                del self.revisions[key[0].encode()]
        for task in rev.probes.values():
            task.cancel()
        rev.probes.clear()
        for instance in list(rev.throttler.instances):
            rev.throttler.remove(instance.address)
            instance.handle.close_all()
        for ex in rev.throttler.clear():
            ex.waiting = False
            ex.respond_local(404, rev.removed_body)
        log.info("revision removed", extra={"revision": rev.label})

    def _sync(self, rev: Revision) -> None:
        """Make the throttle's instances the usable addresses, probe the others, and hand
        new capacity to waiting requests."""
        throttler = rev.throttler
        mine, capacity = assign(rev.addresses, throttler.container_concurrency, *self.share)
        throttler.set_capacity(capacity)
        usable = [address for address in rev.addresses.usable() if address in mine]
        keep = set(usable)
        for instance in list(throttler.instances):
            if instance.address not in keep:
                throttler.remove(instance.address)
                instance.handle.close_all()
        have = {instance.address for instance in throttler.instances}
        for address in usable:
            if address not in have:
                try:
                    host, port = split_address(address)
                except ValueError:
                    log.warning("bad instance address", extra={"revision": rev.label, "address": address})
                    continue
                throttler.add(address, http1.UpstreamPool(self.loop, host, port, name=b"the instance"))
        for address in rev.addresses.to_probe():
            if address in mine and address not in rev.probes:
                rev.probes[address] = self.loop.create_task(self._probe_loop(rev, address))
        for ex, instance in throttler.dispatch():
            self._hand(ex, instance)

    async def _probe_loop(self, rev: Revision, address: str) -> None:
        """Probe `address` until it answers (or is no longer listed): every few ms at
        first, then every 200 ms (`probe_delay`)."""
        loop = self.loop
        try:
            host, port = split_address(address)
        except ValueError:
            rev.probes.pop(address, None)
            return
        first = loop.time()
        try:
            while not rev.removed and rev.addresses.needs_probe(address):
                started = loop.time()
                ok = await self._probe(host, port, self._probe_timeout_s)
                if ok and not rev.removed and rev.addresses.needs_probe(address):
                    rev.addresses.probe_result(address, True)
                    log.info("instance answered its probe", extra={"revision": rev.label, "instance": address})
                    rev.probes.pop(address, None)
                    self._sync(rev)
                    return
                delay = probe_delay(started - first, self._probe_period_s)
                await asyncio.sleep(max(0.0, started + delay - loop.time()))
        finally:
            if rev.probes.get(address) is asyncio.current_task():
                del rev.probes[address]

    async def stop_probes(self) -> None:
        tasks = [task for rev in self._by_key.values() for task in rev.probes.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- stats

    def collect(self, now: float):
        """The per-period reports of every revision with load (for the stats reporter)."""
        return self.traffic.collect(now)

    def revision(self, namespace: str, name: str) -> Revision | None:
        return self._by_key.get((namespace, name))

    def revisions_now(self) -> list[Revision]:
        """The revisions known now; safe from the metrics thread (one C-level copy)."""
        return list(self._by_key.values())
