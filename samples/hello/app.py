"""hello: a tiny HTTP/1.1 app for trying (and testing) Ebb. Standard library only.

Listens on 127.0.0.1:$PORT (default 8080).

    GET  /                  "Hello from $K_REVISION!"
         ?sleep=MS          answer after MS milliseconds
         ?status=N          answer with status N
         ?bytes=N           answer N bytes (a repeating 0..255 pattern)
         ?chunks=N          stream N chunks "chunk I\\n" (chunked); ?chunk_delay=MS between them,
                            ?hold=NAME waits for gate NAME after the first chunk
         ?gate=NAME         wait until /release?gate=NAME (at most 60 s) before answering
    POST|PUT|PATCH /...     echo the request body (Content-Length or chunked, answered alike)
    GET  /headers           the request headers as JSON
    GET  /env               the platform's env vars PORT, K_SERVICE, K_CONFIGURATION, K_REVISION as JSON
    GET  /conn              the peer address of this TCP connection ("ip:port")
    GET  /ws                a WebSocket (RFC 6455) that echoes every text or binary message,
                            answers pings and closes when asked
    GET  /healthz           200 "ok"; 503 "sick" while sick (for readiness probes)
    GET  /sick[?on=1|0]     become sick (or well again); answers {"sick", "probes": /healthz
                            requests so far, "last_probe": their last headers} as JSON;
                            HELLO_SICK=1 starts sick
    GET  /release?gate=NAME open gate NAME
    GET  /gates             {"NAME": requests waiting at it}

With DETECT_OVERLAP=1, a request arriving while another is in the app answers 500
"overlap" (control endpoints excepted): it shows whether a concurrency limit held.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

REVISION = os.environ.get("K_REVISION", "unknown")
HELLO = f"Hello from {REVISION}!\n".encode()
DETECT_OVERLAP = os.environ.get("DETECT_OVERLAP") == "1"
PATTERN = bytes(range(256)) * 256  # 64 KiB
GATE_MAX_WAIT_S = 60.0
CONTROL_PATHS = {"/healthz", "/sick", "/release", "/gates"}
CONTRACT_ENV = ("PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION")  # what Knative sets
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's, for Sec-WebSocket-Accept

_lock = threading.Lock()
_sick = threading.Event()
_probes = {"count": 0, "last": {}}
if os.environ.get("HELLO_SICK") == "1":
    _sick.set()
_inside = 0
_gates: dict[str, threading.Event] = {}
_waiting: dict[str, int] = {}


def pattern_bytes(n: int) -> bytes:
    """The first n bytes of the repeating 0..255 pattern `?bytes=N` answers."""
    whole, rest = divmod(n, len(PATTERN))
    return PATTERN * whole + PATTERN[:rest]


def _gate(name: str) -> threading.Event:
    with _lock:
        return _gates.setdefault(name, threading.Event())


def _wait_gate(name: str) -> None:
    gate = _gate(name)
    with _lock:
        _waiting[name] = _waiting.get(name, 0) + 1
    try:
        gate.wait(GATE_MAX_WAIT_S)
    finally:
        with _lock:
            _waiting[name] -= 1


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hello/1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # quiet unless HELLO_LOG=1
        if os.environ.get("HELLO_LOG") == "1":
            super().log_message(format, *args)

    def do_GET(self) -> None:  # http.server's naming
        if self.path == "/" and self.command == "GET" and not DETECT_OVERLAP:  # the fast path, for benchmarks
            self._send(200, HELLO)
            return
        url = urlsplit(self.path)
        if url.path in CONTROL_PATHS:
            self._control(url.path, parse_qs(url.query))
            return
        global _inside
        overlap = False
        if DETECT_OVERLAP:
            with _lock:
                _inside += 1
                overlap = _inside > 1
        try:
            if overlap:
                self._read_body()
                self._send(500, b"overlap\n")
            else:
                self._handle(url.path, parse_qs(url.query))
        finally:
            if DETECT_OVERLAP:
                with _lock:
                    _inside -= 1

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET

    def _control(self, path: str, query: dict[str, list[str]]) -> None:
        if path == "/healthz":
            with _lock:
                _probes["count"] += 1
                _probes["last"] = dict(self.headers.items())
            if _sick.is_set():
                self._send(503, b"sick\n")
            else:
                self._send(200, b"ok\n")
        elif path == "/sick":
            if "on" in query:
                (_sick.set if query["on"][0] == "1" else _sick.clear)()
            with _lock:
                state = {"sick": _sick.is_set(), "probes": _probes["count"],
                         "last_probe": _probes["last"]}
            self._send(200, json.dumps(state).encode(), "application/json")
        elif path == "/release":
            _gate(query.get("gate", [""])[0]).set()
            self._send(200, b"released\n")
        else:
            with _lock:
                body = json.dumps(_waiting).encode()
            self._send(200, body, "application/json")

    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key:
            self._send(426, b"a WebSocket upgrade is required here\n")
            return
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.close_connection = True
        while True:
            frame = read_ws_frame(self.rfile)
            if frame is None:
                return
            opcode, payload = frame
            if opcode == 8:  # close: answer it, then the connection ends
                self.wfile.write(ws_frame(8, payload[:2]))
                return
            if opcode == 9:
                self.wfile.write(ws_frame(10, payload))
            elif opcode in (1, 2):
                self.wfile.write(ws_frame(opcode, payload))

    def _handle(self, path: str, query: dict[str, list[str]]) -> None:
        def number(key: str, default: int = 0) -> int:
            return int(query[key][0]) if key in query else default

        body, chunked_in = self._read_body()
        if "gate" in query:
            _wait_gate(query["gate"][0])
        if "sleep" in query:
            time.sleep(number("sleep") / 1000)
        status = number("status", 200)
        if path == "/ws":
            self._websocket()
        elif path == "/headers":
            seen: dict[str, str] = {}
            for name, value in self.headers.items():
                seen[name] = f"{seen[name]}, {value}" if name in seen else value
            self._send(status, json.dumps(seen).encode(), "application/json")
        elif path == "/env":
            env = {name: os.environ.get(name) for name in CONTRACT_ENV}
            self._send(status, json.dumps(env).encode(), "application/json")
        elif path == "/conn":
            self._send(status, f"{self.client_address[0]}:{self.client_address[1]}".encode())
        elif "chunks" in query:
            self._stream(
                status, number("chunks"), number("chunk_delay") / 1000, query.get("hold", [None])[0]
            )
        elif "bytes" in query:
            self._send_pattern(status, number("bytes"))
        elif body is not None:
            if chunked_in:
                self._send_chunked(
                    status, [body[i : i + 65536] for i in range(0, len(body), 65536)]
                )
            else:
                self._send(status, body, "application/octet-stream")
        else:
            self._send(status, HELLO)

    def _read_body(self) -> tuple[bytes | None, bool]:
        """The whole request body (None when there is none) and whether it came chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts), True
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length or self.command in ("POST", "PUT", "PATCH"):
            return self.rfile.read(length), False
        return None, False

    def _head(self, status: int, content_type: str, length: int | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _body_allowed(self, status: int) -> bool:
        return self.command != "HEAD" and status >= 200 and status not in (204, 304)

    def _send(
        self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        if status in (204, 304) or status < 200:
            body = b""
        self._head(status, content_type, len(body))
        if self._body_allowed(status):
            self.wfile.write(body)

    def _send_pattern(self, status: int, n: int) -> None:
        self._head(status, "application/octet-stream", n)
        if self._body_allowed(status):
            sent = 0
            while sent < n:
                piece = PATTERN[: min(len(PATTERN), n - sent)]
                self.wfile.write(piece)
                sent += len(piece)

    def _send_chunked(self, status: int, pieces: list[bytes]) -> None:
        self._head(status, "application/octet-stream", None)
        if self._body_allowed(status):
            for piece in pieces:
                if piece:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")

    def _stream(self, status: int, count: int, delay_s: float, hold: str | None) -> None:
        self._head(status, "text/plain; charset=utf-8", None)
        if not self._body_allowed(status):
            return
        for i in range(count):
            if i and delay_s:
                time.sleep(delay_s)
            piece = f"chunk {i}\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            if i == 0 and hold:
                _wait_gate(hold)
        self.wfile.write(b"0\r\n\r\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default of 5 drops connections under a burst


def ws_frame(opcode: int, payload: bytes, mask: bytes = b"") -> bytes:
    """One final WebSocket frame; masked (as a client must) when `mask` is 4 bytes."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, size | (0x80 if mask else 0)))
    elif size < 1 << 16:
        head = bytes((0x80 | opcode, 126 | (0x80 if mask else 0))) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127 | (0x80 if mask else 0))) + size.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + payload


def read_ws_frame(stream) -> tuple[int, bytes] | None:
    """(opcode, unmasked payload) of the next frame; None at the end of the stream."""
    head = stream.read(2)
    if len(head) < 2:
        return None
    opcode, size, masked = head[0] & 0x0F, head[1] & 0x7F, head[1] & 0x80
    if size == 126:
        size = int.from_bytes(stream.read(2), "big")
    elif size == 127:
        size = int.from_bytes(stream.read(8), "big")
    mask = stream.read(4) if masked else b""
    payload = stream.read(size)
    if len(payload) < size:
        return None
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload


def main() -> int:
    port = int(os.environ.get("PORT", "8080"))
    server = Server(("127.0.0.1", port), Handler)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"hello ({REVISION}) listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
