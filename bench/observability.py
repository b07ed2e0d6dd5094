"""What the queue's observability costs per request, in process: CPU µs, paired.

The real `ebb.queue.proxy.Proxy` answers keep-alive requests from one client connection
through one pooled app connection, both on fake transports: no sockets and no system
calls, so what is measured is the Python the queue runs per request (parse, admit,
forward, answer, account). Configurations are switched on and off in the same process
between slices of requests, interleaved, and the median CPU per request of each is
reported with its difference from `metrics`. Noise from other processes on a shared
machine then hits every configuration alike; CPU time (process time, so the request
log's writer thread is counted) rather than wall time keeps out time spent waiting for
a core.

    python -m bench.observability                      # 40 slices of 10,000 requests
    python -m bench.observability --slices 10 --requests 2000   # a quick look

Configurations:
  none          request counting replaced by a no-op, no log, no tracing (the proxy alone)
  metrics       the default counting (`RequestTally`), request log off
  metrics+log   and the request log, to a file as under `ebb up`
  +tracing1%    and tracing, parentbased_traceidratio 0.01; no incoming traceparent,
                so the queue is the first hop and decides every trace itself
  unsampled-caller  metrics+log, tracing off, the request carrying an unsampled
                traceparent (what the activator sends at 1 %)
  behind-unsampled  the same with tracing 1 % on: compare with `unsampled-caller`
  before:metrics, before:metrics+log  with `--before DIR`: the same, with the request
                counting (ebb/common/metrics.py) and the request log (ebb/queue/requestlog.py)
                of another source tree, for a before/after in one process:
                mkdir /tmp/before && git archive HEAD services | tar -x -C /tmp/before
                python -m bench.observability --before /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import statistics
import tempfile
import time

import uvloop

from bench.fakes import MemoryTransport
from ebb.common import tracing as tracing_mod
from ebb.common.http1 import TIMEOUT_KINDS, UpstreamConnection
from ebb.queue.metrics import REJECT_REASONS
from ebb.queue.proxy import Proxy
from ebb.queue.requestlog import RequestLog

REQUEST = (
    b"GET /hello/world?x=1 HTTP/1.1\r\nHost: hello.default.localhost\r\nUser-Agent: bench\r\n\r\n"
)
UNSAMPLED = b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nContent-Type: text/plain\r\n\r\nHello, world!\n"
)
CONFIGS = ("none", "metrics", "metrics+log", "+tracing1%", "unsampled-caller", "behind-unsampled")
BEFORE = ("before:metrics", "before:metrics+log")


class _NoTally:
    """Counting switched off: the proxy's calls land on no-ops."""

    def record(self, status, tag, seconds) -> None:
        pass

    def reject(self, reason) -> None:
        pass

    def timed_out(self, kind) -> None:
        pass


def _load(path: str, name: str):
    """The module at `path`, imported under `name` (beside the installed one)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _new_log(log_class: type, stream):
    return log_class(
        namespace="default", revision="hello-00001", instance="hello-00001-abc", stream=stream
    )


class Rig:
    """One proxy, one client connection, one app connection; configurations swap the
    proxy's tally, request log and tracing between slices."""

    def __init__(self, log_path: str, before: str | None = None) -> None:
        self.stream = open(log_path, "wb")  # noqa: SIM115 (closed in close())
        self.proxy = Proxy(app_port=8080, span_attributes={"ebb.revision": "hello-00001"})
        self.tally = self.proxy.tally
        self.log = _new_log(RequestLog, self.stream)
        self.before_tally = self.before_log = None
        if before:
            tree = os.path.join(before, "services", "ebb")
            metrics = _load(os.path.join(tree, "common", "metrics.py"), "_before_metrics")
            self.before_tally = metrics.RequestTally(REJECT_REASONS, TIMEOUT_KINDS)
            requestlog = _load(os.path.join(tree, "queue", "requestlog.py"), "_before_requestlog")
            self.before_log = _new_log(requestlog.RequestLog, self.stream)
        env = {"EBB_TRACING": "1", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
               "OTEL_TRACES_SAMPLER_ARG": "0.01", "OTEL_TRACES_EXPORTER": "none"}  # fmt: skip
        self.tracing = tracing_mod.setup("queue", env, set_global=False)
        self.app = UpstreamConnection(self.proxy.pool)
        self.app.connection_made(MemoryTransport(keep=False))
        self.proxy.pool.idle.append(self.app)
        self.client = self.proxy.connection_class(self.proxy)
        self.client.connection_made(MemoryTransport(keep=False))

    def configure(self, config: str) -> bytes:
        """Switch to `config`; returns the request to send."""
        proxy = self.proxy
        proxy.tally = _NoTally() if config == "none" else self.tally
        proxy.request_log = self.log if config not in ("none", "metrics") else None
        if config in BEFORE:
            proxy.tally = self.before_tally
            proxy.request_log = self.before_log if config.endswith("+log") else None
        proxy.tracing = self.tracing if config in ("+tracing1%", "behind-unsampled") else None
        if config in ("unsampled-caller", "behind-unsampled"):
            return REQUEST[:-2] + UNSAMPLED + b"\r\n"
        return REQUEST

    def run(self, request: bytes, count: int) -> float:
        """CPU µs per request over `count` requests."""
        client, app = self.client.data_received, self.app.data_received
        start = time.process_time()
        for _ in range(count):
            client(request)
            app(RESPONSE)
        if proxy_log := self.proxy.request_log:
            proxy_log.flush()
        return (time.process_time() - start) / count * 1e6

    def close(self) -> None:
        self.log.close()
        if self.before_log is not None:
            self.before_log.close()
        self.stream.close()
        self.tracing.shutdown()


async def measure(
    slices: int, requests: int, seed: int, before: str | None = None
) -> dict[str, list[float]]:
    """`slices` rounds; each runs every configuration once, in a shuffled order."""
    rng = random.Random(seed)
    configs = (*CONFIGS, *BEFORE) if before else CONFIGS
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(os.path.join(tmp, "queue.log"), before)
        try:
            for config in configs:  # warm up every path
                rig.run(rig.configure(config), requests // 4 or 1)
            out: dict[str, list[float]] = {config: [] for config in configs}
            for _ in range(slices):
                order = list(configs)
                rng.shuffle(order)
                for config in order:
                    out[config].append(rig.run(rig.configure(config), requests))
                    await asyncio.sleep(0)  # let the loop drop the cancelled timers
        finally:
            rig.close()
    return out


def summary(results: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median µs per configuration, and its median paired difference from `metrics`
    (each slice against the `metrics` slice of the same round)."""
    base = results["metrics"]
    return {
        config: {
            "median_us": round(statistics.median(values), 2),
            "min_us": round(min(values), 2),
            "vs_metrics_us": round(
                statistics.median(v - b for v, b in zip(values, base, strict=True)), 2
            ),
        }
        for config, values in results.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.observability", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--requests", type=int, default=10_000, help="requests per slice")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--before", metavar="DIR", help="another source tree to compare with")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    # uvloop, as the queue runs (its timers and call_soon are on the request path).
    results = uvloop.run(measure(args.slices, args.requests, args.seed, args.before))
    table = summary(results)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"{'configuration':<18} {'median µs':>10} {'min µs':>8} {'vs metrics µs':>14}")
    for config, row in table.items():
        print(
            f"{config:<18} {row['median_us']:>10.2f} {row['min_us']:>8.2f} {row['vs_metrics_us']:>+14.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
