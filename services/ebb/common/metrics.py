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
import socket
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

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
