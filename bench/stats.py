"""Statistics over benchmark runs (pure): percentiles, median and spread of repeats, and
ratios against the baselines paired by repeat.

Ratios are taken within one repeat (the path and its baseline ran back to back, so drift
of a noisy machine cancels) and then the median over repeats is reported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """Median of repeated figures and how far they scattered."""

    median: float
    low: float
    high: float
    n: int

    @property
    def half_range_pct(self) -> float:
        """Half the range as a percentage of the median: (high - low) / 2 / median * 100;
        e.g. 90, 100, 110 -> 10 %. 0 for a single value (or a zero median)."""
        if self.n < 2 or self.median == 0:
            return 0.0
        return (self.high - self.low) / 2 / abs(self.median) * 100

    def to_dict(self) -> dict:
        return {"median": self.median, "low": self.low, "high": self.high, "n": self.n,
                "half_range_pct": round(self.half_range_pct, 2)}


def spread(values: Iterable[float]) -> Spread:
    """Median, min, max and count of the values (at least one)."""
    data = [float(v) for v in values]
    if not data:
        raise ValueError("spread of no values")
    return Spread(statistics.median(data), min(data), max(data), len(data))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, interpolating linearly
    between closest ranks (numpy's default); e.g. p50 of [1, 2, 3, 4] = 2.5."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q = {q}, must be in 0..100")
    position = (len(sorted_values) - 1) * q / 100
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    weight = position - lower
    return sorted_values[lower] * (1 - weight) + sorted_values[upper] * weight


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline, or None when either is missing or the baseline is 0."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline


Key = tuple[str, str, int]  # (app, path, concurrency)


@dataclass(frozen=True)
class Run:
    """One closed-loop measurement: a path at one concurrency in one repeat."""

    app: str
    path: str
    concurrency: int
    repeat: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    proxy_cpu_s: Mapping[str, float]  # per proxy process on the path
    other_cpu_s: float | None = None  # CPU used meanwhile by processes off the path

    @property
    def cpu_s(self) -> float:
        return sum(self.proxy_cpu_s.values())

    @property
    def cpu_us_per_request(self) -> float | None:
        if not self.proxy_cpu_s or self.requests <= 0:
            return None
        return self.cpu_s / self.requests * 1e6


@dataclass(frozen=True)
class Summary:
    """The repeats of one (app, path, concurrency), with ratios to the baseline paths."""

    app: str
    path: str
    concurrency: int
    rps: Spread
    p50_ms: Spread
    p99_ms: Spread
    cpu_s: Spread | None
    cpu_us_per_request: Spread | None
    errors: int
    proxy_cpu_s: Mapping[str, float]  # median per proxy
    vs: Mapping[str, Mapping[str, float | None]]  # baseline path -> {"rps": r, "p50": r}
    other_cpu_s: Spread | None = None

    def to_dict(self) -> dict:
        def opt(s: Spread | None) -> dict | None:
            return s.to_dict() if s is not None else None

        return {
            "app": self.app, "path": self.path, "concurrency": self.concurrency,
            "rps": self.rps.to_dict(), "p50_ms": self.p50_ms.to_dict(),
            "p99_ms": self.p99_ms.to_dict(), "proxy_cpu_s": opt(self.cpu_s),
            "proxy_cpu_us_per_request": opt(self.cpu_us_per_request),
            "proxy_cpu_s_by_process": dict(self.proxy_cpu_s), "errors": self.errors,
            "other_cpu_s": opt(self.other_cpu_s),
            "vs": {k: dict(v) for k, v in self.vs.items()},
        }


def _paired_ratios(
    runs: Sequence[Run], base: Mapping[int, Run], metric: Callable[[Run], float]
) -> float | None:
    values = [r for run in runs
              if run.repeat in base
              and (r := ratio(metric(run), metric(base[run.repeat]))) is not None]
    return statistics.median(values) if values else None


def summarize(runs: Iterable[Run], baselines: Sequence[str] = ("envoy", "direct")) -> list[Summary]:
    """One Summary per (app, path, concurrency), in first-seen order. For each baseline
    path, `vs[baseline]` holds the median over repeats of rps/rps_baseline and
    p50/p50_baseline, each ratio taken within one repeat."""
    groups: dict[Key, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.app, run.path, run.concurrency), []).append(run)
    out = []
    for (app, path, concurrency), group in groups.items():
        vs: dict[str, dict[str, float | None]] = {}
        for baseline in baselines:
            base = {r.repeat: r for r in groups.get((app, baseline, concurrency), [])}
            vs[baseline] = {
                "rps": _paired_ratios(group, base, lambda r: r.rps),
                "p50": _paired_ratios(group, base, lambda r: r.p50_ms),
            }
        with_cpu = [r for r in group if r.proxy_cpu_s]
        per_request = [v for r in with_cpu if (v := r.cpu_us_per_request) is not None]
        names = sorted({name for r in with_cpu for name in r.proxy_cpu_s})
        others = [r.other_cpu_s for r in group if r.other_cpu_s is not None]
        out.append(Summary(
            app=app, path=path, concurrency=concurrency,
            rps=spread(r.rps for r in group),
            p50_ms=spread(r.p50_ms for r in group),
            p99_ms=spread(r.p99_ms for r in group),
            cpu_s=spread(r.cpu_s for r in with_cpu) if with_cpu else None,
            cpu_us_per_request=spread(per_request) if per_request else None,
            errors=sum(r.errors for r in group),
            proxy_cpu_s={n: statistics.median(r.proxy_cpu_s.get(n, 0.0) for r in with_cpu)
                         for n in names},
            vs=vs,
            other_cpu_s=spread(others) if others else None,
        ))
    return out


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p95/p99/max (and count) of a list of latencies in ms; {} when empty."""
    if not latencies_ms:
        return {}
    data = sorted(latencies_ms)
    return {"n": len(data), "p50": percentile(data, 50), "p90": percentile(data, 90),
            "p95": percentile(data, 95), "p99": percentile(data, 99), "max": data[-1]}
