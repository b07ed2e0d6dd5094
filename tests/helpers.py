"""Shared test helpers: free ports, the repo root, bounded polling, fakes (import as `helpers`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import importlib.util
import os
import socket
import struct
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE_APP = REPO / "samples" / "hello" / "app.py"


@functools.cache
def hello_module():
    """The sample app as a module (`pattern_bytes`, its WebSocket frames), under a name no
    other test uses."""
    spec = importlib.util.spec_from_file_location("ebb_sample_hello_app", SAMPLE_APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The data plane's metric families (what a scrape of a queue or the activator must list).
QUEUE_METRIC_NAMES = frozenset(
    {
        "ebb_queue_requests",
        "ebb_queue_request_duration_seconds",
        "ebb_queue_inflight_requests",
        "ebb_queue_queue_depth",
        "ebb_queue_rejected",
        "ebb_queue_timeouts",
        "ebb_queue_ready",
        "ebb_queue_request_logs_dropped",
    }
)
ACTIVATOR_METRIC_NAMES = frozenset(
    {
        "ebb_activator_requests",
        "ebb_activator_request_duration_seconds",
        "ebb_activator_inflight_requests",
        "ebb_activator_queue_depth",
        "ebb_activator_held_requests",
        "ebb_activator_hold_duration_seconds",
        "ebb_activator_rejected",
        "ebb_activator_timeouts",
        "ebb_activator_instances",
        "ebb_activator_revisions",
    }
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value; fail with `message` after the deadline."""
    deadline = time.monotonic() + timeout_s
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last error on timeout
            last_exc = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {message}" + (f" (last error: {last_exc!r})" if last_exc else ""))


async def until(condition, what: str, timeout_s: float = 20.0) -> None:
    """Await until `condition()` is true, polling; fail after `timeout_s` (a hang guard,
    not a performance threshold)."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def autoscaler_with_revision(namespace: str = "ns", name: str = "rev-1"):
    """An in-process AutoscalerServer (default settings, clock fixed at 100 s) with one
    reachable revision of one ready instance registered."""
    from ebb.autoscaler.multiscaler import RevisionSpec
    from ebb.autoscaler.server import AutoscalerServer
    from ebb.autoscaler.settings import AutoscalerSettings

    owner = AutoscalerServer(AutoscalerSettings(), clock=lambda: 100.0)
    owner.register(
        RevisionSpec(
            namespace=namespace,
            name=name,
            annotations={},
            container_concurrency=0,
            reachable=True,
            ready_instances=1,
        )
    )
    return owner


def low_open_files_limit(soft: int = 128):
    """A preexec_fn: the child starts with a small soft limit on open files (the hard
    limit unchanged), as on a machine whose default soft limit is low."""
    import resource

    def apply() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


def hard_open_files_limit_below(minimum: int) -> bool:
    """True when this machine's hard limit on open files is under `minimum` (tests that
    need more connections than that skip)."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard != resource.RLIM_INFINITY and hard < minimum


def websocket_echo(port: int, host: str, messages: list[bytes], path: str = "/ws",
                   timeout_s: float = 10.0, headers: dict[str, str] | None = None,
                   ) -> tuple[int, list[bytes], dict[str, str]]:
    """Open a WebSocket to the sample app's echo at 127.0.0.1:port (through whatever
    proxies), send each message as a text frame, read the echoes, close cleanly.
    Returns (handshake status, echoes, handshake headers with lower-case names); the echoes
    are empty when the handshake failed. Raises AssertionError on a wrong accept key or an
    unclean close."""
    app = hello_module()
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n"
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in (headers or {}).items()) + b"\r\n"
        )
        stream = sock.makefile("rb")
        status = int(stream.readline().split()[1])
        answered = {}
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            answered[name.strip().lower()] = value.strip()
        if status != 101:
            return status, [], answered
        accept = base64.b64encode(hashlib.sha1(key + app.WS_GUID).digest()).decode()
        assert answered.get("sec-websocket-accept") == accept, answered
        echoes = []
        for message in messages:
            sock.sendall(app.ws_frame(1, message, mask=os.urandom(4)))
            frame = app.read_ws_frame(stream)
            assert frame is not None and frame[0] == 1, frame
            echoes.append(frame[1])
        sock.sendall(app.ws_frame(8, (1000).to_bytes(2, "big"), mask=os.urandom(4)))
        assert app.read_ws_frame(stream) == (8, (1000).to_bytes(2, "big"))
        assert stream.read() == b""  # the app closed, and the proxies passed it on
        return status, echoes, answered


class FakeTransport:
    """An asyncio transport without a socket, for a protocol driven by hand: it keeps what
    the protocol writes (`out`) and whether it paused reading, closed or aborted. Given the
    `protocol`, `close` and `abort` end the connection as asyncio's transports do
    (connection_lost on the next loop turn)."""

    def __init__(self, protocol: asyncio.BaseProtocol | None = None) -> None:
        self.protocol = protocol
        self.out = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def _lose(self) -> None:
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default


def h2_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """The HTTP/2 frames in `data` (whole frames, after any preface), each as (type, flags,
    stream id, payload); parsed here, not by the code under test."""
    out, offset = [], 0
    while offset < len(data):
        high, low, kind, flags, stream_id = struct.unpack_from(">BHBBI", data, offset)
        size = high << 16 | low
        out.append((kind, flags, stream_id & 0x7FFFFFFF, data[offset + 9 : offset + 9 + size]))
        offset += 9 + size
    return out


class H2Peer:
    """A client's side of an HTTP/2 server connection driven by hand: `send` feeds the
    server's protocol, `frames` reads what it wrote back since the last call, `decode`
    reads a header block with an HPACK decoder of its own."""

    def __init__(self, conn: asyncio.Protocol, transport: FakeTransport) -> None:
        import hpack

        self.conn = conn
        self.transport = transport
        self.encoder = hpack.Encoder()  # indexes and Huffman-codes, as real clients do
        self.decoder = hpack.Decoder()
        self._read = 0

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        """Every frame written since the last call: (type, flags, stream, payload)."""
        data = bytes(self.transport.out[self._read :])
        self._read += len(data)
        return h2_frames(data)

    def decode(self, payload: bytes) -> dict[bytes, bytes]:
        return dict(self.decoder.decode(payload, raw=True))


def grpc_frame(message: bytes, compressed: int = 0) -> bytes:
    """gRPC's length-prefixed message (the compressed flag as given)."""
    return bytes((compressed,)) + struct.pack(">I", len(message)) + message


def stats_request(*stats: tuple[str, float], revision: str = "rev-1") -> bytes:
    """A serialized StreamStatsRequest: a Stat per (instance, concurrency) of revision
    ns/`revision`, each with as many requests as its concurrency over a 1 s period."""
    from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb

    request = pb.StreamStatsRequest()
    for instance, concurrency in stats:
        request.stats.add(
            instance=instance,
            revision=pb.RevisionKey(namespace="ns", name=revision),
            average_concurrency=concurrency,
            request_count=concurrency,
            process_uptime_seconds=10,
            period_seconds=1,
        )
    return request.SerializeToString()


class FakeScaling:
    """The controller's ScalingClient, reduced to what a pass reads: the decisions a test
    sets, and the specs registered."""

    def __init__(self) -> None:
        self.decisions: dict = {}
        self.specs: dict = {}

    def register(self, key, spec) -> None:
        self.specs[key] = spec

    def unregister(self, key) -> None:
        self.specs.pop(key, None)

    def known(self) -> set:
        return set(self.specs)


class Ads:
    """An xDS server whose every snapshot Envoy ACKs at once."""

    def set_snapshot(self, snapshot) -> None:
        pass

    async def wait_snapshot_acked(self, snapshot, timeout_s: float) -> bool:
        return True


@contextlib.asynccontextmanager
async def stats_reporting(target: str, *, flush_timeout_s: float = 0.5, **options):
    """A started `StatsReporter` for one revision (ns/rev-1), fast periods and backoff
    unless `options` say otherwise; stopped (bounded) on exit."""
    from ebb.common.stats import Report
    from ebb.common.statsreporter import StatsReporter

    reporter = StatsReporter(
        target,
        instance="i1",
        collect=lambda now: (("ns", "rev-1", Report(1.0, 0.0, 1, 0, 1.0)),),
        started_at=time.monotonic(),
        **{"period_s": 0.02, "initial_backoff_s": 0.02, "max_backoff_s": 0.1, **options},
    )
    reporter.start()
    try:
        yield reporter
    finally:
        await asyncio.wait_for(reporter.stop(flush_timeout_s=flush_timeout_s), 20.0)
