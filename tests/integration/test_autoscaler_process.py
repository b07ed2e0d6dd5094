"""`python -m ebb.autoscaler` as a real process: ready file, health, SIGTERM, bad config,
thousands of streams at once, more connections than a low soft open-files limit."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import REPO, hard_open_files_limit_below, low_open_files_limit, wait_until

from ebb.api.autoscaler.v1 import autoscaler_pb2 as pb
from ebb.api.autoscaler.v1 import autoscaler_pb2_grpc as pb_grpc

# Safety net only: the waits end as soon as the process is ready / gone.
WAIT_S = 20.0
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


def _env():
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("EBB_AUTOSCALER_"):
            del env[key]
    return env


async def _wait_for_file(path, proc):
    async def loop():
        while not path.exists():
            assert proc.returncode is None, "autoscaler exited before it was ready"
            await asyncio.sleep(0.02)
        return json.loads(path.read_text())

    return await asyncio.wait_for(loop(), WAIT_S)


async def test_serves_health_and_stops_on_sigterm(tmp_path):
    ready = tmp_path / "ready.json"
    config = tmp_path / "ebb.yaml"
    config.write_text("autoscaler:\n  scale-to-zero-grace-period: 10s\n  stable-window: 30s\n")
    log_path = tmp_path / "autoscaler.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ebb.autoscaler",
            "--grpc-port",
            "0",
            "--stats-port",
            "0",
            "--ready-file",
            str(ready),
            "--config",
            str(config),
            "--tick-interval-s",
            "0.1",
            env=_env(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        info = await _wait_for_file(ready, proc)
        host, port = info["grpc"].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert info["pid"] == proc.pid
        async with grpc.aio.insecure_channel(info["grpc"]) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in (
                "",
                "ebb.api.autoscaler.v1.StatsService",
                "ebb.api.autoscaler.v1.ScalingService",
            ):
                response = await asyncio.wait_for(
                    health.Check(health_pb2.HealthCheckRequest(service=service)), WAIT_S
                )
                assert response.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0
        logs = log_path.read_text()
        assert '"scale-to-zero-grace-period": "10s"' in logs
        assert '"msg": "stopped"' in logs
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_invalid_config_exits_1_with_one_line(tmp_path):
    config = tmp_path / "ebb.yaml"
    config.write_text("autoscaler:\n  max-scale-down-rate: 0.5\n")
    result = subprocess.run(
        [sys.executable, "-m", "ebb.autoscaler", "--grpc-port", "0", "--stats-port", "0",
         "--config", str(config)],
        env=_env(),
        capture_output=True,
        timeout=WAIT_S,
    )
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"autoscaler: config {config}: autoscaler.max-scale-down-rate = 0.5, must be greater than 1.0\n"
    )


async def test_thousands_of_streams_opened_at_once_are_all_served(tmp_path):
    # A fleet's queues reconnect together when the autoscaler restarts. gRPC core cancels
    # new calls past 1,000-3,000 waiting for the server's loop unless told otherwise: with
    # its defaults, 1,500 streams opened at once on one connection were CANCELLED from
    # about the 1,200th. Every one of 2,500 must be answered here.
    streams = 2500
    ready = tmp_path / "ready.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ebb.autoscaler", "--grpc-port", "0", "--stats-port", "0",
        "--ready-file", str(ready), "--log-level", "warning", env=_env(),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        info = await _wait_for_file(ready, proc)
        async with grpc.aio.insecure_channel(info["grpc"]) as channel:
            stub = pb_grpc.StatsServiceStub(channel)
            calls = [stub.StreamStats(timeout=120) for _ in range(streams)]
            stat = pb.Stat(instance="i1", average_concurrency=1.0, period_seconds=1.0)
            stat.revision.namespace, stat.revision.name = "default", "unregistered"

            async def one(call) -> tuple[str, int]:
                try:
                    await call.write(pb.StreamStatsRequest(stats=[stat]))
                    await call.done_writing()
                    response = await call
                except grpc.aio.AioRpcError as exc:
                    return exc.code().name, 0
                return "OK", response.dropped  # an unknown revision's stat is dropped

            outcomes = await asyncio.wait_for(asyncio.gather(*(one(c) for c in calls)), 120)
        assert [o for o in outcomes if o != ("OK", 1)] == []
        assert proc.returncode is None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_more_connections_than_a_low_soft_open_files_limit_are_served(tmp_path):
    # Started with a soft limit of 128 open files, it raises its own to the hard limit:
    # 300 connections held open, and a new one is still answered.
    if hard_open_files_limit_below(1024):
        pytest.skip("the hard limit on open files is too low here")
    ready = tmp_path / "ready.json"
    log_path = tmp_path / "autoscaler.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ebb.autoscaler", "--grpc-port", "0", "--stats-port", "0",
            "--ready-file", str(ready), env=_env(), stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file, preexec_fn=low_open_files_limit(128),
        )
    held: list[socket.socket] = []
    try:
        info = await _wait_for_file(ready, proc)
        host, port = info["grpc"].rsplit(":", 1)
        for _ in range(300):
            held.append(socket.create_connection((host, int(port)), timeout=WAIT_S))
        await asyncio.sleep(0.5)  # let the server accept them all
        async with grpc.aio.insecure_channel(info["grpc"]) as channel:
            response = await asyncio.wait_for(
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()), WAIT_S
            )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        assert '"open_files_limit": ' in log_path.read_text()
    finally:
        for sock in held:
            sock.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_stats_port_serves_other_grpc_clients_and_ends_streams_cleanly(tmp_path):
    """The stats port with two gRPC implementations that are not Ebb's: grpc-go (grpcurl,
    with the proto file, as the port has no reflection) and grpcio. SIGTERM answers an
    open stream with its totals, as the gRPC port does, so a queue reconnects at once."""
    ready = tmp_path / "ready.json"
    log_path = tmp_path / "autoscaler.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ebb.autoscaler", "--grpc-port", "0", "--stats-port", "0",
            "--metrics-port", "0", "--ready-file", str(ready), env=_env(),
            stdout=asyncio.subprocess.DEVNULL, stderr=log_file,
        )
    try:
        info = await _wait_for_file(ready, proc)
        host, port = info["stats"].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0 and info["stats"] != info["grpc"]
        stat = pb.Stat(instance="i1", average_concurrency=2.0, period_seconds=1.0)
        stat.revision.namespace, stat.revision.name = "default", "r-00001"
        async with grpc.aio.insecure_channel(info["grpc"]) as control:
            spec = pb.AutoscalingSpec(revision=stat.revision, reachable=True, ready_instances=1)
            await pb_grpc.ScalingServiceStub(control).RegisterRevision(
                pb.RegisterRevisionRequest(spec=spec)
            )
        body = ('{"stats": [{"instance": "go-1", "revision": {"namespace": "default",'
                ' "name": "r-00001"}, "averageConcurrency": 2, "periodSeconds": 1}]}')
        done = await asyncio.to_thread(
            subprocess.run,
            [GRPCURL, "-plaintext", "-import-path", str(REPO / "protos"), "-proto",
             "ebb/api/autoscaler/v1/autoscaler.proto", "-d", body, info["stats"],
             "ebb.api.autoscaler.v1.StatsService/StreamStats"],
            capture_output=True, text=True, timeout=WAIT_S,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"accepted": "1"}
        async with grpc.aio.insecure_channel(info["stats"]) as channel:
            call = pb_grpc.StatsServiceStub(channel).StreamStats()
            for _ in range(3):
                await call.write(pb.StreamStatsRequest(stats=[stat]))
            metrics = f"http://{info['metrics']}/metrics"

            def open_streams() -> bool:
                text = urllib.request.urlopen(metrics, timeout=5).read().decode()
                return "ebb_autoscaler_stats_port_streams 1.0" in text

            await asyncio.to_thread(wait_until, open_streams, WAIT_S, message="stream open")
            proc.send_signal(signal.SIGTERM)
            response = await asyncio.wait_for(call, WAIT_S)
            assert (response.accepted, response.dropped) == (3, 0)
        assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
