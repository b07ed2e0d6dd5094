"""wrk: its command line, the Lua hook that makes it print exact figures, and parsing its
output (pure). Running it lives in bench.runner.

wrk prints its summary rounded to two decimals ("1.10ms"); the `done` hook below also
prints one `BENCH_JSON {...}` line with the exact counts and percentiles in microseconds,
which `parse_wrk` prefers. Without the line (another wrk, no Lua) the text is parsed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

JSON_MARK = "BENCH_JSON "

# Only a `done` hook: wrk keeps its fast path (no per-request Lua) when a script defines
# neither request() nor response().
DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,' ..
    '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},' ..
    '"latency_us":{"min":%.0f,"mean":%.3f,"stdev":%.3f,"max":%.0f,' ..
    '"p50":%.0f,"p75":%.0f,"p90":%.0f,"p95":%.0f,"p99":%.0f,"p99.9":%.0f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(95), latency:percentile(99), latency:percentile(99.9)))
end
"""

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME = re.compile(r"^([0-9.]+)(us|ms|s|m|h)$")
_PERCENTILE = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s*$")
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([0-9.]+\w+), (\S+) read")
_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.M)


class WrkParseError(ValueError):
    """wrk's output did not hold the figures a run needs."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run. Latencies in milliseconds; `errors` counts by kind (connect, read,
    write, timeout, status = non-2xx/3xx responses)."""

    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    p95_ms: float | None = None  # only from the JSON line (wrk's text has no p95)
    errors: Mapping[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict:
        return {
            "requests": self.requests, "duration_s": self.duration_s, "rps": self.rps,
            "p50_ms": self.p50_ms, "p90_ms": self.p90_ms, "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms, "mean_ms": self.mean_ms, "max_ms": self.max_ms,
            "errors": dict(self.errors),
        }


def wrk_command(
    url: str,
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
    timeout_s: float = 5.0,
    headers: Mapping[str, str] | None = None,
    script: str | None = None,
    binary: str = "wrk",
) -> list[str]:
    """wrk's argv for a closed-loop run of `connections` keep-alive connections for
    `duration_s` (whole seconds, at least 1: wrk's -d takes no fractions)."""
    if connections < 1:
        raise ValueError(f"connections = {connections}, must be at least 1")
    threads = max(1, min(threads, connections))  # wrk refuses fewer connections than threads
    seconds = max(1, round(duration_s))
    argv = [binary, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
            "--timeout", f"{timeout_s:g}s", "--latency"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    if script:
        argv += ["-s", script]
    argv.append(url)
    return argv


def parse_time_ms(text: str) -> float:
    """wrk's time notation ("92.00us", "1.10ms", "2.00s", "1.00m") in milliseconds."""
    match = _TIME.match(text.strip())
    if not match:
        raise WrkParseError(f"not a wrk time: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def _from_json(data: Mapping) -> WrkResult:
    latency = data["latency_us"]
    duration_s = data["duration_us"] / 1e6
    requests = int(data["requests"])
    if duration_s <= 0:
        raise WrkParseError("wrk reported a zero duration")
    return WrkResult(
        requests=requests,
        duration_s=duration_s,
        rps=requests / duration_s,
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p95_ms=latency["p95"] / 1000,
        p99_ms=latency["p99"] / 1000,
        mean_ms=latency["mean"] / 1000,
        max_ms=latency["max"] / 1000,
        errors={k: int(v) for k, v in data["errors"].items()},
    )


def _from_text(lines: Sequence[str]) -> WrkResult:
    percentiles: dict[str, float] = {}
    requests = None
    duration_s = None
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
    mean_ms = max_ms = None
    in_distribution = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("Latency Distribution"):
            in_distribution = True
            continue
        if in_distribution:
            match = _PERCENTILE.match(line)
            if match:
                percentiles[match.group(1)] = parse_time_ms(match.group(2))
                continue
            in_distribution = False
        if stripped.startswith("Latency") and mean_ms is None:
            parts = stripped.split()
            if len(parts) >= 4:
                mean_ms = parse_time_ms(parts[1])
                max_ms = parse_time_ms(parts[3])
            continue
        match = _REQUESTS.match(line)
        if match:
            requests = int(match.group(1))
            duration_s = parse_time_ms(match.group(2)) / 1000
            continue
        match = _SOCKET.search(line)
        if match:
            for key, value in zip(("connect", "read", "write", "timeout"), match.groups(),
                                  strict=True):
                errors[key] = int(value)
            continue
        match = _NON2XX.search(line)
        if match:
            errors["status"] = int(match.group(1))
    text = "\n".join(lines)
    rps_match = _RPS.search(text)
    missing = [name for name, value in (("requests", requests), ("Requests/sec", rps_match),
                                        ("50%", percentiles.get("50")),
                                        ("99%", percentiles.get("99")))
               if value is None]
    if missing:
        raise WrkParseError(f"wrk output lacks {', '.join(missing)} (was --latency given?)")
    assert requests is not None and duration_s is not None and rps_match is not None
    p50 = percentiles["50"]
    return WrkResult(
        requests=requests,
        duration_s=duration_s,
        rps=float(rps_match.group(1)),
        p50_ms=p50,
        p90_ms=percentiles.get("90", p50),
        p99_ms=percentiles["99"],
        mean_ms=mean_ms if mean_ms is not None else p50,
        max_ms=max_ms if max_ms is not None else percentiles["99"],
        errors=errors,
    )


def parse_wrk(output: str) -> WrkResult:
    """The figures of one wrk run: from its BENCH_JSON line when there is one (exact),
    else from its --latency text summary (rounded). Raises WrkParseError."""
    lines = output.splitlines()
    for line in lines:
        if line.startswith(JSON_MARK):
            try:
                return _from_json(json.loads(line[len(JSON_MARK):]))
            except (ValueError, KeyError, TypeError) as exc:
                raise WrkParseError(f"bad {JSON_MARK.strip()} line: {exc}") from None
    return _from_text(lines)
