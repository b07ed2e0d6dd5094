"""The queue as a process (`python -m ebb.queue`) in front of the hello sample app."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import pytest
from helpers import hard_open_files_limit_below, low_open_files_limit, websocket_echo
from queue_helpers import (
    REPO,
    REVISION,
    RawResponseReader,
    free_port,
    hello_module,
    raw_exchange,
    request,
    run_app,
    run_queue,
    wait_until,
)

from ebb.common import http1
from ebb.queue.proxy import Proxy

pattern_bytes = hello_module().pattern_bytes
HELLO = f"Hello from {REVISION}!\n".encode()
MB = 1024 * 1024
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


@pytest.fixture(scope="module")
def app():
    with run_app() as app:
        yield app


@pytest.fixture(scope="module")
def queue(app, tmp_path_factory):
    with run_queue(tmp_path_factory.mktemp("queue"), app.port, "--timeout-seconds", "60") as queue:
        yield queue


def grpcurl(*args: str) -> str:
    done = subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    return done.stdout


def health(address: str) -> str:
    return json.loads(grpcurl(address, "grpc.health.v1.Health/Check"))["status"]


def split_response(raw: bytes) -> tuple[bytes, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_line, headers, body


# -- proxying


def test_more_clients_than_a_low_soft_open_files_limit_are_served(app, tmp_path):
    # Started with a soft limit of 128 open files, the queue raises its own to the hard
    # limit (as every Ebb service does in ebb.common.server.run): 300 client connections
    # held open, and a new client still gets the app's answer.
    if hard_open_files_limit_below(1024):
        pytest.skip("the hard limit on open files is too low here")
    with run_queue(tmp_path, app.port, preexec_fn=low_open_files_limit(128)) as queue:
        held = []
        try:
            for _ in range(300):
                held.append(socket.create_connection(("127.0.0.1", queue.http_port), timeout=10))
            status, _, body = queue.request()
            assert (status, body) == (200, HELLO)
        finally:
            for sock in held:
                sock.close()
        assert '"open_files_limit": ' in queue.log()


def test_get(queue):
    status, headers, body = queue.request("GET", "/")
    assert (status, body) == (200, HELLO)
    assert headers["content-type"].startswith("text/plain")


def test_post_with_body_is_echoed(queue):
    status, _, body = queue.request("POST", "/echo", body=b"a small body")
    assert (status, body) == (200, b"a small body")


def test_status_and_head_pass_through(queue):
    assert queue.request("GET", "/?status=418")[0] == 418
    conn = http.client.HTTPConnection("127.0.0.1", queue.http_port, timeout=10)
    try:
        conn.request("HEAD", "/?status=200")
        response = conn.getresponse()
        assert (response.status, response.getheader("Content-Length"), response.read()) == (
            200,
            str(len(HELLO)),
            b"",
        )
        conn.request("GET", "/")  # the connection is still in step after a HEAD
        assert conn.getresponse().read() == HELLO
    finally:
        conn.close()


def test_large_download_intact(queue):
    size = 25 * MB + 123
    status, headers, body = queue.request("GET", f"/?bytes={size}")
    assert status == 200
    assert int(headers["content-length"]) == size
    assert hashlib.sha256(body).digest() == hashlib.sha256(pattern_bytes(size)).digest()


def test_large_upload_intact(queue):
    payload = pattern_bytes(20 * MB + 7)[::-1]
    status, headers, body = queue.request("PUT", "/upload", body=payload)
    assert status == 200
    assert int(headers["content-length"]) == len(payload)
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()


def test_large_chunked_upload_and_chunked_response_intact(queue):
    piece = pattern_bytes(1 * MB - 3)

    def pieces():
        for _ in range(21):
            yield piece

    # an iterable body without Content-Length is sent chunked; the app echoes it chunked
    status, headers, body = queue.request("POST", "/chunked", body=pieces())
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert hashlib.sha256(body).digest() == hashlib.sha256(piece * 21).digest()


def test_chunked_response_streams(queue, app):
    # The app sends its first chunk, then waits at a gate until the test opens it: the
    # first chunk can only arrive if the queue forwards it without waiting for the rest.
    with socket.create_connection(("127.0.0.1", queue.http_port), timeout=10) as sock:
        sock.sendall(b"GET /?chunks=3&hold=stream HTTP/1.1\r\nHost: hello\r\n\r\n")
        reader = RawResponseReader(sock)
        status, headers = reader.head()
        assert (status, headers["transfer-encoding"]) == (200, "chunked")
        assert reader.next_chunk() == b"chunk 0\n"
        assert app.waiting("stream") == 1
        app.release("stream")
        assert [reader.next_chunk() for _ in range(3)] == [b"chunk 1\n", b"chunk 2\n", b""]


def test_keep_alive_reuses_client_and_app_connections(queue):
    conn = http.client.HTTPConnection("127.0.0.1", queue.http_port, timeout=10)
    try:
        peers, sockets = [], []
        for _ in range(4):
            conn.request("GET", "/conn")
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Connection") is None  # keep-alive is HTTP/1.1's default
            peers.append(response.read())
            sockets.append(conn.sock)
        assert len(set(map(id, sockets))) == 1  # one client connection
        assert len(set(peers)) == 1  # one pooled connection to the app
    finally:
        conn.close()


def test_connection_close_is_honoured(queue):
    raw = raw_exchange(queue.http_port, b"GET / HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n")
    status_line, headers, body = split_response(raw)  # raw_exchange returns once the queue closed
    assert status_line == b"HTTP/1.1 200 OK"
    assert headers["connection"] == "close"
    assert body == HELLO


def test_http10_client(queue):
    status_line, headers, body = split_response(raw_exchange(queue.http_port, b"GET / HTTP/1.0\r\n\r\n"))
    assert status_line.split()[1] == b"200"
    assert body == HELLO
    # a chunked answer cannot go to an HTTP/1.0 client: plain body, closed at the end
    status_line, headers, body = split_response(
        raw_exchange(queue.http_port, b"GET /?chunks=2 HTTP/1.0\r\n\r\n")
    )
    assert "transfer-encoding" not in headers
    assert body == b"chunk 0\nchunk 1\n"


def test_http10_keep_alive(queue):
    with socket.create_connection(("127.0.0.1", queue.http_port), timeout=10) as sock:
        reader = RawResponseReader(sock)
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status, headers, body = reader.response()
            assert (status, headers["connection"], body) == (200, "keep-alive", HELLO)


def test_pipelined_requests_answered_in_order(queue):
    with socket.create_connection(("127.0.0.1", queue.http_port), timeout=10) as sock:
        sock.sendall(
            b"GET /?sleep=50 HTTP/1.1\r\nHost: one\r\n\r\n"
            b"GET /headers HTTP/1.1\r\nHost: two\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: three\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /?status=201 HTTP/1.1\r\nHost: four\r\nK-Network-Probe: queue\r\n\r\n"
            b"GET /?status=202 HTTP/1.1\r\nHost: five\r\nConnection: close\r\n\r\n"
        )
        reader = RawResponseReader(sock)
        assert reader.response()[::2] == (200, HELLO)
        status, _, body = reader.response()
        assert (status, json.loads(body)["Host"]) == (200, "two")
        assert reader.response()[::2] == (200, b"hello")
        assert reader.response()[::2] == (200, b"queue")
        assert reader.response()[0] == 202
        assert reader.at_eof()


def test_requests_after_connection_close_are_not_answered(queue):
    raw = raw_exchange(
        queue.http_port,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /?status=500 HTTP/1.1\r\nHost: b\r\n\r\n",
    )
    assert raw.count(b"HTTP/1.1 ") == 1
    assert raw.endswith(HELLO)


def test_half_closed_client_still_gets_every_answer(queue):
    with socket.create_connection(("127.0.0.1", queue.http_port), timeout=10) as sock:
        sock.sendall(b"GET /?sleep=50 HTTP/1.1\r\nHost: a\r\n\r\nGET /?status=201 HTTP/1.1\r\nHost: b\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        reader = RawResponseReader(sock)
        assert [reader.response()[0] for _ in range(2)] == [200, 201]
        assert reader.at_eof()


def test_bad_request_is_refused(queue):
    status_line, headers, _ = split_response(raw_exchange(queue.http_port, b"NOT HTTP AT ALL\r\n\r\n"))
    assert status_line.split()[1] == b"400"
    assert headers["connection"] == "close"


# -- input that cannot be served lets go of the slot at once (container-concurrency 1)

CHUNKED_ECHO = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.fixture(scope="module")
def queue_cc1(app, tmp_path_factory):
    args = ("--container-concurrency", "1", "--timeout-seconds", "60")
    with run_queue(tmp_path_factory.mktemp("queue-cc1"), app.port, *args) as queue:
        yield queue


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def served_at_once(queue) -> None:
    """The only slot is free: a request is answered now, not after timeoutSeconds."""
    status, _, body = queue.request("GET", "/", timeout_s=5)
    assert (status, body) == (200, HELLO)


@pytest.mark.parametrize(
    "bad",
    [b"zz\r\nabc\r\n", b"-3\r\nabc\r\n", b"FFFFFFFFFFFFFFFFFFFF\r\n", b"3;x\nabc\r\n", b"3\r\nabcX"],
    ids=["hex", "negative", "overflow", "ext_bare_lf", "data_without_crlf"],
)
def test_a_malformed_body_after_the_head_went_to_the_app_is_400_and_frees_the_slot(queue_cc1, bad):
    with socket.create_connection(("127.0.0.1", queue_cc1.http_port), timeout=5) as sock:
        sock.sendall(CHUNKED_ECHO + b"3\r\nabc\r\n")  # admitted: its head goes to the app
        time.sleep(0.1)
        sock.sendall(bad)
        status_line, headers, _ = split_response(read_until_closed(sock))
    assert status_line.split()[1] == b"400" and headers["connection"] == "close"
    served_at_once(queue_cc1)


@pytest.mark.parametrize(
    "head, part",
    [
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n", b"x" * 40),
        (CHUNKED_ECHO, b"10\r\n12345"),
    ],
    ids=["content_length", "chunked"],
)
@pytest.mark.parametrize("how", ["close", "half_close"])
def test_a_client_gone_mid_body_frees_the_slot_at_once_and_is_logged_499(queue_cc1, head, part, how):
    with socket.create_connection(("127.0.0.1", queue_cc1.http_port), timeout=5) as sock:
        sock.sendall(head + part)
        time.sleep(0.1)
        if how == "half_close":
            sock.shutdown(socket.SHUT_WR)
            assert read_until_closed(sock) == b""  # no answer can come: closed at once
    served_at_once(queue_cc1)
    wait_until(lambda: '"status":499' in queue_cc1.log(), timeout_s=5, what="the 499 log line")


def test_a_header_that_never_ends_is_431_within_max_head_bytes(queue_cc1):
    with socket.create_connection(("127.0.0.1", queue_cc1.http_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Huge: ")
        sent, piece = 0, b"z" * 16384
        # Far more than the 64 KB allowed, and more than loopback's socket buffers can
        # hold (a few MB each way, autotuned): refused well before, the sends then fail.
        # (With a 4 MB cap the buffers alone sometimes took it all before the refusal.)
        cap = 64 * MB
        try:
            while sent < cap:
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = read_until_closed(sock)
        except ConnectionResetError:  # closed with our unread bytes in its buffer
            answer = b""
    assert sent < cap
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
    served_at_once(queue_cc1)


def test_a_transfer_coding_other_than_chunked_is_501_and_not_sent_to_the_app(queue_cc1):
    raw = raw_exchange(
        queue_cc1.http_port,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 501 Not Implemented\r\n")
    assert raw.endswith(b"unsupported transfer encoding: gzip, chunked\n")


async def test_a_head_incomplete_for_head_timeout_s_is_408_an_idle_connection_stays(app, monkeypatch):
    # In this process, so that the 60 s bound can be made short.
    monkeypatch.setattr(http1, "HEAD_TIMEOUT_S", 0.3)
    proxy = Proxy(app_port=app.port)
    port = await proxy.listen("127.0.0.1", 0)
    try:
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        idle_w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await idle_r.readuntil(HELLO)
        for partial in (b"GET / HTTP/1.1\r\nHost: a\r\n", b"GET /\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(partial)
            answer = await asyncio.wait_for(reader.read(), 5)
            assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
            writer.close()
        idle_w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # kept open between requests
        assert (await asyncio.wait_for(idle_r.readuntil(HELLO), 5)).startswith(b"HTTP/1.1 200")
        idle_w.close()
    finally:
        await proxy.close()


# -- the queue's own answers


def test_probe_header_is_answered_by_the_queue(queue):
    assert queue.probe() == (200, b"queue")
    status, _, body = queue.request("GET", "/any/path", headers={"K-Network-Probe": "queue"})
    assert (status, body) == (200, b"queue")
    # without the header /healthz is the app's
    assert queue.request("GET", "/healthz")[::2] == (200, b"ok\n")
    # other probe values are not the queue's either
    assert queue.request("GET", "/healthz", headers={"K-Network-Probe": "other"})[::2] == (200, b"ok\n")


def test_headers(queue):
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    status, _, body = queue.request(
        "GET",
        "/headers",
        headers={
            "Host": "internal.example",
            "K-Original-Host": "hello.default.example.com",
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Proto": "https",
            "Knative-Serving-Namespace": "default",
            "Knative-Serving-Revision": REVISION,
            "Knative-Serving-Tag": "blue",
            "traceparent": traceparent,
            "X-User-Thing": "kept as is",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "dropped",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic secret",
            "TE": "trailers",
        },
    )
    assert status == 200
    seen = json.loads(body)
    assert seen["Host"] == "hello.default.example.com"
    assert "K-Original-Host" not in seen
    assert seen["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "https"
    # Built from the X-Forwarded-* headers as they came (no X-Forwarded-Host: no host=).
    assert seen["Forwarded"] == "for=203.0.113.7;proto=https"
    assert "Knative-Serving-Namespace" not in seen and "Knative-Serving-Revision" not in seen
    assert seen["Knative-Serving-Tag"] == "blue"
    assert seen["traceparent"] == traceparent
    assert seen["X-User-Thing"] == "kept as is"
    for hop in ("Connection", "X-Hop", "Keep-Alive", "Proxy-Authorization", "TE"):
        assert hop not in seen


def test_headers_without_forwarding_info(queue):
    status, _, body = queue.request("GET", "/headers", headers={"Host": "hello.localhost:8080"})
    seen = json.loads(body)
    assert seen["Host"] == "hello.localhost:8080"
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert "X-Forwarded-Proto" not in seen and "Forwarded" not in seen  # none came, none made up


def test_x_forwarded_host_and_port_are_quoted_in_forwarded(queue):
    headers = {"X-Forwarded-For": "203.0.113.7, 2001:db8::1", "X-Forwarded-Host": "hello.localhost:8080"}
    seen = json.loads(queue.request("GET", "/headers", headers=headers)[2])
    assert seen["Forwarded"] == 'for=203.0.113.7;host="hello.localhost:8080", for="[2001:db8::1]"'
    assert seen["X-Forwarded-Host"] == "hello.localhost:8080"


def test_existing_forwarded_is_left_as_it_came(queue):
    headers = {"Forwarded": "for=198.51.100.1;proto=https", "X-Forwarded-For": "203.0.113.7"}
    seen = json.loads(queue.request("GET", "/headers", headers=headers)[2])
    assert seen["Forwarded"] == "for=198.51.100.1;proto=https"
    assert seen["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"


def test_grpc_health_and_reflection(queue):
    services = grpcurl(queue.grpc_address, "list").split()
    assert "grpc.health.v1.Health" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    assert health(queue.grpc_address) == "SERVING"


# -- readiness, failures, limits, timeouts, drain


def test_not_ready_until_the_app_listens(tmp_path):
    app_port = free_port()
    with run_queue(tmp_path, app_port, wait_ready=False) as queue:
        assert queue.probe() == (503, b"not ready\n")
        assert health(queue.grpc_address) == "NOT_SERVING"
        status, _, body = queue.request("GET", "/")
        assert status == 502
        assert b"cannot connect to the app" in body
        with run_app(app_port):
            wait_until(lambda: queue.probe()[0] == 200, what="ready once the app listens")
            assert health(queue.grpc_address) == "SERVING"
            assert queue.request("GET", "/")[::2] == (200, HELLO)
        # the app is gone: pooled connections are dead, new ones are refused
        status, _, body = queue.request("GET", "/")
        assert status == 502


def test_a_websocket_goes_through_and_its_slot_is_freed_when_it_closes(tmp_path):
    big = bytes(range(256)) * 400  # 100 KB: more than one read on the way
    with run_app() as app, run_queue(tmp_path, app.port, "--container-concurrency", "1") as queue:
        status, echoes, answered = websocket_echo(queue.http_port, "hello.default", [b"one", big, b"three"])
        assert status == 101
        assert echoes == [b"one", big, b"three"]
        assert (answered["upgrade"].lower(), answered["connection"].lower()) == ("websocket", "upgrade")
        # with CC 1 the next request needs the WebSocket's slot: it was given back at the close
        assert queue.request("GET", "/")[::2] == (200, HELLO)


WS_HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_a_websocket_client_that_vanishes_or_half_closes_frees_the_slot(tmp_path):
    with run_app() as app, run_queue(tmp_path, app.port, "--container-concurrency", "1") as queue:
        sock = socket.create_connection(("127.0.0.1", queue.http_port), timeout=10)
        sock.sendall(WS_HANDSHAKE)
        assert sock.recv(65536).startswith(b"HTTP/1.1 101 ")
        sock.close()  # no close frame: gone
        # CC 1: served only once the tunnel has ended and given its slot back
        assert queue.request("GET", "/")[::2] == (200, HELLO)

        # a half-close travels on: the app sees the end of its input and closes, and so
        # the client sees the end of its own
        sock = socket.create_connection(("127.0.0.1", queue.http_port), timeout=10)
        sock.sendall(WS_HANDSHAKE)
        with sock:
            assert sock.recv(65536).startswith(b"HTTP/1.1 101 ")
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(65536) == b""
        assert queue.request("GET", "/")[::2] == (200, HELLO)


def test_an_upgrade_the_app_does_not_take_is_a_plain_answer_and_the_connection_ends(tmp_path):
    with run_app() as app, run_queue(tmp_path, app.port) as queue:
        reply = raw_exchange(
            queue.http_port,
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        assert reply.startswith(b"HTTP/1.1 426 ")  # no Sec-WebSocket-Key: the app says no
        assert b"Connection: close" in reply


def _probe_state(app) -> dict:
    return json.loads(app.get("/sick")[1])


def test_an_http_readiness_probe_follows_the_apps_health_path(tmp_path):
    # periodSeconds 1, failureThreshold 2: Kubernetes timing, not the aggressive default
    probe = json.dumps({
        "httpGet": {"path": "/healthz", "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
        "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2,
    })
    with run_app(HELLO_SICK="1") as app, run_queue(
        tmp_path, app.port, "--readiness-probe", probe, wait_ready=False
    ) as queue:
        # the app listens (a TCP probe would pass) but its health path answers 503
        wait_until(lambda: _probe_state(app)["probes"] >= 2, what="two probes of /healthz")
        assert queue.probe() == (503, b"not ready\n")
        assert health(queue.grpc_address) == "NOT_SERVING"
        sent = {k.lower(): v for k, v in _probe_state(app)["last_probe"].items()}
        assert (sent["x-probe"], sent["k-kubelet-probe"]) == ("1", "queue")
        assert sent["user-agent"].startswith("kube-probe/")
        app.get("/sick?on=0")
        wait_until(lambda: queue.probe()[0] == 200, what="ready once /healthz answers 200")
        assert queue.request("GET", "/")[::2] == (200, HELLO)
        app.get("/sick?on=1")
        wait_until(lambda: queue.probe()[0] == 503, what="not ready after two failed probes")
        assert _probe_state(app)["probes"] >= 3
        assert health(queue.grpc_address) == "NOT_SERVING"


def test_an_http_readiness_probe_without_a_period_is_aggressive(tmp_path):
    with run_app(HELLO_SICK="1") as app, run_queue(
        tmp_path, app.port, "--readiness-probe", '{"httpGet": {"path": "/healthz"}}',
        wait_ready=False,
    ) as queue:
        # every 5 ms in the first second: many probes, none of them enough
        wait_until(lambda: _probe_state(app)["probes"] >= 10, what="aggressive probes")
        assert queue.probe() == (503, b"not ready\n")
        app.get("/sick?on=0")
        wait_until(lambda: queue.probe()[0] == 200, what="ready once /healthz answers 200")


def test_a_bad_readiness_probe_stops_the_queue_with_the_field_and_rule(tmp_path):
    argv = [sys.executable, "-m", "ebb.queue", "--app-port", "8080",
            "--readiness-probe", '{"httpGet": {"path": "healthz"}}']
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2
    assert "readiness-probe.httpGet.path: 'healthz', must start with /" in done.stderr


@contextlib.contextmanager
def raw_app(respond):
    """A raw HTTP app in a thread: `respond(n, head)` for the n-th request (0-based) on a
    connection returns (bytes to send, close after) or None to close without answering."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # so the accept loop sees `stop`
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            served = 0
            data = b""
            while not stop.is_set():
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
                while b"\r\n\r\n" in data:
                    head, _, data = data.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(data) < length:
                        data += conn.recv(65536)
                    data = data[length:]
                    answer = respond(served, head)
                    served += 1
                    if answer is None:
                        return
                    conn.sendall(answer[0])
                    if answer[1]:
                        return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def first_only(n: int, head: bytes):
    """Answers the first request on a connection, closes it on the second: what a
    keep-alive race with the app's idle timeout looks like."""
    return (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst", False) if n == 0 else None


def close_delimited(n: int, head: bytes):
    """An HTTP/1.0-style answer: no length, the end of the connection ends the body; plus
    hop-by-hop headers that must not reach the client."""
    return (
        b"HTTP/1.0 200 OK\r\nX-App: yes\r\nConnection: close, X-Private\r\nX-Private: 1\r\n"
        b"Keep-Alive: timeout=5\r\n\r\nall of it",
        True,
    )


def test_heads_gos_server_refuses_never_reach_the_app_and_absolute_form_goes_on(tmp_path):
    heads = []

    def record(n: int, head: bytes):
        heads.append(head)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False

    pipelined = (
        b"GET http://a.example:8080/abs?q=1 HTTP/1.1\r\nHost: h\r\n\r\n"  # goes on
        b"GET /refused-no-host HTTP/1.1\r\n\r\n"  # 400, then the connection closes
        b"GET /never-read HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    with raw_app(record) as port, run_queue(tmp_path, port) as queue:
        raw = raw_exchange(queue.http_port, pipelined)
        alone = raw_exchange(queue.http_port, b"GET /refused-two HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    first, _, rest = raw.partition(b"ok")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    status_line, headers, body = split_response(rest)
    assert status_line == b"HTTP/1.1 400 Bad Request" and headers["connection"] == "close"
    assert body == b"bad request: missing required Host header\n"
    assert alone.startswith(b"HTTP/1.1 400 ") and alone.endswith(b"too many Host headers\n")
    sent = [head for head in heads if b"/abs" in head or b"/refused" in head or b"/never" in head]
    assert len(sent) == 1, sent  # the refused ones (and what followed) never reached the app
    lines = sent[0].split(b"\r\n")
    assert lines[0] == b"GET /abs?q=1 HTTP/1.1" and b"Host: a.example:8080" in lines


def test_request_without_body_is_retried_once_when_a_pooled_connection_was_closed(tmp_path):
    with raw_app(first_only) as port, run_queue(tmp_path, port) as queue:
        assert queue.request("GET", "/")[::2] == (200, b"first")
        # the pooled connection is reused, the app closes it: sent again on a fresh one
        assert queue.request("GET", "/")[::2] == (200, b"first")
        # a body may have been consumed: no retry, 502
        status, _, body = queue.request("POST", "/", body=b"data")
        assert status == 502
        assert b"closed the connection before answering" in body


def test_close_delimited_response_is_rechunked_and_hop_headers_dropped(tmp_path):
    with raw_app(close_delimited) as port, run_queue(tmp_path, port) as queue:
        with socket.create_connection(("127.0.0.1", queue.http_port), timeout=10) as sock:
            reader = RawResponseReader(sock)
            for _ in range(2):  # the client's connection outlives the app's
                sock.sendall(b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n")
                status, headers, body = reader.response()
                assert (status, body) == (200, b"all of it")
                assert headers["transfer-encoding"] == "chunked"
                assert headers["x-app"] == "yes"
                for hop in ("connection", "x-private", "keep-alive"):
                    assert hop not in headers
        raw = raw_exchange(queue.http_port, b"GET / HTTP/1.0\r\n\r\n")
        assert split_response(raw)[2] == b"all of it"


def test_breaker_limits_the_app_to_one_request_and_refuses_when_full(tmp_path):
    with (
        run_app(DETECT_OVERLAP="1") as app,
        run_queue(tmp_path, app.port, "--container-concurrency", "1") as queue,
        ThreadPoolExecutor(30) as pool,
    ):
        # eight at once, within capacity: the app never sees two at a time
        results = list(pool.map(lambda _: queue.request("GET", "/?sleep=20"), range(8)))
        assert [(status, body) for status, _, body in results] == [(200, HELLO)] * 8

        # one in the app (held at a gate), ten waiting, the other 19 refused at once
        futures = [pool.submit(queue.request, "GET", "/?gate=full") for _ in range(30)]
        refused = []
        while len(refused) < 19:
            done, _ = wait([f for f in futures if f not in refused], return_when=FIRST_COMPLETED, timeout=20)
            assert done, "requests neither refused nor queued"
            refused.extend(done)
        for future in refused:
            status, _, body = future.result()
            assert status == 503
            assert body.startswith(b"overload: queue full")
        app.release("full")
        served = [f.result(timeout=20) for f in futures if f not in refused]
        assert [(status, body) for status, _, body in served] == [(200, HELLO)] * 11

        # bodies of requests waiting for the slot are held (with back-pressure), not lost
        payloads = [pattern_bytes(6 * MB + i)[i:] for i in range(4)]
        results = list(pool.map(lambda p: queue.request("POST", "/echo", body=p), payloads))
        assert [(status, len(body)) for status, _, body in results] == [(200, len(p)) for p in payloads]
        assert all(body == p for (_, _, body), p in zip(results, payloads, strict=True))


def test_total_timeout_is_504(tmp_path, app):
    with run_queue(tmp_path, app.port, "--timeout-seconds", "0.3") as queue:
        status, _, body = queue.request("GET", "/?sleep=3000")
        assert status == 504
        assert b"timeoutSeconds=0.3" in body
        assert queue.request("GET", "/")[::2] == (200, HELLO)  # a fresh connection to the app


def test_response_start_and_idle_timeouts(tmp_path, app):
    args = ("--timeout-seconds", "30", "--response-start-timeout-seconds", "0.3", "--idle-timeout-seconds", "0.6")
    with run_queue(tmp_path, app.port, *args) as queue:
        status, _, body = queue.request("GET", "/?sleep=3000")
        assert status == 504
        assert b"responseStartTimeoutSeconds=0.3" in body
        # headers and a first chunk, then silence: the response is cut (it cannot become a 504)
        with socket.create_connection(("127.0.0.1", queue.http_port), timeout=10) as sock:
            sock.sendall(b"GET /?chunks=2&hold=idle HTTP/1.1\r\nHost: hello\r\n\r\n")
            reader = RawResponseReader(sock)
            assert reader.head()[0] == 200
            assert reader.next_chunk() == b"chunk 0\n"
            with pytest.raises(EOFError):
                reader.next_chunk()
        app.release("idle")


def test_a_started_response_outlives_timeout_seconds(tmp_path, app):
    """As Knative's timeout handler: timeoutSeconds ends an exchange with a 504 only while
    nothing of the response has gone out; a stream that started in time runs to its end
    (here 1 s behind a 0.5 s timeout). The next request on the connection is timed again."""
    with run_queue(tmp_path, app.port, "--timeout-seconds", "0.5") as queue:
        with socket.create_connection(("127.0.0.1", queue.http_port), timeout=10) as sock:
            sock.sendall(b"GET /?chunks=5&chunk_delay=250 HTTP/1.1\r\nHost: hello\r\n\r\n")
            reader = RawResponseReader(sock)
            assert reader.head()[0] == 200
            assert [reader.next_chunk() for _ in range(6)] == [b"chunk %d\n" % i for i in range(5)] + [b""]
            sock.sendall(b"GET /?sleep=3000 HTTP/1.1\r\nHost: hello\r\n\r\n")
            status, _, body = reader.response()
            assert status == 504 and b"timeoutSeconds=0.5" in body


def test_idle_timeout_still_ends_a_started_response_past_timeout_seconds(tmp_path, app):
    args = ("--timeout-seconds", "0.6", "--idle-timeout-seconds", "0.5")
    with run_queue(tmp_path, app.port, *args) as queue:
        try:
            with socket.create_connection(("127.0.0.1", queue.http_port), timeout=10) as sock:
                # 1 s of chunks 0.25 s apart: never silent for 0.5 s, so it runs to its end
                sock.sendall(b"GET /?chunks=4&chunk_delay=250 HTTP/1.1\r\nHost: hello\r\n\r\n")
                reader = RawResponseReader(sock)
                assert reader.head()[0] == 200
                assert [reader.next_chunk() for _ in range(5)] == [b"chunk %d\n" % i for i in range(4)] + [b""]
                # silent after its first chunk: cut once idle (not a 504: the head is out)
                sock.sendall(b"GET /?chunks=2&hold=stalled HTTP/1.1\r\nHost: hello\r\n\r\n")
                assert reader.head()[0] == 200
                assert reader.next_chunk() == b"chunk 0\n"
                started = time.monotonic()
                with pytest.raises(EOFError):
                    reader.next_chunk()
                assert time.monotonic() - started >= 0.4  # silent for idleTimeoutSeconds first
        finally:
            app.release("stalled")


def test_idle_timeout_before_the_first_byte(tmp_path, app):
    with run_queue(tmp_path, app.port, "--idle-timeout-seconds", "0.3") as queue:
        status, _, body = request(queue.http_port, "GET", "/?gate=idle2")
        app.release("idle2")
        assert status == 504
        assert b"idleTimeoutSeconds=0.3" in body


def test_sigterm_drains_in_flight_and_new_requests_then_exits_0(tmp_path, app):
    with (
        run_queue(tmp_path, app.port, "--drain-quiet-s", "0.3") as queue,
        ThreadPoolExecutor(2) as pool,
    ):
        slow = pool.submit(queue.request, "GET", "/?gate=drain&sleep=100")
        wait_until(lambda: app.waiting("drain") == 1, what="the slow request to reach the app")
        queue.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: queue.probe()[0] == 503, what="the probe to report draining")
        # requests that still arrive are served, and told to go elsewhere next time
        status, headers, body = queue.request("GET", "/")
        assert (status, body, headers["connection"]) == (200, HELLO, "close")
        app.release("drain")
        status, _, body = slow.result(timeout=20)
        assert (status, body) == (200, HELLO)
        assert queue.proc.wait(20) == 0
    log = queue.log()
    assert '"msg": "draining"' in log
    assert '"msg": "stopped"' in log


def test_wait_for_drain_answers_once_the_drain_has_ended(tmp_path, app):
    """The user container's preStop on Kubernetes: `K-Network-Probe: wait-for-drain` is
    answered only when the queue has finished what it accepted, so the app gets SIGTERM
    after that. The waiting request itself never holds the drain up."""
    wait = {"K-Network-Probe": "wait-for-drain"}
    with (
        run_queue(tmp_path, app.port, "--drain-quiet-s", "0.3") as queue,
        ThreadPoolExecutor(2) as pool,
    ):
        slow = pool.submit(queue.request, "GET", "/?gate=prestop")
        wait_until(lambda: app.waiting("prestop") == 1, what="the slow request to reach the app")
        waiter = pool.submit(request, queue.http_port, "GET", "/wait-for-drain", headers=wait)
        queue.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: queue.probe()[0] == 503, what="the probe to report draining")
        time.sleep(0.6)  # well past the quiet period: the slow request keeps the drain going
        assert not waiter.done()
        app.release("prestop")
        assert slow.result(timeout=20)[0] == 200
        status, _, body = waiter.result(timeout=20)
        assert (status, body) == (200, b"drained\n")
        assert queue.proc.wait(20) == 0


def test_wait_for_drain_of_an_idle_queue_ends_after_the_quiet_period(tmp_path, app):
    with run_queue(tmp_path, app.port, "--drain-quiet-s", "0.2") as queue:
        with ThreadPoolExecutor(1) as pool:
            # asked before SIGTERM (the kubelet runs the hook and signals the queue at once)
            waiter = pool.submit(request, queue.http_port, "GET", "/", headers={"K-Network-Probe": "wait-for-drain"})
            time.sleep(0.3)
            assert not waiter.done()
            queue.proc.send_signal(signal.SIGTERM)
            assert waiter.result(timeout=10)[0] == 200
        assert queue.proc.wait(10) == 0


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


def test_unix_socket_serves_as_the_tcp_port_does(app, tmp_path):
    # The local runtime's activator forwards through the queue's unix socket: same
    # proxy, same headers for the app (the peer is recorded as the loopback hop would be),
    # keep-alive, and the socket file is gone after the queue stops.
    path = str(tmp_path / "q.sock")
    with run_queue(tmp_path, app.port, "--unix-socket", path) as queue:
        assert json.loads(Path(queue.args[queue.args.index("--ready-file") + 1]).read_text())["unix"] == path
        assert oct(Path(path).stat().st_mode & 0o777) == oct(0o600)
        conn = _UnixHTTPConnection(path)
        try:
            for _ in range(2):  # the second request reuses the connection
                conn.request("GET", "/headers", headers={"Host": "hello.localhost", "X-Forwarded-For": "203.0.113.7"})
                response = conn.getresponse()
                seen = json.loads(response.read())
                assert response.status == 200
                assert seen["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
                assert seen["Forwarded"] == "for=203.0.113.7"
            conn.request("GET", "/", headers={"K-Network-Probe": "queue"})
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"queue")
        finally:
            conn.close()
        assert queue.request("GET", "/")[0] == 200  # and TCP still serves
    assert not Path(path).exists()


@pytest.mark.parametrize("value", ["relative/q.sock", "/" + "x" * 107])
def test_unix_socket_must_be_a_short_absolute_path(app, tmp_path, value):
    res = subprocess.run(
        [sys.executable, "-m", "ebb.queue", "--app-port", str(app.port), "--unix-socket", value],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert "unix-socket = " in res.stderr and "must be an absolute path of at most 107 bytes" in res.stderr
