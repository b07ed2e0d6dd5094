"""The proxies' own Python work per request, without sockets: steady on a noisy machine.

    python -m bench.hotpath [--requests 10000] [--batches 15]

Drives the real activator and queue code (`ebb.common.http1` and each service's hooks)
through fake transports: a keep-alive client connection sends a small GET, a pooled
upstream connection answers it (15-byte body), in a loop, and the thread CPU time per
request is printed: the minimum and the median over batches (other work on the machine
only ever adds time, so the minimum is the steadiest figure). No kernel, no event-loop
I/O: this is the part of a hop's CPU that the Python code decides, and it varies far less
with other work on the machine than wrk figures do. Run it with PYTHONPATH=<tree> to
compare two source trees.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import uvloop

from bench.fakes import MemoryTransport
from ebb.activator.endpoints import RevisionSpec
from ebb.activator.proxy import Activator
from ebb.common import http1
from ebb.queue.proxy import Proxy

# A request straight to the activator (as wrk sends it in the suite's activator path), and
# what the activator sends the queue.
TO_ACTIVATOR = (
    b"GET / HTTP/1.1\r\nHost: bench.default.localhost\r\nKnative-Serving-Namespace: default\r\n"
    b"Knative-Serving-Revision: bench\r\nUser-Agent: wrk\r\n\r\n"
)
# What Ebb's gateway Envoy sends the activator (lowercase names, its forwarding headers and
# request id, the route's headers): more headers, and forwarding values to pass on.
VIA_GATEWAY = (
    b"GET / HTTP/1.1\r\nhost: bench.default.localhost\r\nuser-agent: wrk\r\n"
    b"x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n"
    b"x-request-id: 8f3c2a4e-5b1d-4e6f-9a7b-0c1d2e3f4a5b\r\n"
    b"k-original-host: bench.default.localhost\r\nknative-serving-namespace: default\r\n"
    b"knative-serving-revision: bench\r\nx-envoy-expected-rq-timeout-ms: 300000\r\n\r\n"
)
TO_QUEUE = (
    b"GET / HTTP/1.1\r\nHost: bench.default.localhost\r\nKnative-Serving-Namespace: default\r\n"
    b"Knative-Serving-Revision: bench\r\nUser-Agent: wrk\r\nX-Forwarded-For: 127.0.0.1\r\n"
    b"K-Proxy-Request: activator\r\n\r\n"
)
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\nHello from ebb\n"


def _wire(handler: http1.Handler, pool: http1.UpstreamPool, request: bytes) -> Callable[[], bytes]:
    """One client connection and one pooled upstream connection of `handler`; returns a
    function that sends `request`, answers it and returns what the client got last."""
    up = http1.UpstreamConnection(pool)
    up.connection_made(MemoryTransport(keep=False))
    pool.idle.append(up)
    conn = handler.connection_class(handler)
    client = MemoryTransport(keep=False)
    conn.connection_made(client)

    def one() -> bytes:
        conn.data_received(request)
        up.data_received(ANSWER)
        return client.last

    return one


def _per_request_us(one: Callable[[], bytes], requests: int, batches: int) -> tuple[float, float]:
    """(minimum, median) over `batches` of thread CPU µs per request."""
    for _ in range(2000):  # warm-up
        one()
    if not one().endswith(b"Hello from ebb\n"):
        raise RuntimeError("the fake exchange did not complete")
    figures = []
    for _ in range(batches):
        start = time.thread_time()
        for _ in range(requests):
            one()
        figures.append((time.thread_time() - start) / requests * 1e6)
    return min(figures), statistics.median(figures)


async def measure(requests: int, batches: int = 1) -> dict[str, tuple[float, float]]:
    activator = Activator()
    activator.apply([RevisionSpec("default", "bench", addresses=("127.0.0.1:9",), timeout_s=60)], [], True)
    (instance,) = activator.revision("default", "bench").throttler.instances
    queue = Proxy(app_port=9)
    return {
        "activator": _per_request_us(_wire(activator, instance.handle, TO_ACTIVATOR), requests, batches),
        "activator via gateway": _per_request_us(
            _wire(activator, instance.handle, VIA_GATEWAY), requests, batches
        ),
        "queue": _per_request_us(_wire(queue, queue.pool, TO_QUEUE), requests, batches),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="requests per batch")
    parser.add_argument("--batches", type=int, default=15)
    args = parser.parse_args(argv)
    for name, (low, mid) in uvloop.run(measure(args.requests, args.batches)).items():
        print(f"{name}: {low:.2f} us (min), {mid:.2f} us (median) of Python CPU per request "
              "(no sockets, no request log)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
