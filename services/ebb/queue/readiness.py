"""Readiness of the app: the revision's readiness probe, run by the queue.

With `periodSeconds: 0` (the default) the queue probes as Knative's queue-proxy does:
aggressively from the start so an instance is ready the moment its app answers, then once a
second. With a non-zero period it follows the probe's Kubernetes timing: one attempt every
`periodSeconds`, each allowed `timeoutSeconds`, `failureThreshold` failures in a row to stop
being ready. Either way the first attempt waits `initialDelaySeconds`, and it takes
`successThreshold` successes in a row to become ready.

`AppProbe`, `parse_probe`, `probe_request` and `ProbeSchedule` are pure (values and `now`
in, values out); `tcp_probe`, `http_probe` and `probe_loop` hold the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ebb.common.settings import SettingsError, parse_json_object

log = logging.getLogger(__name__)

# Knative's queue-proxy probes the app aggressively (100 ms timeout) for up to 10 s after
# start so an instance is ready the moment its app listens; after that it follows the
# revision's readiness probe (period 1 s, failure threshold 3 by Kubernetes defaults).
# The first second is probed every 5 ms: most apps listen within it, every millisecond
# there is a millisecond of cold start, and a refused local connect costs next to nothing.
EAGER_PERIOD_S = 0.005
EAGER_FOR_S = 1.0
AGGRESSIVE_PERIOD_S = 0.05
AGGRESSIVE_FOR_S = 10.0
PROBE_TIMEOUT_S = 0.1
PERIOD_S = 1.0
FAILURE_THRESHOLD = 3
TIMEOUT_S = 1.0  # Kubernetes' default timeoutSeconds, for a probe with a period
MAX_STATUS_LINE = 1024
# What the kubelet sends (Kubernetes' default probe User-Agent starts `kube-probe/`), and
# Knative's mark that the queue, not a user, is asking.
PROBE_HEADERS = (("User-Agent", "kube-probe/ebb"), ("K-Kubelet-Probe", "queue"), ("Accept", "*/*"))


@dataclass(frozen=True)
class AppProbe:
    """A revision's readiness probe (Kubernetes' Probe, `httpGet` or `tcpSocket`)."""

    http: bool = False  # False: TCP connect
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    https: bool = False
    host: str = ""  # "" = the app's host
    port: int = 0  # 0 = the app's port
    period_s: float = 0.0  # 0 = Knative's aggressive probing
    timeout_s: float = 0.0  # 0 = 100 ms when aggressive, 1 s with a period
    success_threshold: int = 1
    failure_threshold: int = 0  # 0 = 3
    initial_delay_s: float = 0.0


DEFAULT_PROBE = AppProbe()
_HANDLERS = ("httpGet", "tcpSocket")
_TIMING = ("periodSeconds", "timeoutSeconds", "successThreshold", "failureThreshold",
           "initialDelaySeconds")
_INT32_MAX = 2**31 - 1


def parse_probe(text: str, name: str = "readiness-probe") -> AppProbe:
    """A probe from its JSON form (Kubernetes' field names); "" is the default TCP probe.
    Raises SettingsError naming the field and the rule."""
    raw = parse_json_object(name, text)
    if not raw:
        return DEFAULT_PROBE
    unknown = sorted(set(raw) - set(_HANDLERS) - set(_TIMING))
    if unknown:
        raise SettingsError(f"{name}.{unknown[0]}: unknown field (Ebb probes with httpGet or tcpSocket)")
    if raw.get("httpGet") is not None and raw.get("tcpSocket") is not None:
        raise SettingsError(f"{name}: expected exactly one of httpGet, tcpSocket, got both")
    timing = _timing(raw, name)
    if raw.get("httpGet") is not None:
        return _http_probe(_object(raw["httpGet"], f"{name}.httpGet"), f"{name}.httpGet", timing)
    at = f"{name}.tcpSocket"
    action = _object(raw.get("tcpSocket") or {}, at)
    return AppProbe(host=_text(action, "host", at), port=_port(action, at), **timing)


def _timing(raw: dict, name: str) -> dict:
    counts = {key: _count(raw, key, name) for key in _TIMING}
    if counts["periodSeconds"] == 0:
        for key in ("timeoutSeconds", "failureThreshold"):
            if counts[key]:
                raise SettingsError(f"{name}.{key}: disallowed when periodSeconds is zero")
    return {
        "period_s": float(counts["periodSeconds"]),
        "timeout_s": float(counts["timeoutSeconds"]),
        "success_threshold": counts["successThreshold"] or 1,
        "failure_threshold": counts["failureThreshold"],
        "initial_delay_s": float(counts["initialDelaySeconds"]),
    }


def _http_probe(action: dict, at: str, timing: dict) -> AppProbe:
    path = _text(action, "path", at) or "/"
    if not path.startswith("/") or any(c in path for c in " \r\n"):
        raise SettingsError(f"{at}.path: {path!r}, must start with / and hold no spaces")
    scheme = (_text(action, "scheme", at) or "HTTP").upper()
    if scheme not in ("HTTP", "HTTPS"):
        raise SettingsError(f"{at}.scheme: {scheme!r}, must be HTTP or HTTPS")
    headers = []
    for i, header in enumerate(action.get("httpHeaders") or ()):
        where = f"{at}.httpHeaders[{i}]"
        header = _object(header, where)
        key, value = _text(header, "name", where), _text(header, "value", where)
        if not key or ":" in key or any(c in key + value for c in "\r\n"):
            raise SettingsError(f"{where}: {key!r}: {value!r} is not a valid header")
        headers.append((key, value))
    return AppProbe(http=True, path=path, headers=tuple(headers), https=scheme == "HTTPS",
                    host=_text(action, "host", at), port=_port(action, at), **timing)


def _count(raw: dict, key: str, name: str) -> int:
    value = raw.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _INT32_MAX:
        raise SettingsError(f"{name}.{key}: {value!r}, must be an integer in 0..{_INT32_MAX}")
    return value


def _object(value: object, at: str) -> dict:
    if not isinstance(value, dict):
        raise SettingsError(f"{at}: must be an object")
    return value


def _text(action: dict, key: str, at: str) -> str:
    value = action.get(key) or ""
    if not isinstance(value, str):
        raise SettingsError(f"{at}.{key}: {value!r}, must be a string")
    return value


def _port(action: dict, at: str) -> int:
    value = action.get("port") or 0
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise SettingsError(f"{at}.port: {value!r}, must be a port number in 1..65535 (0 = the app's)")
    return value


def probe_request(probe: AppProbe, host: str, port: int) -> bytes:
    """The probe's GET: the kubelet's headers, then the probe's own (which replace a
    default of the same name, as in Kubernetes)."""
    own = {name.lower() for name, _ in probe.headers}
    lines = [f"GET {probe.path} HTTP/1.1"]
    if "host" not in own:
        lines.append(f"Host: {host}:{port}")
    lines += [f"{name}: {value}" for name, value in PROBE_HEADERS if name.lower() not in own]
    lines += [f"{name}: {value}" for name, value in probe.headers]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ProbeSchedule:
    """Decides readiness from probe results and when to probe next.

    Aggressive (period 0): probe every 5 ms for 1 s since the app was last seen down, every
    50 ms until 10 s, then every 1 s, each attempt allowed 100 ms; ready after the probe's
    success threshold (1 by default) of successes in a row. Ready: probe every 1 s; 3
    failures in a row make it not ready again (and start a new 10 s of aggressive probing).
    With a period: every `period_s`, `failure_threshold` failures in a row to leave ready.
    """

    __slots__ = ("ready", "first_delay_s", "timeout_s", "_probe", "_failures", "_successes",
                 "_down_since", "_failure_threshold")

    def __init__(self, now: float, probe: AppProbe = DEFAULT_PROBE) -> None:
        self.ready = False
        self._probe = probe
        self._failures = 0
        self._successes = 0
        self._down_since = now + probe.initial_delay_s
        self._failure_threshold = probe.failure_threshold or FAILURE_THRESHOLD
        self.first_delay_s = probe.initial_delay_s
        if probe.period_s:
            self.timeout_s = probe.timeout_s or TIMEOUT_S
        else:
            self.timeout_s = PROBE_TIMEOUT_S

    def observe(self, ok: bool, now: float) -> float:
        """Record one probe result; returns the delay in seconds until the next probe."""
        period = self._probe.period_s
        if ok:
            self._failures = 0
            self._successes += 1
            if self._successes >= self._probe.success_threshold:
                self.ready = True
            if self.ready:
                return period or PERIOD_S
            return period or self._aggressive_delay(now)
        self._successes = 0
        self._failures += 1
        if self.ready:
            if self._failures < self._failure_threshold:
                return period or PERIOD_S
            self.ready = False
            self._down_since = now
        return period or self._aggressive_delay(now)

    def _aggressive_delay(self, now: float) -> float:
        down_for = now - self._down_since
        if down_for < EAGER_FOR_S:
            return EAGER_PERIOD_S
        if down_for < AGGRESSIVE_FOR_S:
            return AGGRESSIVE_PERIOD_S
        return PERIOD_S


async def tcp_probe(host: str, port: int, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to host:port opens within timeout_s."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def http_probe(host: str, port: int, request: bytes, timeout_s: float,
                     tls: ssl.SSLContext | None = None) -> bool:
    """True when the app answers `request` with a status in 200..399 within timeout_s."""
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, ssl=tls,
                                                           limit=MAX_STATUS_LINE)
            writer.write(request)
            line = await reader.readline()
    except (OSError, TimeoutError, ValueError, ssl.SSLError):
        return False
    finally:
        if writer is not None:
            writer.close()
    parts = line.split(None, 2)
    return (len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit()
            and 200 <= int(parts[1]) < 400)


def app_check(probe: AppProbe, host: str, port: int) -> Callable[[float], Awaitable[bool]]:
    """One attempt of `probe` against the app at host:port, given a timeout."""
    host, port = probe.host or host, probe.port or port
    if not probe.http:
        return lambda timeout_s: tcp_probe(host, port, timeout_s)
    request = probe_request(probe, host, port)
    tls = None
    if probe.https:  # as the kubelet: encrypted, certificate not checked
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    return lambda timeout_s: http_probe(host, port, request, timeout_s, tls)


async def probe_loop(
    check: Callable[[float], Awaitable[bool]],
    on_change: Callable[[bool], None],
    probe: AppProbe = DEFAULT_PROBE,
    name: str = "app",
) -> None:
    """Probe forever (until cancelled); call on_change(ready) whenever readiness flips."""
    loop = asyncio.get_running_loop()
    schedule = ProbeSchedule(loop.time(), probe)
    ready = False
    if schedule.first_delay_s:
        await asyncio.sleep(schedule.first_delay_s)
    while True:
        ok = await check(schedule.timeout_s)
        delay = schedule.observe(ok, loop.time())
        if schedule.ready != ready:
            ready = schedule.ready
            log.info("app %s", "ready" if ready else "not ready", extra={"app": name})
            on_change(ready)
        await asyncio.sleep(delay)
