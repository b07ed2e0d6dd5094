"""ebb.common.metrics.MetricsServer on real sockets: port 0, /metrics only, never blocks the loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from ebb.common.metrics import MetricsServer, new_registry


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.read().decode()


def test_serves_its_registry_on_a_free_port():
    registry = new_registry()
    Gauge("ebb_test_level", "A level.", registry=registry).set(7)
    server = MetricsServer(registry)
    port = server.start()
    try:
        assert port > 0 and server.bound_port == port
        assert server.address == f"127.0.0.1:{port}"
        assert server.start() == port  # idempotent
        families = {f.name: f for f in text_string_to_metric_families(_get(server.url))}
        assert families["ebb_test_level"].samples[0].value == 7
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(f"http://{server.address}/other")
        assert err.value.code == 404
        err.value.close()
    finally:
        server.stop()
    server.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        _get(server.url)


def test_busy_port_is_an_oserror_naming_it():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"metrics: cannot listen on 127.0.0.1:{port}"):
            MetricsServer(new_registry(), port=port).start()


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this machine")
    server = MetricsServer(new_registry(), host="::1")
    port = server.start()
    try:
        assert server.address == f"[::1]:{port}"
        _get(server.url)
    finally:
        server.stop()


class _SlowCollector:
    """A scrape that takes a while (on the metrics thread)."""

    def __init__(self, started: threading.Event) -> None:
        self._started = started

    def collect(self):
        self._started.set()
        time.sleep(0.3)
        family = GaugeMetricFamily("ebb_test_slow", "Slow.")
        family.add_metric([], 1)
        yield family


async def test_a_slow_scrape_does_not_block_the_event_loop():
    registry = new_registry()
    started = threading.Event()
    registry.register(_SlowCollector(started))
    server = MetricsServer(registry)
    server.start()
    try:
        scrape = asyncio.ensure_future(asyncio.to_thread(_get, server.url))
        await asyncio.to_thread(started.wait, 5)
        loop = asyncio.get_running_loop()
        before = loop.time()
        await asyncio.sleep(0.01)
        assert loop.time() - before < 0.2  # the loop ran while the scrape was collecting
        assert "ebb_test_slow 1.0" in await scrape
    finally:
        await server.aclose()
