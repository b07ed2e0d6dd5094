"""The data plane's HTTP/1.1 reverse-proxy machinery, shared by the queue and the activator.

Callback-driven on purpose: a request that finds an idle upstream connection and a free
slot is parsed, forwarded, answered and accounted without a task, a future, a lock or a
timer of its own (each client connection has one timer for the timeouts of whichever
exchange it is answering). Tasks appear only to open a new upstream connection.

Per request (`Exchange`):
  client bytes -> httptools request parser -> head rebuilt by the service's
  `ClientConnection.request_head` (hop-by-hop headers dropped, its own headers set) ->
  the service's `Handler.admit` (breaker, throttler) -> pooled keep-alive upstream
  connection; upstream bytes -> httptools response parser -> head rebuilt -> client.
Bodies stream both ways (Content-Length or chunked, re-framed as needed) with flow control:
a side whose peer cannot keep up stops being read. Pipelined requests are answered in
order; at most MAX_PIPELINE parsed ahead.

Input that cannot be served ends what it touches at once, whatever state it comes in:
a malformed head is answered 400 (431 past MAX_HEAD_BYTES, fed or complete; 501 for a
transfer-coding other than chunked, as Go's net/http), and so is a head Go's net/http
server refuses (`ClientConnection._check_head`: no Host in HTTP/1.1 or more than one, `*`
but for OPTIONS; 405 for CONNECT, 505 for a version other than 1.0 and 1.1), in its turn,
and the connection closes (an absolute-form target goes on in origin form, its authority
the Host); a body that turns out malformed, or that the client stops sending (EOF before
its end), ends its exchange then and there (400 while nothing of the response has gone,
else the connection is cut; 499 for the client that left), closing the app connection
that saw the broken body, so no slot waits for bytes that cannot come. A head left
incomplete for HEAD_TIMEOUT_S closes the connection (408 when nothing else is owed).

A service plugs in with two subclasses: a `Handler` (admission: which upstream pool, when,
and what to release at the end; its probe answer) and a `ClientConnection` (how the
upstream request head is built from the captured headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import socket
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus

import httptools

from ebb.common.settings import UNIX_ADDRESS_PREFIX
from ebb.common.tracing import UnsampledSpan

log = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024  # bytes buffered toward one side before the other side stops being read
MAX_HEAD_BYTES = 64 * 1024  # request line + headers; beyond: 431
# A request head begun and not finished for this long closes its connection (Knative's
# queue-proxy sets the same bound, ReadHeaderTimeout, on its server): a client trickling
# a head, or one that sent "GET / HTTP/1.1\r\nHost: a\r\n" and stopped, holds no
# connection forever. An idle keep-alive connection (no head begun) is not concerned.
HEAD_TIMEOUT_S = 60.0
MAX_PIPELINE = 32  # requests parsed ahead of the one being answered
MAX_IDLE_UPSTREAM = 256  # idle keep-alive connections kept to the app
SMALL_JOIN = 16 * 1024  # two pieces this small together are joined: one write, not a writev

UNIX_PORT = 0  # an upstream with this port is a unix socket, its host the socket's path
LOOPBACK = b"127.0.0.1"
CRLF = b"\r\n"
SEP = b": "
_LAST_CHUNK = b"0\r\n\r\n"

# Why a client connection is not being read (bit mask; read again when it is 0).
_PAUSE_PIPELINE = 1  # enough parsed ahead
_PAUSE_BODY = 2  # request body buffered while waiting for a slot or a connection
_PAUSE_UPSTREAM = 4  # the app's socket cannot take more
_PAUSE_STOP = 8  # never again (bad request, upgrade)

# Request body framing.
BODY_NONE = 0
BODY_LENGTH = 1
BODY_CHUNKED = 2

# Response body framing toward the client.
_OUT_NONE = 0
_OUT_RAW = 1
_OUT_CHUNKED = 2

# Request headers that need more than copying (everything else passes through untouched).
_K_HOP = 1
_K_HOST = 2
_K_ORIG_HOST = 3
_K_XFF = 4
_K_XFP = 5
_K_XFH = 6
_K_FWD = 7
_K_CL = 8
_K_TE = 9
_K_CONN = 10
_K_PROBE = 11
_K_PROXY = 12
_K_ROUTE_NS = 13
_K_ROUTE_REV = 14
_K_TAG = 15
_K_TRACEPARENT = 16
_K_TRACESTATE = 17
_K_UPGRADE = 18

# Go's httputil.ReverseProxy list (what Knative's queue-proxy strips) plus Content-Length
# and Transfer-Encoding, which the proxy re-frames itself: the kinds of response headers.
_RESP_KINDS = {
    b"connection": _K_CONN,
    b"proxy-connection": _K_HOP,
    b"keep-alive": _K_HOP,
    b"proxy-authenticate": _K_HOP,
    b"proxy-authorization": _K_HOP,
    b"te": _K_HOP,
    b"trailer": _K_HOP,
    b"upgrade": _K_UPGRADE,  # hop-by-hop: passed on only when the switch is asked and made
    b"transfer-encoding": _K_TE,
    b"content-length": _K_CL,
}
# Requests: the same, and the headers a proxy rewrites or reads.
_REQ_KINDS = {
    **_RESP_KINDS,
    b"host": _K_HOST,
    b"k-original-host": _K_ORIG_HOST,
    b"x-forwarded-for": _K_XFF,
    b"x-forwarded-proto": _K_XFP,
    b"x-forwarded-host": _K_XFH,
    b"forwarded": _K_FWD,
    b"k-network-probe": _K_PROBE,
    b"k-proxy-request": _K_PROXY,
    b"knative-serving-namespace": _K_ROUTE_NS,
    b"knative-serving-revision": _K_ROUTE_REV,
    b"knative-serving-tag": _K_TAG,
    b"traceparent": _K_TRACEPARENT,
    b"tracestate": _K_TRACESTATE,
}
_TRACE_HEADERS = frozenset((b"traceparent", b"tracestate"))
_CONNECTION_OPTIONS = frozenset((b"close", b"keep-alive", b"upgrade", b"te", b"trailers"))

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _forwarded_value(value: bytes) -> bytes:
    """An RFC 7239 value: a token as is, anything else quoted."""
    if _TOKEN.match(value):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def forwarded_node(address: bytes) -> bytes:
    """An RFC 7239 node for `for=`: IPv6 addresses are bracketed and quoted."""
    address = address.strip()
    if b":" in address and not address.startswith(b"[") and address.count(b":") > 1:
        address = b"[" + address + b"]"
    return _forwarded_value(address)


# forwarded_header's recent answers: a proxy sees few distinct chains (the gateway's or
# the activator's address, the same proto), and building one costs a regex per node. Only
# short ones are kept, so clients making up long chains cannot fill memory with them.
_FORWARDED_MEMO: dict[tuple[bytes | None, bytes | None, bytes | None], bytes | None] = {}
_FORWARDED_MEMO_MAX = 1024
_FORWARDED_MEMO_KEY_BYTES = 512


def forwarded_header(xff: bytes | None, host: bytes | None, proto: bytes | None) -> bytes | None:
    """`Forwarded` built from a request's X-Forwarded-For, X-Forwarded-Host and
    X-Forwarded-Proto as received (Knative's ForwardedShimHandler): the first element
    says `for=` the chain's first node, `host=` and `proto=`, as far as they are known;
    each further node gets a `for=` element of its own. None when there is nothing to say
    (none of the three headers, or only empty ones)."""
    key = (xff, host, proto)
    try:
        return _FORWARDED_MEMO[key]
    except KeyError:
        pass
    value = _build_forwarded(xff, host, proto)
    if len(xff or b"") + len(host or b"") + len(proto or b"") <= _FORWARDED_MEMO_KEY_BYTES:
        if len(_FORWARDED_MEMO) >= _FORWARDED_MEMO_MAX:  # many distinct chains: start over
            _FORWARDED_MEMO.clear()
        _FORWARDED_MEMO[key] = value
    return value


def _build_forwarded(xff: bytes | None, host: bytes | None, proto: bytes | None) -> bytes | None:
    nodes = [forwarded_node(node) for node in xff.split(b",")] if xff and xff.strip() else []
    host = host.strip() if host else None
    proto = proto.strip() if proto else None
    pairs = [b"for=" + nodes[0]] if nodes else []
    if host:
        pairs.append(b"host=" + _forwarded_value(host))
    if proto:
        pairs.append(b"proto=" + _forwarded_value(proto))
    if not pairs:
        return None
    return b", ".join([b";".join(pairs), *(b"for=" + node for node in nodes[1:])])


_HEAD_TOO_LARGE = b"request head larger than %d bytes\n" % MAX_HEAD_BYTES
_TOO_MANY_HOSTS = b"bad request: too many Host headers\n"


def local_response(
    status: int, body: bytes, keep_alive: bool, http11: bool, head_only: bool
) -> bytes:
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
        % (
            status,
            HTTPStatus(status).phrase.encode(),
            len(body),
        )
    )
    if not keep_alive:
        head += b"Connection: close\r\n"
    elif not http11:
        head += b"Connection: keep-alive\r\n"
    return head + CRLF + (b"" if head_only else body)


class _Refused(Exception):
    """Raised from a parser callback: the request is answered `args` (status, body) and
    the connection closes (see ClientConnection._refuse)."""


# What a `K-Network-Probe` request asks of the proxy itself (`ClientConnection._probe`):
# its health, answered at once, or (the queue) an answer once its drain has ended.
PROBE_HEALTH = 1
PROBE_WAIT_DRAIN = 2
# Not a probe: a request the proxy refuses (`Exchange.refusal`), answered in its turn.
_REFUSED = 3


# Which timeout ended an exchange (`Limits.kind_of`, `Handler.timed_out`).
TIMEOUT_WAITING = "waiting"
TIMEOUT_REQUEST = "request"
TIMEOUT_RESPONSE_START = "response_start"
TIMEOUT_IDLE = "idle"
TIMEOUT_KINDS = (TIMEOUT_WAITING, TIMEOUT_REQUEST, TIMEOUT_RESPONSE_START, TIMEOUT_IDLE)
# The status an exchange is accounted with when the client left before any answer
# (nginx's "client closed request"; nothing is sent).
CLIENT_CLOSED = 499


class Limits:
    """The three Knative timeouts of one upstream (a revision), and the 504 bodies naming them.

    Pure: times are seconds on the caller's clock. As in Knative's timeout handler, a
    timeout ends an exchange with a 504 only while nothing of the response has gone to the
    client; `started` (the response head has) changes what applies:
      - `timeoutSeconds` bounds the exchange until the response starts, waiting for a slot
        included; a response that has started may then take as long as it takes;
      - `responseStartTimeoutSeconds` (0 = off) bounds the time until the response head;
      - `idleTimeoutSeconds` (0 = off) bounds silence, before and after the start: a
        started response that falls silent for that long is cut (no 504 can be sent).
    """

    __slots__ = (
        "timeout_s",
        "response_start_timeout_s",
        "idle_timeout_s",
        "first_s",
        "timeout_body",
        "held_body",
        "response_start_body",
        "idle_body",
    )

    def __init__(
        self,
        timeout_s: float,
        response_start_timeout_s: float = 0.0,
        idle_timeout_s: float = 0.0,
        *,
        upstream: bytes = b"the app",
        held_body: bytes | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.response_start_timeout_s = response_start_timeout_s
        self.idle_timeout_s = idle_timeout_s
        # The deadline of a fresh exchange (nothing received yet) is its start plus this.
        self.first_s = self.deadline(0.0, 0.0, False)
        self.timeout_body = b"timeout: %s did not answer within timeoutSeconds=%g\n" % (
            upstream,
            timeout_s,
        )
        self.held_body = self.timeout_body if held_body is None else held_body
        self.response_start_body = (
            b"timeout: %s did not start answering within responseStartTimeoutSeconds=%g\n"
            % (upstream, response_start_timeout_s)
        )
        self.idle_body = b"timeout: no bytes from %s for idleTimeoutSeconds=%g\n" % (
            upstream,
            idle_timeout_s,
        )

    def deadline(self, t_start: float, t_activity: float, started: bool) -> float:
        """When the exchange times out unless something moves the idle deadline on;
        `math.inf` when nothing can time it out (started, no idle timeout)."""
        if started:
            return t_activity + self.idle_timeout_s if self.idle_timeout_s else math.inf
        deadline = t_start + self.timeout_s
        if self.response_start_timeout_s:
            deadline = min(deadline, t_start + self.response_start_timeout_s)
        if self.idle_timeout_s:
            deadline = min(deadline, t_activity + self.idle_timeout_s)
        return deadline

    def expired(
        self, now: float, t_start: float, t_activity: float, started: bool, waiting: bool
    ) -> bytes | None:
        """The 504 body if one of the timeouts has passed at `now`, else None.

        `waiting`: the exchange still waits for a slot (held), which the body says.
        """
        if not started:
            if now >= t_start + self.timeout_s:
                return self.held_body if waiting else self.timeout_body
            if self.response_start_timeout_s and now >= t_start + self.response_start_timeout_s:
                return self.response_start_body
        if self.idle_timeout_s and now >= t_activity + self.idle_timeout_s:
            return self.idle_body
        return None

    def kind_of(self, body: bytes, waiting: bool) -> str:
        """Which timeout `expired` returned `body` for (a metric label): `waiting` (no slot
        within timeoutSeconds), `request` (timeoutSeconds), `response_start` or `idle`."""
        if body is self.response_start_body:
            return TIMEOUT_RESPONSE_START
        if body is self.idle_body:
            return TIMEOUT_IDLE
        return TIMEOUT_WAITING if waiting else TIMEOUT_REQUEST


class Handler:
    """One proxy's shared state (listener, connections, drain) and the service's hooks.

    Subclasses set `connection_class` and implement `admit` and `release`; the exchange
    calls `admit(ex)` once when it becomes the one its connection answers, and
    `release(ex)` exactly once when it ends (answered, failed or abandoned) if admitted.
    """

    connection_class: type[ClientConnection]
    probe_value: bytes  # the `K-Network-Probe` value this proxy answers itself
    # The `K-Network-Probe` value answered 200 only once the drain has ended (None: not
    # served): a pod's preStop hook waits on it, so the app gets SIGTERM only after the
    # proxy in front of it has finished what it accepted (Knative's /wait-for-drain).
    wait_drain_value: bytes | None = None

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.loop = asyncio.get_running_loop()
        # Stats need sub-millisecond time (uvloop's loop.time() counts whole milliseconds);
        # timers and drain use the loop's time.
        self.clock = clock
        self.draining = False
        self.in_flight = 0  # admitted exchanges not yet finished
        self.last_arrival = self.loop.time()
        self.connections: set[ClientConnection] = set()
        self._servers: list[asyncio.base_events.Server] = []  # TCP, then any unix socket
        self._unix_paths: list[str] = []  # removed at close
        # An enabled ebb.common.tracing.Tracing, or None: the only check the hot path makes.
        self.tracing = None
        self.drained = False  # the drain has ended
        self._drain_waiters: list[Exchange] = []

    # -- hooks

    @property
    def healthy(self) -> bool:
        """What a probe of this proxy is answered: serving and not draining."""
        return not self.draining

    def probe_answer(self) -> tuple[int, bytes]:
        """Status and body for a `K-Network-Probe` request addressed to this proxy."""
        raise NotImplementedError

    def admit(self, ex: Exchange) -> None:
        """Start `ex` (counted, timer armed): set `ex.pool` and call `ex.go()` now or later,
        or answer it with `ex.respond_local`."""
        raise NotImplementedError

    def release(self, ex: Exchange) -> None:
        """`ex` (admitted) has ended: give back what it held."""
        raise NotImplementedError

    def connect_failed(self, ex: Exchange, exc: OSError) -> None:
        """No connection to `ex.pool` could be opened (nothing of the request was sent)."""
        ex.respond_local(502, ex.pool.connect_error_prefix + b" (%s)\n" % str(exc).encode())

    def timed_out(self, ex: Exchange, kind: str) -> None:
        """`ex` is being ended by the timeout `kind` (TIMEOUT_*): a 504, or the client
        connection cut when the response had started (only the idle timeout ends a started
        response). For metrics."""

    def span_started(self, ex: Exchange) -> None:
        """A recording span was started for `ex` (tracing on, sampled): its attributes.
        Services add their own (revision, instance) after these."""
        ex.span.set_attributes(
            {
                "http.request.method": ex.method.decode("latin-1"),
                "url.path": ex.url.partition(b"?")[0].decode("latin-1"),
                "network.peer.address": ex.conn.peer.decode("latin-1"),
            }
        )

    def end_span(self, ex: Exchange) -> None:
        """`ex` has ended: end its span with the status it was answered with."""
        error = "response cut short" if ex.cut else None
        self.tracing.end_http_span(ex.span, ex.status or CLIENT_CLOSED, error)

    # -- lifecycle

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start accepting clients; returns the bound port."""
        cls = self.connection_class
        server = await self.loop.create_server(
            lambda: cls(self), host, port, backlog=4096, reuse_address=True
        )
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def listen_unix(self, path: str) -> None:
        """Also accept clients on a unix socket at `path` (owner-only; a stale file there is
        replaced). Same-machine peers (the local runtime's activator) skip the loopback TCP
        stack: each request and response costs the kernel about half as much."""
        cls = self.connection_class
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._servers.append(await self.loop.create_unix_server(lambda: cls(self), path, backlog=4096))
        os.chmod(path, 0o600)
        self._unix_paths.append(path)

    def wait_drained(self, ex: Exchange) -> None:
        """Answer `ex` (a PROBE_WAIT_DRAIN request) once the drain has ended; at once if it
        has. It is not counted in flight, so it never holds the drain up."""
        if self.drained:
            ex.respond_local(200, b"drained\n")
        else:
            self._drain_waiters.append(ex)

    async def drain(self, quiet_s: float, max_s: float) -> None:
        """Answer probes 503 and keep serving until no request has arrived for quiet_s and
        none is in flight, or max_s has passed; then answer whoever waits for the end."""
        try:
            await self._drain(quiet_s, max_s)
        finally:
            self.drained = True
            waiters, self._drain_waiters = self._drain_waiters, []
            for ex in waiters:
                ex.respond_local(200, b"drained\n")

    async def _drain(self, quiet_s: float, max_s: float) -> None:
        loop = self.loop
        self.draining = True
        start = loop.time()
        deadline = start + max_s
        self.last_arrival = max(self.last_arrival, start)
        while True:
            now = loop.time()
            if now >= deadline:
                if self.in_flight:
                    log.warning(
                        "drain-max-s reached with requests in flight",
                        extra={"in_flight": self.in_flight},
                    )
                return
            quiet_at = self.last_arrival + quiet_s
            if self.in_flight == 0:
                if now >= quiet_at:
                    return
                await asyncio.sleep(min(quiet_at - now, deadline - now))
            else:
                await asyncio.sleep(min(0.02, deadline - now))

    def close_pools(self) -> None:
        """Close every upstream connection (at shutdown)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop listening and close every client and upstream connection."""
        for server in self._servers:
            server.close()
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        for conn in list(self.connections):
            conn.close()
        self.close_pools()
        await asyncio.sleep(0)  # let connection_lost callbacks run
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except TimeoutError:
                pass


class UpstreamPool:
    """Keep-alive connections to one upstream; most recently used first (they are warm).
    The upstream is `host:port` over TCP, or, when port is `UNIX_PORT`, the unix socket at
    path `host`."""

    __slots__ = ("loop", "host", "port", "idle", "max_idle", "closed", "name", "connect_error_prefix")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        max_idle: int = MAX_IDLE_UPSTREAM,
        *,
        name: bytes = b"the upstream",
    ):
        self.loop = loop
        self.host = host
        self.port = port
        self.idle: list[UpstreamConnection] = []
        self.max_idle = max_idle
        self.closed = False  # closed pools take no connection back
        self.name = name  # what the upstream is called in 502 bodies ("the app", "the instance")
        where = (UNIX_ADDRESS_PREFIX + host if port == UNIX_PORT else f"{host}:{port}").encode()
        self.connect_error_prefix = b"upstream: cannot connect to %s at %s" % (name, where)

    def take(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            up = idle.pop()
            if not up.closed:
                return up
        return None

    def put(self, up: UpstreamConnection) -> None:
        if up.closed:
            return
        if self.closed or len(self.idle) >= self.max_idle:
            up.close()
            return
        self.idle.append(up)

    def forget(self, up: UpstreamConnection) -> None:
        try:
            self.idle.remove(up)
        except ValueError:
            pass

    async def connect(self) -> UpstreamConnection:
        if self.port == UNIX_PORT:
            _, up = await self.loop.create_unix_connection(lambda: UpstreamConnection(self), self.host)
        else:
            _, up = await self.loop.create_connection(
                lambda: UpstreamConnection(self), self.host, self.port
            )
        return up

    def close_all(self) -> None:
        """Close the idle connections; busy ones close when their exchange ends."""
        self.closed = True
        idle, self.idle = self.idle, []
        for up in idle:
            up.close()


class UpstreamConnection(asyncio.Protocol):
    """One connection to the app; serves one exchange at a time."""

    __slots__ = (
        "pool",
        "transport",
        "parser",
        "exchange",
        "closed",
        "read_paused",
        "reason",
        "parts",
        "length",
        "chunked",
        "drop",
        "in_head",
        "interim",
        "close_delimited",
        "upgrade",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.read_paused = False
        self.reason = b""
        # The response head as parsed: headers passed on ([status line slot, name, ": ",
        # value, CRLF, ...]), and those the proxy re-frames itself.
        self.parts: list[bytes] = []
        self.length: bytes | None = None  # Content-Length
        self.chunked = False  # Transfer-Encoding ends with chunked
        self.drop: set[bytes] | None = None  # header names listed in Connection
        self.in_head = False
        self.interim = False
        self.close_delimited = False
        self.upgrade: bytes | None = None  # the response's Upgrade header

    # -- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self.exchange
        if ex is not None:
            ex.on_upstream_lost(self, exc)
        else:
            self.pool.forget(self)

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # bytes nobody asked for: this connection can no longer be trusted
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # The app switched protocols (see Exchange.on_response_head): what follows the
            # 101 head is the new protocol's, for the client.
            if ex.status == 101 and not ex.finished:  # the tunnel reads this side now
                self.transport.get_protocol().data_received(data[exc.args[0] :])
            else:
                ex.on_upstream_error(self, b"upstream: switched protocols unasked\n")
            return
        except httptools.HttpParserCallbackError as exc:
            log.error("internal error handling an upstream response", exc_info=exc.__context__)
            ex.on_upstream_error(self, b"upstream: internal error\n")
            return
        except httptools.HttpParserError as exc:
            ex.on_upstream_error(
                self, b"upstream: malformed response from %s (%s)\n" % (self.pool.name, str(exc).encode())
            )
            return
        if ex._down:
            ex.flush_down()

    def pause_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.conn.pause(_PAUSE_UPSTREAM)

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.conn.resume(_PAUSE_UPSTREAM)

    # -- parser callbacks

    def on_message_begin(self) -> None:
        self.reason = b""
        self.parts = [b""]  # [0]: the status line, once the head is complete
        self.length = self.drop = self.upgrade = None
        self.chunked = False
        self.in_head = True

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        """Sorted as it arrives (one pass): passed on, or kept for re-framing."""
        if not self.in_head:
            return  # trailers are not forwarded
        kind = _RESP_KINDS.get(name.lower())
        if kind is None:
            self.parts.extend((name, SEP, value, CRLF))
        elif kind == _K_CL:
            self.length = value
        elif kind == _K_TE:
            self.chunked = value.rstrip().lower().endswith(b"chunked")
        elif kind == _K_CONN:
            self.drop = _connection_tokens(value, self.drop)
        elif kind == _K_UPGRADE:
            self.upgrade = value
        # else: hop-by-hop, dropped

    def on_headers_complete(self) -> None:
        self.in_head = False
        ex = self.exchange
        if ex is None:
            self.close()
        else:
            ex.on_response_head(self)

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.on_response_body(body)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.on_response_done(self)

    # -- helpers

    def pause_reading(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Exchange:
    """One request and its response, from the client's head to the last response byte."""

    __slots__ = (
        "conn",
        "proxy",
        "method_head",
        "http11",
        "keep_alive",
        "probe",
        "proxied",
        "req_kind",
        "head",
        "req_done",
        "req_sent",
        "_req_buf",
        "_req_buf_bytes",
        "upstream",
        "reused",
        "retried",
        "_connect_task",
        "started",
        "out_mode",
        "_down",
        "finished",
        "counted",
        "waiting",
        "t_start",
        "t_activity",
        # what the logs, metrics and traces say about it
        "method",
        "url",
        "tag",
        "traceparent",
        "span",
        "status",
        "cut",
        "bytes_in",
        "bytes_out",
        "t_begin",
        "t_end",
        # set by the handler
        "route",
        "pool",
        "limits",
        "slot",
        "tries",
        "upgrade",  # the protocol switch asked for (Upgrade with Connection: upgrade)
        "refusal",  # (status, body) the proxy answers instead; set only with probe _REFUSED
    )

    def __init__(
        self,
        conn: ClientConnection,
        head: bytes,
        req_kind: int,
        is_head: bool,
        http11: bool,
        keep_alive: bool,
        probe: int,  # 0, PROBE_HEALTH or PROBE_WAIT_DRAIN
        proxied: bool,
        route: object,
        method: bytes = b"",
        url: bytes = b"",
    ) -> None:
        self.conn = conn
        self.proxy = conn.proxy
        self.head = head
        self.req_kind = req_kind
        self.method_head = is_head
        self.http11 = http11
        self.keep_alive = keep_alive
        self.probe = probe
        self.proxied = proxied
        self.req_done = False  # the client has sent the whole body
        self.req_sent = False  # ... and all of it went to the app
        self._req_buf: list[bytes] | None = []  # None once streaming straight to the app
        self._req_buf_bytes = 0
        self.upstream: UpstreamConnection | None = None
        self.reused = False
        self.retried = False
        self._connect_task: asyncio.Task[None] | None = None
        self.started = False  # the response head has been decided
        self.out_mode = _OUT_NONE
        self._down: list[bytes] = []
        self.finished = False
        self.counted = False  # admitted: the handler releases it once at the end
        self.waiting = False  # waits for a slot (queued by the breaker or the throttler)
        self.t_start = 0.0
        self.t_activity = 0.0
        self.method = method
        self.url = url
        self.tag: bytes | None = None  # Knative-Serving-Tag
        self.traceparent: bytes | None = None  # as received
        self.span = None  # ours, when tracing is on (see Handler.tracing)
        self.status = 0  # the status answered with; 0 = none (yet)
        self.cut = False  # the response started but could not be completed
        self.bytes_in = 0  # request body bytes from the client
        self.bytes_out = 0  # response body bytes to the client
        self.t_begin = 0.0  # the handler's clock at admission (latency is measured from it)
        self.t_end = 0.0  # ... and when it ended (set by handlers that need it)
        self.route = route  # what the connection resolved the request to (the handler's type)
        self.pool: UpstreamPool | None = None  # where `go` takes a connection from
        self.limits: Limits | None = None  # timeouts; set by the handler before `arm_timer`
        self.slot: object = None  # what the handler gave it (a breaker slot, an instance)
        self.tries = 0  # upstreams tried (the handler's count)
        self.upgrade: bytes | None = None

    # -- lifecycle

    def start(self) -> None:
        """Called when this request becomes the one the connection is answering."""
        proxy = self.proxy
        if self.probe:
            if self.probe == PROBE_WAIT_DRAIN:
                proxy.wait_drained(self)
                return
            if self.probe == _REFUSED:
                self.respond_local(*self.refusal)
                return
            status, body = proxy.probe_answer()
            self.respond_local(status, body)
            return
        now = proxy.loop.time()
        self.t_start = self.t_activity = now
        self.counted = True
        proxy.in_flight += 1
        proxy.last_arrival = now
        proxy.admit(self)

    def go(self) -> None:
        """Holding a slot: get a connection from `self.pool`."""
        if self.finished:
            return
        up = self.pool.take()
        if up is not None:
            self._attach(up, reused=True)
        else:
            self._connect_task = self.proxy.loop.create_task(self._connect())

    async def _connect(self) -> None:
        pool = self.pool
        try:
            up = await pool.connect()
        except OSError as exc:
            self._connect_task = None
            if not self.finished:
                self.proxy.connect_failed(self, exc)
            return
        self._connect_task = None
        if self.finished:
            pool.put(up)
            return
        self._attach(up, reused=False)

    def _attach(self, up: UpstreamConnection, reused: bool) -> None:
        self.upstream = up
        self.reused = reused
        up.exchange = self
        conn = self.conn
        if conn.write_paused:
            up.pause_reading()
        # Inside the client's data_received the body usually follows in the same read:
        # send head and body together at the end of it (one write, one packet).
        if self.req_kind == BODY_NONE or not conn.feeding:
            self.flush_request()

    def flush_request(self) -> None:
        """Send the head and whatever body is buffered; from now on the body streams."""
        buf = self._req_buf
        self._req_buf = None
        transport = self.upstream.transport
        if buf:
            if len(buf) == 1 and len(self.head) + len(buf[0]) <= SMALL_JOIN:  # see flush_down
                transport.write(self.head + buf[0])
            else:
                buf.insert(0, self.head)
                transport.writelines(buf)
        else:
            transport.write(self.head)
        self._req_buf_bytes = 0
        if self.req_done:
            self.req_sent = True
        conn = self.conn
        if conn.paused:
            conn.resume(_PAUSE_BODY)

    # -- the client's body

    def client_body(self, chunk: bytes) -> None:
        size = len(chunk)
        self.bytes_in += size
        if self.finished or not size:
            return  # answered already (early response, 503, 504): the rest is discarded
        buf = self._req_buf
        if buf is None:
            transport = self.upstream.transport
            if self.req_kind == BODY_CHUNKED:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, CRLF))
            else:
                transport.write(chunk)
            return
        if self.req_kind == BODY_CHUNKED:
            buf.extend((b"%x\r\n" % len(chunk), chunk, CRLF))
        else:
            buf.append(chunk)
        self._req_buf_bytes += size
        conn = self.conn
        if conn.active is self:
            if self._req_buf_bytes > HIGH_WATER:
                conn.pause(_PAUSE_BODY)
        else:
            conn.pipeline_bytes += size
            if conn.pipeline_bytes > HIGH_WATER:
                conn.pause(_PAUSE_PIPELINE)

    def client_body_done(self) -> None:
        self.req_done = True
        if self.finished:
            return
        buf = self._req_buf
        if buf is None:
            if self.req_kind == BODY_CHUNKED:
                self.upstream.transport.write(_LAST_CHUNK)
            self.req_sent = True
        elif self.req_kind == BODY_CHUNKED:
            buf.append(_LAST_CHUNK)

    # -- the app's response

    def on_response_head(self, up: UpstreamConnection) -> None:
        if self.finished:
            return
        status = up.parser.get_status_code()
        if status < 200:
            if status == 101:
                if self.upgrade is not None and up.upgrade is not None:
                    self._switch(up)
                else:
                    self.on_upstream_error(up, b"upstream: switched protocols unasked\n")
                return
            up.interim = True  # 100 Continue and friends: pass on, wait for the real answer
            if self.http11:
                self._down.append(b"HTTP/1.1 %d %s\r\n\r\n" % (status, up.reason))
            return
        self.started = True
        self.status = status
        proxy = self.proxy
        conn = self.conn
        parts = up.parts
        parts[0] = b"HTTP/1.1 %d %s\r\n" % (status, up.reason)
        length = up.length
        chunked = up.chunked
        drop = up.drop
        if drop:
            parts = drop_headers(parts, drop, 1)
        keep = self.keep_alive and not conn.close_after and not proxy.draining
        body_allowed = not self.method_head and status != 204 and status != 304
        up.close_delimited = body_allowed and length is None and not chunked
        if not body_allowed:
            if length is not None:
                parts.append(b"Content-Length: " + length + CRLF)
            mode = _OUT_NONE
        elif length is not None and not chunked:
            parts.append(b"Content-Length: " + length + CRLF)
            mode = _OUT_RAW
        elif self.http11:
            parts.append(b"Transfer-Encoding: chunked\r\n")
            mode = _OUT_CHUNKED
        else:  # an HTTP/1.0 client knows no chunks: the end of the body is the end of the connection
            mode = _OUT_RAW
            keep = False
        if not keep:
            conn.close_after = True
            parts.append(b"Connection: close\r\n")
        elif not self.http11:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(CRLF)
        self._down.append(b"".join(parts))
        self.out_mode = mode
        if self.limits.idle_timeout_s:
            self.t_activity = proxy.loop.time()
        if self.method_head and status != 204 and status != 304:
            # httptools does not know this answers a HEAD and would wait for a body; the
            # connection is given up rather than risk misreading the next response on it.
            self.flush_down()
            self._release_upstream(False)
            self._finish()

    def on_response_body(self, chunk: bytes) -> None:
        if self.finished or not chunk:  # an empty chunk would read as the last one
            return
        self.bytes_out += len(chunk)
        mode = self.out_mode
        if mode == _OUT_RAW:
            self._down.append(chunk)
        elif mode == _OUT_CHUNKED:
            self._down.extend((b"%x\r\n" % len(chunk), chunk, CRLF))
        if self.limits.idle_timeout_s:
            self.t_activity = self.proxy.loop.time()

    def on_response_done(self, up: UpstreamConnection) -> None:
        if up.interim:
            up.interim = False
            return
        if self.finished:
            return
        if self.out_mode == _OUT_CHUNKED:
            self._down.append(_LAST_CHUNK)
        self.flush_down()
        # After an upgrade request the app may take the connection for upgraded: not reused.
        self._release_upstream(self.req_sent and self.upgrade is None and up.parser.should_keep_alive())
        self._finish()

    def _switch(self, up: UpstreamConnection) -> None:
        """The app answered an upgrade request with 101: pass the head on and from now on
        carry bytes both ways as they come (a WebSocket, say) until either side closes.
        The exchange keeps its slot until then; its timeouts no longer apply (the response
        has started and has no end to wait for)."""
        self.started = True
        self.status = 101
        conn = self.conn
        parts = up.parts
        parts[0] = b"HTTP/1.1 101 %s\r\n" % up.reason
        if up.drop:
            parts = drop_headers(parts, up.drop, 1)
        parts.append(b"Connection: Upgrade\r\nUpgrade: " + up.upgrade + b"\r\n\r\n")
        self.flush_down()  # interim answers before it, if any
        conn.transport.write(b"".join(parts))
        conn.close_after = True
        if conn._timer is not None:
            conn._timer.cancel()
            conn._timer = None
        up.interim = True  # httptools completes the 101 as a message: nothing to end there
        Tunnel(self, conn.transport, up.transport)
        if conn.early:
            up.transport.write(conn.early)
            conn.early = b""

    def tunnel_closed(self) -> None:
        """Both sides of the tunnel are closed: the exchange ends."""
        conn = self.conn
        conn.closed = True
        self.proxy.connections.discard(conn)
        self.upstream = None
        self._finish()

    def flush_down(self) -> None:
        down = self._down
        if not down:
            return
        self._down = []
        conn = self.conn
        if conn.closed:
            return
        if len(down) == 1:
            conn.transport.write(down[0])
        elif len(down) == 2 and len(down[0]) + len(down[1]) <= SMALL_JOIN:
            # A head and a small body (the usual short answer): one copy into one buffer
            # costs less than uvloop's writev path for two pieces.
            conn.transport.write(down[0] + down[1])
        else:
            conn.transport.writelines(down)

    def on_upstream_lost(self, up: UpstreamConnection, exc: Exception | None) -> None:
        if self.finished:
            return
        if self.started:
            if up.close_delimited and exc is None:  # the end of the connection ends the body
                if self.out_mode == _OUT_CHUNKED:
                    self._down.append(_LAST_CHUNK)
                self.flush_down()
                self._release_upstream(False)
                self._finish()
            else:
                self._abort_started()
            return
        if self.reused and not self.retried and self.req_kind == BODY_NONE and self.req_done:
            # A pooled connection the app had already closed: nothing of the request was
            # consumed, so send it again once on a fresh connection.
            self.retried = True
            self.upstream = None
            up.exchange = None
            self._req_buf = []
            self.req_sent = False
            self._connect_task = self.proxy.loop.create_task(self._connect())
            return
        self.respond_local(
            502, b"upstream: %s closed the connection before answering\n" % self.pool.name
        )

    def on_upstream_error(self, up: UpstreamConnection, reason: bytes) -> None:
        if self.finished:
            up.close()
            return
        if self.started:
            self._abort_started()
        else:
            self.respond_local(502, reason)

    # -- endings

    def respond_local(self, status: int, body: bytes) -> None:
        """Answer from the proxy itself (probe, 404, 502, 503, 504)."""
        if self.finished:
            return
        self.status = status
        if not self.method_head:
            self.bytes_out = len(body)
        self._release_upstream(False)
        conn = self.conn
        keep = self.keep_alive and not conn.close_after and not self.proxy.draining
        if not keep:
            conn.close_after = True
        if not conn.closed:
            conn.transport.write(local_response(status, body, keep, self.http11, self.method_head))
        self._finish()

    def _abort_started(self) -> None:
        """The response is under way and cannot be completed: cut the client connection so
        it sees a truncated response rather than a wrong one."""
        self.cut = True
        self.flush_down()
        self._release_upstream(False)
        self.conn.close_after = True
        self.conn.close()
        self._finish()

    def refuse(self, status: int, body: bytes) -> None:
        """Not to be served (it cannot be read to its end): answered `status` in its turn
        instead, without going upstream, and the connection closes after it. Not started."""
        self.probe = _REFUSED
        self.refusal = (status, body)
        self.keep_alive = False
        self._req_buf = []  # whatever of its body was kept goes nowhere

    def abort(self) -> None:
        """The client went away."""
        if self.finished:
            return
        self._down = []
        self._release_upstream(False)
        self._finish()

    def _release_upstream(self, reusable: bool) -> None:
        up = self.upstream
        if up is None:
            return
        self.upstream = None
        up.exchange = None
        conn = self.conn
        if conn.paused:
            conn.resume(_PAUSE_UPSTREAM)
        if reusable and not up.closed:
            up.resume_reading()
            self.pool.put(up)
        else:
            up.close()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._connect_task is not None:
            self._connect_task.cancel()
            self._connect_task = None
        if self.counted:
            proxy = self.proxy
            proxy.in_flight -= 1
            proxy.release(self)
        span = self.span
        if span is not None and span.__class__ is not UnsampledSpan:  # nothing to end
            self.proxy.end_span(self)
        self.conn.exchange_done(self)

    # -- timeouts (Knative: timeoutSeconds, responseStartTimeoutSeconds, idleTimeoutSeconds)

    def arm_timer(self) -> None:
        """Start the timeouts of `self.limits` (counted from `t_start`, at admission): the
        connection's timer covers them (see `ClientConnection.watch`)."""
        conn = self.conn
        deadline = self.t_start + self.limits.first_s
        if conn._timer is None or deadline < conn._timer_at:
            conn.watch(deadline)

    def check_timeouts(self) -> None:
        """The connection's timer fired while this exchange was its active one: end it if
        one of its timeouts has passed, else have the timer wake up at its next deadline
        (it may have been armed for an earlier exchange, or activity moved it on). Once
        the response has started only the idle timeout is left: without one the timer
        stays off until the connection's next exchange arms it."""
        # Timers may fire a hair early (libuv counts milliseconds): allow 1 ms.
        now = self.proxy.loop.time() + 0.001
        limits = self.limits
        reason = limits.expired(now, self.t_start, self.t_activity, self.started, self.waiting)
        if reason is None:
            deadline = limits.deadline(self.t_start, self.t_activity, self.started)
            if deadline != math.inf:
                self.conn.watch(deadline)
            return
        self.proxy.timed_out(self, limits.kind_of(reason, self.waiting))
        if self.started:  # silent for idleTimeoutSeconds: too late for a 504
            self._abort_started()
        else:
            self.respond_local(504, reason)


def _connection_tokens(value: bytes, drop: set[bytes] | None) -> set[bytes] | None:
    """Header names listed in `Connection` (they are hop-by-hop too)."""
    for token in value.split(b","):
        token = token.strip().lower()
        if token and token not in _CONNECTION_OPTIONS:
            if drop is None:
                drop = set()
            drop.add(token)
    return drop


def drop_headers(parts: list[bytes], drop: set[bytes], first: int) -> list[bytes]:
    """`parts[first:]` is [name, ': ', value, CRLF, ...]; remove the named headers."""
    kept = parts[:first]
    for i in range(first, len(parts), 4):
        if parts[i].lower() not in drop:
            kept.extend(parts[i : i + 4])
    return kept


class Tunnel:
    """Bytes both ways between a client and the app after a 101 (WebSocket and other
    protocol switches), with each side's flow control pausing the other's reading. Each
    side's half-close is passed on; once both sides have closed, the exchange ends."""

    __slots__ = ("ex", "client", "upstream", "ends_open")

    def __init__(self, ex: Exchange, client: asyncio.Transport, upstream: asyncio.Transport) -> None:
        self.ex = ex
        self.client = _TunnelEnd(self, client, upstream)
        self.upstream = _TunnelEnd(self, upstream, client)
        self.ends_open = 2
        for end in (self.client, self.upstream):
            end.transport.set_protocol(end)
        # Reading was paused while the switch was pending (see ClientConnection.data_received).
        client.resume_reading()
        upstream.resume_reading()
        for end in (self.client, self.upstream):
            if end.peer.get_write_buffer_size() > HIGH_WATER:
                end.transport.pause_reading()

    def end_closed(self) -> None:
        self.ends_open -= 1
        if self.ends_open == 0:
            self.ex.tunnel_closed()


class _TunnelEnd(asyncio.Protocol):
    """One side of a `Tunnel`: what it reads goes to `peer`."""

    __slots__ = ("tunnel", "transport", "peer", "eof", "closed")

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport, peer: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer = peer
        self.eof = False
        self.closed = False

    def data_received(self, data: bytes) -> None:
        if data:
            self.peer.write(data)

    def eof_received(self) -> bool:
        """This side will send no more: tell the other, and keep writing to this one."""
        self.eof = True
        peer = self.peer
        if peer.is_closing() or not peer.can_write_eof():
            peer.close()
            return False
        peer.write_eof()
        other = self.tunnel.upstream if self is self.tunnel.client else self.tunnel.client
        if other.eof:  # both ways are done
            self.transport.close()
            peer.close()
            return False
        return True

    def pause_writing(self) -> None:
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.peer.close()  # what is buffered for the other side still goes out
        self.tunnel.end_closed()


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests and answers them in order.

    While a head is parsed, the headers the proxies care about are captured into `_host`,
    `_xff`, ...; those a proxy rewrites or consumes (Host, K-Original-Host, X-Forwarded-For,
    X-Forwarded-Proto, Forwarded, the routing pair Knative-Serving-Namespace and
    Knative-Serving-Revision, the framing) go upstream only as the subclass writes them,
    and everything else is collected in `_parts` ([name, ": ", value, CRLF] per header);
    hop-by-hop ones are dropped. A subclass turns that into the upstream head in
    `request_head`, and may resolve the request to a route there (`self._route`).
    """

    __slots__ = (
        "proxy",
        "transport",
        "parser",
        "peer",
        "active",
        "pipeline",
        "parsing",
        "pipeline_bytes",
        "paused",
        "write_paused",
        "closed",
        "close_after",
        "broken",
        "eof",
        "feeding",
        "early",
        "_advancing",
        "_timer",
        "_timer_at",
        # parse state of the request being read
        "_in_head",
        "_head_bytes",
        "_head_fed",
        "_head_at",
        "_url",
        "_parts",
        "_host",
        "_orig_host",
        "_xff",
        "_xfp",
        "_xfh",
        "_fwd",
        "_cl",
        "_te",
        "_drop",
        "_probe",
        "_proxy_req",
        "_route_ns",
        "_route_rev",
        "_route",
        "_tag",
        "_tp",
        "_tstate",
        "_upgrade",
    )

    def __init__(self, proxy: Handler) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b"unknown"
        self.active: Exchange | None = None
        self.pipeline: deque[Exchange] = deque()
        self.parsing: Exchange | None = None
        self.pipeline_bytes = 0
        self.paused = 0
        self.write_paused = False
        self.closed = False
        self.close_after = False  # close once the current response is out
        self.broken = False  # unparseable input: close once parsed requests are answered
        self.eof = False  # the client will send no more: close once parsed requests are answered
        self.feeding = False
        self.early = b""  # bytes after an upgrade request: the app's if it switches
        self._advancing = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when `_timer` fires
        self._in_head = False  # a request head has begun and is not complete
        self._head_bytes = 0  # its URL and complete headers so far
        self._head_fed = 0  # bytes read while it was incomplete, after the read it began in
        self._head_at = 0.0  # when it was first seen incomplete at the end of a read

    # -- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0]).encode()
        elif getattr(transport.get_extra_info("socket"), "family", None) == socket.AF_UNIX:
            # A process on this machine: recorded as the loopback TCP hop would have been,
            # so the app sees the same X-Forwarded-For whichever was used.
            self.peer = LOOPBACK
        self.proxy.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pipeline.clear()
        ex = self.active
        if ex is not None:
            ex.abort()
        self.active = None

    def eof_received(self) -> bool | None:
        self.eof = True
        ex = self.parsing
        if ex is not None:  # its body was cut short: it can never be complete
            self.parsing = None
            if ex.started and not ex.finished:
                ex._abort_started()
                return None
            if self.active is not ex:  # pipelined behind the one being answered
                with contextlib.suppress(ValueError):
                    self.pipeline.remove(ex)
                    self.pipeline_bytes -= ex._req_buf_bytes
            ex.abort()  # a client that went away (499): slot and app connection let go
        if self.active is not None:  # half-closed after sending: still owed answers
            return True
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._in_head:  # a head left incomplete by an earlier read: count what it takes
            self._head_fed += len(data)
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # What follows an upgrade request is not HTTP: read no more. If the app
            # switches protocols, those bytes are its (see Exchange._switch); if it answers
            # plainly, the connection closes after that answer.
            self.close_after = True
            self.pause(_PAUSE_STOP)
            self.early = data[exc.args[0] :]
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self._refuse(*exc.__context__.args)
            else:
                log.error("internal error handling a request", exc_info=exc.__context__)
                self.close()
        except httptools.HttpParserError as exc:
            self._refuse(400, b"bad request: %s\n" % str(exc).encode())
        finally:
            self.feeding = False
        if self._in_head and not self.broken:  # the read ended inside a head (not the fast path)
            self._head_incomplete()
        ex = self.active
        if (
            ex is not None
            and ex._req_buf is not None
            and ex.upstream is not None
            and not ex.finished
        ):
            ex.flush_request()

    # -- parser callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = self._head_fed = 0
        self._url = b""
        self._parts: list[bytes] = []
        self._host = self._orig_host = self._xff = self._xfp = self._xfh = self._fwd = self._cl = (
            self._te
        ) = None
        self._drop: set[bytes] | None = None
        self._probe = 0
        self._proxy_req = self._route_ns = self._route_rev = None
        self._route = None
        self._tag = self._tp = self._tstate = self._upgrade = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _Refused(431, _HEAD_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # trailers of a chunked body are not forwarded
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _Refused(431, _HEAD_TOO_LARGE)
        kind = _REQ_KINDS.get(name.lower())
        # The kinds nearly every request carries come first: this runs once per header.
        if kind is None:
            self._parts.extend((name, SEP, value, CRLF))
        elif kind == _K_HOST:
            if self._host is not None:  # which one is meant? Go's server will not guess either
                raise _Refused(400, _TOO_MANY_HOSTS)
            self._host = value
        elif kind == _K_ROUTE_NS:  # routing, not for the app: a service sends it on itself
            self._route_ns = value
        elif kind == _K_ROUTE_REV:
            self._route_rev = value
        elif kind == _K_XFF:
            self._xff = value if self._xff is None else self._xff + b", " + value
        elif kind == _K_PROXY:
            self._proxy_req = value
            self._parts.extend((name, SEP, value, CRLF))
        elif kind == _K_XFP:
            if self._xfp is None:
                self._xfp = value
        elif kind == _K_ORIG_HOST:
            self._orig_host = value
        elif kind == _K_FWD:
            self._fwd = value if self._fwd is None else self._fwd + b", " + value
        elif kind == _K_CL:
            self._cl = value
        elif kind == _K_TE:  # llhttp accepts a request TE only when chunked comes last
            self._te = value if self._te is None else self._te + b", " + value
        elif kind == _K_CONN:
            self._drop = _connection_tokens(value, self._drop)
        elif kind == _K_PROBE:
            asked = value.strip().lower()
            if asked == self.proxy.probe_value:
                self._probe = PROBE_HEALTH
            elif asked == self.proxy.wait_drain_value:
                self._probe = PROBE_WAIT_DRAIN
            else:
                self._parts.extend((name, SEP, value, CRLF))
        elif kind == _K_XFH:
            if self._xfh is None:
                self._xfh = value
            self._parts.extend((name, SEP, value, CRLF))
        elif kind == _K_TAG:
            self._tag = value
            self._parts.extend((name, SEP, value, CRLF))
        elif kind == _K_TRACEPARENT:
            if self._tp is None:
                self._tp = value
            self._parts.extend((name, SEP, value, CRLF))
        elif kind == _K_TRACESTATE:
            self._tstate = value if self._tstate is None else self._tstate + b"," + value
            self._parts.extend((name, SEP, value, CRLF))
        elif kind == _K_UPGRADE:
            self._upgrade = value
        # else: hop-by-hop, dropped

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self.closed or self.close_after:
            return  # after a "Connection: close" exchange nothing more is answered
        parser = self.parser
        method = parser.get_method()
        version = parser.get_http_version()
        # The usual request (HTTP/1.1, a Host, an origin-form target) passes these four
        # cheap checks; anything else is checked in full (maybe refused) by `_check_head`.
        # (llhttp completes no head without a target: `_url[0]` exists; 47 is "/".)
        if self._host is None or version != "1.1" or self._url[0] != 47 or method == b"CONNECT":
            self._check_head(method, version)
        te = self._te
        if te is not None:
            if te.strip().lower() != b"chunked":
                # "gzip, chunked": the app would get gzip bytes labelled plain chunked.
                # Like Go's net/http server: one coding, chunked, or 501.
                raise _Refused(501, b"unsupported transfer encoding: %s\n" % te)
            req_kind = BODY_CHUNKED
        elif self._cl is not None and self._cl.strip() != b"0":
            req_kind = BODY_LENGTH
        else:
            req_kind = BODY_NONE
        span = None
        if self._probe:
            head = b""
        else:
            tracing = self.proxy.tracing
            if tracing is not None:
                span = self._start_span(tracing, method)
            head = self.request_head(method, req_kind)
        upgrade = self._upgrade
        if upgrade is not None:
            if parser.should_upgrade() and not self._probe:  # asked with Connection: upgrade
                head = head[:-2] + b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n\r\n"
            else:
                upgrade = None
        proxy_req = self._proxy_req
        ex = Exchange(
            self,
            head,
            req_kind,
            method == b"HEAD",
            version != "1.0",
            parser.should_keep_alive(),
            self._probe,
            proxy_req is not None and proxy_req.strip().lower() == b"activator",
            self._route,
            method,
            self._url,
        )
        ex.tag = self._tag
        ex.traceparent = self._tp
        ex.upgrade = upgrade
        if span is not None:
            ex.span = span
            if span.is_recording():
                self.proxy.span_started(ex)
        self.parsing = ex
        if self.active is None and not self.pipeline:
            self.active = ex
            ex.start()
        else:
            self.pipeline.append(ex)

    def _check_head(self, method: bytes, version: str) -> None:
        """The head just parsed is not the usual one: refuse what Go's net/http server
        (Knative's queue-proxy and activator) refuses, and turn an
        absolute-form target into the origin-form one the app is sent.

        - a version other than HTTP/1.0 and 1.1 that llhttp lets through (0.9, 2.0): 505;
        - CONNECT: 405 (a reverse proxy in front of one app has nothing to tunnel to);
        - HTTP/1.1 without Host: 400 (HTTP/1.0 may omit it: the service's default is used);
        - the asterisk form `*` other than `OPTIONS *`: 400;
        - an absolute-form target (`GET http://a.example/x?y`): sent on as `/x?y`, and its
          authority is the request's Host, whatever the Host header says (RFC 9112 3.2.2,
          Go's `req.Host = req.URL.Host`); the queue's K-Original-Host still comes first.
        """
        if version != "1.1" and version != "1.0":
            raise _Refused(505, b"unsupported protocol version: HTTP/%s\n" % version.encode())
        if method == b"CONNECT":
            raise _Refused(405, b"method not allowed: CONNECT\n")
        if self._host is None and version == "1.1":
            raise _Refused(400, b"bad request: missing required Host header\n")
        url = self._url
        if url[:1] == b"/":
            return
        if url == b"*":
            if method != b"OPTIONS":
                raise _Refused(400, b"bad request: * is a target for OPTIONS only\n")
            return
        # llhttp has checked the form: scheme "://" authority [path] ["?" query]
        scheme, sep, rest = url.partition(b"://")
        if not sep or not scheme:
            raise _Refused(400, b"bad request: invalid request target\n")
        end = len(rest)
        for stop in (b"/", b"?"):
            at = rest.find(stop, 0, end)
            if at >= 0:
                end = at
        authority = rest[:end].rpartition(b"@")[2]  # without any userinfo, as Go's URL.Host
        target = rest[end:]
        self._url = target if target[:1] == b"/" else b"/" + target
        if authority:  # "http:///x" names none: the Host header stands, as in Go
            self._host = authority

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            ex.client_body(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        if ex is not None:
            ex.client_body_done()
        if len(self.pipeline) >= MAX_PIPELINE:
            self.pause(_PAUSE_PIPELINE)

    def _start_span(self, tracing, method: bytes):
        """Our server span for the request just parsed, continuing the caller's trace; the
        request goes on with our `traceparent` (and the caller's `tracestate`) instead of
        the caller's. None when the caller's unsampled header goes on as it came (see
        `Tracing.http_hop`). Tracing on only."""
        tp, state = self._tp, self._tstate
        span, lines = tracing.http_hop(method, tp, state)
        if lines is None:
            return None
        if tp is not None or state is not None:
            self._parts = drop_headers(self._parts, _TRACE_HEADERS, 0)
        # One element holding whole lines, padded to the [name, ": ", value, CRLF] stride
        # that `drop_headers` walks (its "name" matches no header name).
        self._parts.extend((lines, b"", b"", b""))
        return span

    # -- building the upstream request head

    def request_head(self, method: bytes, req_kind: int) -> bytes:
        """The head sent upstream for the request just parsed (captures in `self._*`)."""
        raise NotImplementedError

    def framing(self, req_kind: int) -> bytes:
        """The body-framing header line the upstream request needs."""
        if req_kind == BODY_CHUNKED:
            return b"Transfer-Encoding: chunked\r\n"
        if self._cl is not None:
            return b"Content-Length: " + self._cl.strip() + CRLF
        return b""

    # -- timeouts

    def watch(self, deadline: float) -> None:
        """Make sure the timer fires by `deadline` (loop time).

        One timer per connection, not per exchange: exchanges on a connection run one at
        a time, so when it fires `_on_timer` checks the active one and sets the timer to
        its next deadline. A keep-alive connection answering many short requests thus
        arms a timer about once per timeout period instead of arming and cancelling one
        per request (a TimerHandle each, ~3 us with uvloop). An earlier deadline (a
        revision with a shorter timeout) moves the timer forward.
        """
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return
            timer.cancel()
        self._timer_at = deadline
        self._timer = self.proxy.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        ex = self.active
        if ex is not None and ex.limits is not None and not ex.finished:
            ex.check_timeouts()
        if self._in_head and not self.broken and not self.closed:
            self._check_head_timeout()

    def _head_incomplete(self) -> None:
        """A read ended inside a request head: refuse it once more than MAX_HEAD_BYTES
        were read for it (httptools keeps a partial header value until it ends, so the
        header-by-header count in `on_header` alone would let one unterminated header
        grow without bound), and bound the time it may take (HEAD_TIMEOUT_S)."""
        if self.closed:
            return
        if self._head_fed > MAX_HEAD_BYTES:
            self._refuse(431, _HEAD_TOO_LARGE)
        elif self._head_fed == 0:  # it began in this read: its clock starts now
            now = self._head_at = self.proxy.loop.time()
            self.watch(now + HEAD_TIMEOUT_S)

    def _check_head_timeout(self) -> None:
        """The timer fired while a head is incomplete: close if it has had its time."""
        now = self.proxy.loop.time() + 0.001  # timers may fire a hair early (see check_timeouts)
        if self.paused:
            # Not read because of us (enough pipelined, a slow app): the client is not late.
            self._head_at = now
        deadline = self._head_at + HEAD_TIMEOUT_S
        if now < deadline:
            self.watch(deadline)
        elif self.active is None and not self.pipeline:
            self._refuse(408, b"request head not complete within %gs\n" % HEAD_TIMEOUT_S)
        else:  # answers are owed: give them, then close; wait for no more heads
            self.broken = True
            self.pause(_PAUSE_STOP)

    # -- flow control and sequencing

    def pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def exchange_done(self, ex: Exchange) -> None:
        """`ex` is answered: close, or answer the next pipelined request."""
        if self.active is ex:
            self.active = None
        if self.paused:
            self.resume(_PAUSE_BODY | _PAUSE_UPSTREAM)
        if self._advancing or self.closed:
            return  # the loop below (further up the stack) continues
        self._advancing = True
        try:
            while self.active is None:
                if self.close_after:
                    self.close()
                    return
                if not self.pipeline:
                    if self.broken or self.eof:
                        self.close()
                    return
                nxt = self.pipeline.popleft()
                self.pipeline_bytes -= nxt._req_buf_bytes
                self.active = nxt
                nxt.start()
        finally:
            self._advancing = False
            if (
                self.paused
                and len(self.pipeline) < MAX_PIPELINE
                and self.pipeline_bytes <= HIGH_WATER
            ):
                self.resume(_PAUSE_PIPELINE)

    def _refuse(self, status: int, body: bytes) -> None:
        """Input that cannot be served: read no more, answer it in its turn, then close.

        In a head (nothing of the request admitted): `status` at once if nothing else is
        owed, else after the answers owed. In the body of a request already parsed (llhttp
        calls on_headers_complete before it reads the body): that request ends now, since
        its body cannot be read to its end. Admitted, it is answered `status` if its
        response has not started (else the connection is cut), which closes the app
        connection that got part of the body and gives back its slot; pipelined, it is
        answered `status` in its turn, without going upstream.
        """
        self.broken = True
        self.pause(_PAUSE_STOP)
        if self.closed:
            return
        ex = self.parsing
        if ex is not None:
            self.parsing = None
            if ex.finished:  # answered already (early answer, 503, 504): nothing to add
                self.close_after = True
                if self.active is None:
                    self.close()
            elif ex is self.active:
                self.close_after = True
                if ex.started:
                    ex._abort_started()
                else:
                    ex.respond_local(status, body)  # its exchange_done closes
            else:
                ex.refuse(status, body)
            return
        if self.active is None and not self.pipeline:
            self.transport.write(local_response(status, body, False, True, False))
            self.close()
            return
        refused = Exchange(self, b"", BODY_NONE, False, True, False, 0, False, None)
        refused.refuse(status, body)
        self.pipeline.append(refused)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()
            # connection_lost follows and aborts what is still active
