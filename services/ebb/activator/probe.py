"""The activator's probe of an instance's queue (socket adapter).

`GET /healthz` with `K-Network-Probe: queue`; healthy = 200 with body `queue`, which the
queue answers itself once its app is ready (and 503 while it drains). Knative's activator
probes every 200 ms with a 300 ms timeout so it can forward the moment an instance is up.
Here a newly listed instance is probed every 5 ms for its first second (`probe_delay`):
the controller lists an instance the moment it is spawned, so during a cold start these
probes are what tells the activator, within milliseconds, that the app has come up.
"""

from __future__ import annotations

import asyncio
import contextlib

from ebb.common.http1 import UNIX_PORT

PERIOD_S = 0.2
TIMEOUT_S = 0.3
EAGER_PERIOD_S = 0.005
EAGER_FOR_S = 1.0
MAX_ANSWER_BYTES = 4096

_REQUEST = (
    b"GET /healthz HTTP/1.1\r\nHost: %s\r\nK-Network-Probe: queue\r\n"
    b"User-Agent: ebb-activator-probe\r\nConnection: close\r\n\r\n"
)


def healthy_answer(data: bytes) -> bool:
    """True for a `200` answer whose body is exactly `queue`."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    status = head.split(b"\r\n", 1)[0].split(b" ", 2)
    return len(status) >= 2 and status[1] == b"200" and body == b"queue"


def probe_delay(probing_for_s: float, period_s: float = PERIOD_S) -> float:
    """Seconds between probes of an instance that has been probed for `probing_for_s`
    without success: every 5 ms for the first second, then every `period_s`."""
    return min(EAGER_PERIOD_S, period_s) if probing_for_s < EAGER_FOR_S else period_s


async def probe_queue(host: str, port: int, timeout_s: float = TIMEOUT_S) -> bool:
    """One probe on a fresh connection; False on refusal, timeout or any other answer.
    Port `UNIX_PORT` (0) probes the unix socket at path `host`."""
    try:
        async with asyncio.timeout(timeout_s):
            if port == UNIX_PORT:
                reader, writer = await asyncio.open_unix_connection(host)
                authority = b"localhost"
            else:
                reader, writer = await asyncio.open_connection(host, port)
                authority = f"{host}:{port}".encode()
            try:
                writer.write(_REQUEST % authority)
                data = b""
                while len(data) <= MAX_ANSWER_BYTES:
                    chunk = await reader.read(MAX_ANSWER_BYTES)
                    if not chunk:
                        break
                    data += chunk
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return healthy_answer(data)
