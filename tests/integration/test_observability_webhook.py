"""The webhook's /metrics: a real `python -m ebb.webhook` over gRPC, and AdmissionReview
(plain HTTP in-process, as the transport tests do) on the same counter."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import sys
import urllib.request

import grpc
import pytest
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families

from ebb.api.serving.v1 import resources_pb2
from ebb.api.webhook.v1 import admission_pb2, admission_pb2_grpc
from ebb.common.metrics import MetricsServer, new_registry
from ebb.webhook.admission import AdmissionSettings
from ebb.webhook.metrics import WebhookMetrics
from ebb.webhook.server import AdmissionReviewServer

WAIT_S = 20.0  # safety net only
FAMILY = "ebb_webhook_admissions"
SAMPLE = "ebb_webhook_admissions_total"
SERVICE = {
    "metadata": {"name": "hello", "namespace": "default"},
    "spec": {"template": {"spec": {"containers": [{"command": ["python", "app.py"]}]}}},
}


def _scrape(url: str) -> dict[tuple, float]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families[FAMILY].type == "counter"
    return {
        tuple(sorted(s.labels.items())): s.value for s in families[FAMILY].samples if s.name == SAMPLE
    }


def _key(**labels) -> tuple:
    return tuple(sorted(labels.items()))


async def test_webhook_process_counts_grpc_admissions(tmp_path):
    ready = tmp_path / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EBB_", "OTEL_"))}
    with (tmp_path / "webhook.log").open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ebb.webhook",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--ready-file",
            str(ready),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        async def wait_ready():
            while not ready.exists():
                assert proc.returncode is None, (tmp_path / "webhook.log").read_text()
                await asyncio.sleep(0.02)
            return json.loads(ready.read_text())

        info = await asyncio.wait_for(wait_ready(), WAIT_S)
        assert info["metrics"].startswith("127.0.0.1:")
        url = f"http://{info['metrics']}/metrics"
        assert await asyncio.to_thread(_scrape, url) == {}  # no admission yet

        resource = resources_pb2.Resource()
        json_format.ParseDict(SERVICE, resource.service)
        async with grpc.aio.insecure_channel(info["grpc"]) as channel:
            stub = admission_pb2_grpc.AdmissionServiceStub(channel)
            defaulted = await stub.Default(
                admission_pb2.DefaultRequest(resource=resource), timeout=WAIT_S
            )
            verdict = await stub.Validate(
                admission_pb2.ValidateRequest(
                    resource=defaulted.resource, operation=admission_pb2.OPERATION_CREATE
                ),
                timeout=WAIT_S,
            )
            assert verdict.allowed
        counts = await asyncio.to_thread(_scrape, url)
        common = {"kind": "Service", "operation": "CREATE", "transport": "grpc", "verdict": "allowed"}
        assert counts == {_key(action="default", **common): 1, _key(action="validate", **common): 1}

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def review_server():
    metrics = WebhookMetrics(new_registry())
    server = AdmissionReviewServer(AdmissionSettings(), metrics=metrics)
    port = await server.start("127.0.0.1", 0, None)
    scrape = MetricsServer(metrics.registry)
    scrape.start()
    try:
        yield port, scrape.url
    finally:
        await server.close()
        await scrape.aclose()


def _post(port: int, path: str, body: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        reply.read()
        return reply.status
    finally:
        conn.close()


async def test_admission_review_counts_by_verdict(review_server):
    port, url = review_server
    obj = json.loads(json.dumps(SERVICE))
    obj["spec"]["traffic"] = [{"percent": 90}]
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "serving.knative.dev", "version": "v1", "kind": "Service"},
            "operation": "CREATE",
            "object": obj,
        },
    }
    assert await asyncio.to_thread(_post, port, "/validate", json.dumps(review).encode()) == 200
    assert await asyncio.to_thread(_post, port, "/mutate", json.dumps(review).encode()) == 200
    assert await asyncio.to_thread(_post, port, "/validate", b"[1, 2") == 400
    counts = await asyncio.to_thread(_scrape, url)
    https = {"transport": "https"}
    assert counts == {
        _key(kind="Service", operation="CREATE", action="validate", verdict="denied", **https): 1,
        _key(kind="Service", operation="CREATE", action="default", verdict="allowed", **https): 1,
        _key(kind="unknown", operation="unknown", action="validate", verdict="error", **https): 1,
    }
