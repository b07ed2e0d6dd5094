"""Prometheus metrics: each process's own registry, served on an HTTP `/metrics` port.

Convention (every service): a `--metrics-port` flag, env `EBB_<COMPONENT>_METRICS_PORT`,
default 0 (= any free port), bound on the service's `--host`; the service adds
`"metrics": "HOST:PORT"` to its ready file. Usage in a service's `serve()`:

    metrics = MetricsServer(registry, host=cfg.host, port=cfg.metrics_port)
    metrics.start()                        # OSError when the port is taken
    write_ready_file(path, {"grpc": core.address, "metrics": metrics.address})
    ...
    await metrics.aclose()                 # after the gRPC server stopped

Each process builds its own `CollectorRegistry` (never prometheus_client's global one), so
in-process tests can run several services side by side without duplicate-series errors.
The HTTP server runs in a daemon thread: a scrape never blocks the asyncio loop. Metrics
that read live state at scrape time (custom collectors) therefore run on that thread and
must only take snapshots that are safe without the loop (copies of dicts, immutable values).
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from bisect import bisect_left
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from ebb.common.settings import Flag, parse_port

METRICS_PATH = "/metrics"
# serve_forever() checks for shutdown this often; stop() waits at most about this long.
_POLL_S = 0.05

# Latency buckets in seconds for control-plane work (reconciles, ticks, admissions):
# from a fraction of a millisecond to several seconds.
CONTROL_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def metrics_port_flag(component: str) -> Flag:
    """The `--metrics-port` flag of `component` (env `EBB_<COMPONENT>_METRICS_PORT`, default 0)."""
    return Flag(
        "metrics-port",
        f"EBB_{component.upper()}_METRICS_PORT",
        "0",
        "Prometheus /metrics HTTP port (0 = any free port)",
    )


def parse_metrics_port(value: str | int | None) -> int:
    """The flag's value as a port; an empty value means 0 (any free port)."""
    return parse_port("metrics-port", value if value not in (None, "") else 0)


def new_registry() -> CollectorRegistry:
    """A fresh registry for one process (or one in-process test server)."""
    return CollectorRegistry(auto_describe=True)


class _Handler(WSGIRequestHandler):
    """No access log on stderr (stderr carries the service's JSON log lines)."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung scrape never keeps the process alive


class _Server6(_Server):
    address_family = socket.AF_INET6


def _app(registry: CollectorRegistry):
    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"not found; metrics are at {METRICS_PATH}\n".encode()]
        return metrics_app(environ, start_response)

    return app


class MetricsServer:
    """Serves one registry at `http://HOST:PORT/metrics` from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = registry
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.bound_port: int | None = None

    @property
    def address(self) -> str:
        """`host:port` actually bound (after start); IPv6 hosts in brackets."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.bound_port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}{METRICS_PATH}"

    def start(self) -> int:
        """Bind and start serving; returns the bound port. Raises OSError when it cannot bind."""
        if self._server is not None:
            return self.bound_port or 0
        server_class = _Server6 if ":" in self._host else _Server
        try:
            server = make_server(
                self._host, self._port, _app(self.registry), server_class, handler_class=_Handler
            )
        except OSError as exc:
            raise OSError(
                f"metrics: cannot listen on {self._host}:{self._port}: {exc.strerror or exc}"
            ) from exc
        self._server = server
        self.bound_port = server.server_port
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_S},
            name="metrics-http",
            daemon=True,
        )
        self._thread.start()
        return self.bound_port

    def stop(self) -> None:
        """Stop serving and close the socket; idempotent. Blocks for up to ~50 ms."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    async def aclose(self) -> None:
        """stop() off the event loop (shutdown waits for the serving thread's next poll)."""
        await asyncio.to_thread(self.stop)


# ---------------------------------------------------------------------------------------
# The data plane's request metrics (queue and activator)
#
# A proxy answering thousands of requests a second cannot afford prometheus_client's
# per-update lock and label lookup on its event loop (~1.5 us per request with cached
# children, ~3 us with `labels()`); it counts in plain ints instead (`RequestTally.record`,
# ~0.3 us), and a collector turns those ints into families when scraped, on the metrics
# thread. Only the loop writes; a scrape copies lists and dicts with single C-level calls
# (atomic under the GIL), so it reads a consistent-enough snapshot without a lock: a
# histogram's `_count` is its `+Inf` bucket, computed from the same copy.

# Latencies of proxied requests: the control-plane buckets, then up to Knative's default
# revision timeout (300 s), where a held or slow request ends.
REQUEST_BUCKETS_S = (*CONTROL_BUCKETS_S, 30.0, 60.0, 300.0)
RESPONSE_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")  # 1xx: a protocol switch (101)
# A route tag comes from a request header; the number of tags a revision exports is capped
# so that a client making up tags cannot grow the series without bound.
MAX_ROUTE_TAGS = 16
OTHER_TAG = b"_other"  # not a DNS label, so never a real tag
_TAG = re.compile(rb"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")


_CLASS_5XX = RESPONSE_CLASSES.index("5xx")


def _class_index(status: int) -> int:
    index = status // 100 - 1
    return index if 0 <= index <= _CLASS_5XX else _CLASS_5XX


# The index in RESPONSE_CLASSES of every three-digit status, looked up rather than worked
# out on each request.
_CLASS_INDEX = [_class_index(status) for status in range(1000)]


def response_class(status: int) -> str:
    """`1xx` (a WebSocket's 101), `2xx`, `3xx`, `4xx` or `5xx`; anything else an app might
    send (600) counts as 5xx."""
    return RESPONSE_CLASSES[_class_index(status)]


class RequestTally:
    """One revision's requests in plain ints: counts by route tag and response class, a
    latency histogram by class, and refusals and timeouts by reason.

    Written by the event loop only (`record`, `reject`, `timed_out`: O(1), no lock, no
    allocation once a tag is known); read by `request_families` on the scrape thread.
    """

    __slots__ = ("by_tag", "buckets", "sums", "rejected", "timeouts", "_tags")

    def __init__(self, reasons: Iterable[str] = (), kinds: Iterable[str] = ()) -> None:
        self.by_tag: dict[bytes, list[int]] = {b"": [0] * len(RESPONSE_CLASSES)}  # tag -> count per class
        self.buckets = [[0] * (len(REQUEST_BUCKETS_S) + 1) for _ in RESPONSE_CLASSES]
        self.sums = [0.0] * len(RESPONSE_CLASSES)
        # Every reason and kind is exported from the start, at 0, so rate() sees the first.
        self.rejected = dict.fromkeys(reasons, 0)
        self.timeouts = dict.fromkeys(kinds, 0)
        self._tags = 0  # route tags counted under their own name

    def record(self, status: int, tag: bytes, seconds: float) -> None:
        """One answered request: its final status, route tag (b"" for none) and latency."""
        try:
            index = _CLASS_INDEX[status]
        except IndexError:  # not three digits
            index = _CLASS_5XX
        counts = self.by_tag.get(tag)
        if counts is None:
            counts = self._new_tag(tag)
        counts[index] += 1
        self.buckets[index][bisect_left(REQUEST_BUCKETS_S, seconds)] += 1
        self.sums[index] += seconds

    def _new_tag(self, tag: bytes) -> list[int]:
        by_tag = self.by_tag
        if _TAG.fullmatch(tag) is None or self._tags >= MAX_ROUTE_TAGS:
            tag = OTHER_TAG  # junk or one tag too many: not remembered under its own name
            counts = by_tag.get(tag)
            if counts is not None:
                return counts
        else:
            self._tags += 1
        counts = by_tag[tag] = [0] * len(RESPONSE_CLASSES)
        return counts

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def timed_out(self, kind: str) -> None:
        self.timeouts[kind] = self.timeouts.get(kind, 0) + 1


# The `le` labels of REQUEST_BUCKETS_S, built once (not on every scrape).
_REQUEST_BOUNDS = (*(floatToGoString(b) for b in REQUEST_BUCKETS_S), "+Inf")


def cumulative_buckets(live_buckets: list[int]) -> tuple[list[tuple[str, int]], int]:
    """A REQUEST_BUCKETS_S histogram's per-bucket counts (copied once: the loop may be
    writing them) as prometheus_client's cumulative (le, count) pairs, and the total."""
    cumulative, running = [], 0
    for bound, count in zip(_REQUEST_BOUNDS, list(live_buckets), strict=True):
        running += count
        cumulative.append((bound, running))
    return cumulative, running


def request_families(
    prefix: str, component: str, rows: Iterable[tuple[tuple[str, str], RequestTally]]
) -> list[Metric]:
    """`<prefix>_requests_total`, `_request_duration_seconds`, `_rejected_total` and
    `_timeouts_total` for each ((namespace, revision), tally) row. Runs on the scrape
    thread; a class or tag with no request yet has no series."""
    revision_labels = ["namespace", "revision"]
    requests = CounterMetricFamily(
        f"{prefix}_requests",
        f"Requests the {component} answered, by response class and route tag.",
        labels=[*revision_labels, "response_class", "route_tag"],
    )
    duration = HistogramMetricFamily(
        f"{prefix}_request_duration_seconds",
        f"Time from a request's arrival at the {component} to its last response byte.",
        labels=[*revision_labels, "response_class"],
    )
    rejected = CounterMetricFamily(
        f"{prefix}_rejected",
        f"Requests the {component} refused without forwarding them, by reason.",
        labels=[*revision_labels, "reason"],
    )
    timeouts = CounterMetricFamily(
        f"{prefix}_timeouts",
        f"Requests the {component} ended on a timeout, by which one (504, or cut when "
        "the response had started).",
        labels=[*revision_labels, "kind"],
    )
    for (namespace, revision), tally in rows:
        for tag, live_counts in list(tally.by_tag.items()):
            label_tag = tag.decode("ascii", "replace")
            for index, count in enumerate(list(live_counts)):
                if count:
                    requests.add_metric([namespace, revision, RESPONSE_CLASSES[index], label_tag], count)
        sums = list(tally.sums)
        for index, live_buckets in enumerate(tally.buckets):
            cumulative, running = cumulative_buckets(live_buckets)
            if not running:
                continue
            duration.add_metric(
                [namespace, revision, RESPONSE_CLASSES[index]], cumulative, sums[index]
            )
        for reason, count in list(tally.rejected.items()):
            rejected.add_metric([namespace, revision, reason], count)
        for kind, count in list(tally.timeouts.items()):
            timeouts.add_metric([namespace, revision, kind], count)
    return [requests, duration, rejected, timeouts]
