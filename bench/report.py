"""Turning summaries into the printed tables and the verdicts on issue 8's targets (pure)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bench.stats import Summary

# Path keys in table order, and how the table names them.
LABELS: dict[str, str] = {
    "direct": "direct → app",
    "envoy": "Envoy → app",
    "queue": "queue → app",
    "gateway": "gateway Envoy → queue → app",
    "gateway-activator": "gateway → activator → queue → app",
    "activator": "activator → queue → app",
}
PROXIES: dict[str, str] = {  # whose CPU the "proxy CPU" column adds up
    "direct": "-",
    "envoy": "envoy",
    "queue": "queue",
    "gateway": "envoy + queue",
    "gateway-activator": "envoy + activator + queue",
    "activator": "activator + queue",
}

QUEUE_RSS_LIMIT_MB = 40.0
P95_OVERHEAD_LIMIT_MS = 5.0
QUEUE_VS_ENVOY_MIN = 1.0
ACTIVATOR_VS_ENVOY_MIN = 0.8


def fmt_rate(value: float) -> str:
    """Requests per second, grouped: 845, 12,345."""
    return f"{value:,.0f}"


def fmt_ms(value: float | None) -> str:
    """Milliseconds with about three significant figures: 0.078, 1.23, 12.3, 100.4."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value:.3f}"
    if value < 10:
        return f"{value:.2f}"
    return f"{value:.1f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def fmt_spread(half_range_pct: float, n: int) -> str:
    """' ±4%' for repeated figures, '' for a single run."""
    return f" ±{half_range_pct:.0f}%" if n > 1 else ""


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]],
                   right: Sequence[bool] | None = None) -> str:
    """A GitHub-flavoured Markdown table, columns padded to line up in a terminal too."""
    body = [list(map(str, row)) for row in rows]
    if any(len(row) != len(headers) for row in body):
        raise ValueError("every row needs one cell per header")
    widths = [max([len(h), *(len(row[i]) for row in body)]) for i, h in enumerate(headers)]
    align = right if right is not None else [False] * len(headers)

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, align,
                                                                       strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2))
                          for w, r in zip(widths, align, strict=True)) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in body)])


CLOSED_HEADERS = ("app", "path", "conc", "req/s", "×Envoy", "×direct", "p50 ms",
                  "p50 ×Envoy", "p99 ms", "proxy CPU s", "CPU µs/req", "errors", "other CPU s")
_CLOSED_RIGHT = (False, False, True, True, True, True, True, True, True, True, True, True,
                 True)


def closed_loop_table(summaries: Sequence[Summary], unavailable: Mapping[str, str],
                      apps: Sequence[str], paths: Sequence[str]) -> str:
    """One row per (app, path, concurrency) in the given orders; a path that could not
    run gets one row per app saying why (e.g. 'n/a (activator not ready)')."""
    by_key = {(s.app, s.path, s.concurrency): s for s in summaries}
    rows = []
    for app in apps:
        for path in paths:
            if path in unavailable:
                rows.append([app, LABELS.get(path, path), "all", unavailable[path],
                             *[""] * (len(CLOSED_HEADERS) - 4)])
                continue
            for (a, p, c), s in sorted(by_key.items(), key=lambda kv: kv[0][2]):
                if a != app or p != path:
                    continue
                rows.append([
                    app, LABELS.get(path, path), str(c),
                    fmt_rate(s.rps.median) + fmt_spread(s.rps.half_range_pct, s.rps.n),
                    fmt_ratio(s.vs.get("envoy", {}).get("rps")),
                    fmt_ratio(s.vs.get("direct", {}).get("rps")),
                    fmt_ms(s.p50_ms.median) + fmt_spread(s.p50_ms.half_range_pct, s.p50_ms.n),
                    fmt_ratio(s.vs.get("envoy", {}).get("p50")),
                    fmt_ms(s.p99_ms.median),
                    "-" if s.cpu_s is None else f"{s.cpu_s.median:.2f}",
                    "-" if s.cpu_us_per_request is None
                    else f"{s.cpu_us_per_request.median:.0f}",
                    str(s.errors),
                    "-" if s.other_cpu_s is None else f"{s.other_cpu_s.median:.2f}",
                ])
    return markdown_table(CLOSED_HEADERS, rows, _CLOSED_RIGHT)


@dataclass(frozen=True)
class OpenLoopSummary:
    """Repeats of one path at a constant rate: medians, and the p95 overhead against
    direct paired by repeat."""

    path: str
    rate: float
    n: int
    achieved_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    overhead_p95_ms: float | None
    proxy_cpu_s: float | None
    discarded: int = 0  # runs left out: the generator itself fell behind

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# A generator that sends its requests this late (p99) was starved of CPU: its figures
# measure itself, not the path, so the run is left out (and counted as discarded).
MAX_SEND_LAG_P99_MS = 20.0


def generator_kept_up(result: Mapping, max_lag_ms: float = MAX_SEND_LAG_P99_MS) -> bool:
    lag = result.get("send_lag_ms") or {}
    return bool(result.get("latency_ms")) and lag.get("p99", float("inf")) <= max_lag_ms


def summarize_open_loop(runs: Sequence[Mapping],
                        max_lag_ms: float = MAX_SEND_LAG_P99_MS) -> list[OpenLoopSummary]:
    """`runs`: dicts {path, repeat, result (bench.openloop's JSON), proxy_cpu_s} -> one
    summary per path, in first-seen order, over the runs whose generator kept up (send
    lag p99 ≤ max_lag_ms); the p95 overhead pairs a run with the direct run of the same
    repeat, when that one is valid too."""
    valid = [r for r in runs if generator_kept_up(r["result"], max_lag_ms)]
    direct = {r["repeat"]: r["result"]["latency_ms"]["p95"] for r in valid
              if r["path"] == "direct"}
    groups: dict[str, list[Mapping]] = {}
    for run in runs:
        groups.setdefault(run["path"], []).append(run)
    out = []
    for path, group in groups.items():
        ok = [r for r in group if generator_kept_up(r["result"], max_lag_ms)]
        if not ok:
            continue
        lat = [r["result"]["latency_ms"] for r in ok]
        overheads = [r["result"]["latency_ms"]["p95"] - direct[r["repeat"]] for r in ok
                     if direct.get(r["repeat"]) is not None]
        cpu = [sum(r["proxy_cpu_s"].values()) for r in ok if r.get("proxy_cpu_s")]
        out.append(OpenLoopSummary(
            path=path,
            rate=ok[0]["result"]["rate"],
            n=len(ok),
            achieved_rps=statistics.median(
                r["result"]["ok"] / r["result"]["duration_s"] for r in ok),
            p50_ms=statistics.median(x["p50"] for x in lat),
            p95_ms=statistics.median(x["p95"] for x in lat),
            p99_ms=statistics.median(x["p99"] for x in lat),
            errors=sum(sum(r["result"]["errors"].values()) for r in ok),
            overhead_p95_ms=statistics.median(overheads) if overheads else None,
            proxy_cpu_s=statistics.median(cpu) if cpu else None,
            discarded=len(group) - len(ok),
        ))
    return out


def open_loop_table(summaries: Sequence[OpenLoopSummary], unavailable: Mapping[str, str],
                    paths: Sequence[str]) -> str:
    headers = ("path", "rate", "ok/s", "p50 ms", "p95 ms", "p99 ms", "p95 − direct ms",
               "proxy CPU s", "errors", "runs (discarded)")
    by_path = {s.path: s for s in summaries}
    rows = []
    for path in paths:
        if path in unavailable:
            rows.append([LABELS.get(path, path), "", unavailable[path], *[""] * 7])
            continue
        s = by_path.get(path)
        if s is None:
            continue
        rows.append([
            LABELS.get(path, path), fmt_rate(s.rate), fmt_rate(s.achieved_rps),
            fmt_ms(s.p50_ms), fmt_ms(s.p95_ms), fmt_ms(s.p99_ms),
            "-" if s.overhead_p95_ms is None else f"{s.overhead_p95_ms:+.2f}",
            "-" if s.proxy_cpu_s is None else f"{s.proxy_cpu_s:.2f}", str(s.errors),
            f"{s.n}" + (f" ({s.discarded})" if s.discarded else ""),
        ])
    return markdown_table(headers, rows, (False, True, True, True, True, True, True, True,
                                          True, True))


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: could not be measured

    @property
    def mark(self) -> str:
        return {True: "met", False: "NOT met", None: "n/a"}[self.met]


def _ratios(summaries: Sequence[Summary], app: str, path: str, key: str
            ) -> list[tuple[int, float]]:
    return [(s.concurrency, v) for s in sorted(summaries, key=lambda s: s.concurrency)
            if s.app == app and s.path == path
            and (v := s.vs.get("envoy", {}).get(key)) is not None]


def _listing(pairs: Sequence[tuple[int, float]]) -> str:
    return ", ".join(f"c={c}: {v:.2f}×" for c, v in pairs)


def evaluate_targets(
    summaries: Sequence[Summary],
    open_loop: Sequence[OpenLoopSummary],
    queue_idle_rss_mb: Mapping[str, float],
    unavailable: Mapping[str, str],
    app: str = "fast",
) -> list[Verdict]:
    """Issue 8's targets against this run. Throughput targets are judged on the fast app
    at every concurrency measured (on the 100 ms app the app, not the proxy, sets the
    pace); a target is met only if it holds at every level."""
    out = []
    tput = _ratios(summaries, app, "queue", "rps")
    out.append(Verdict(
        f"queue → app throughput ≥ {QUEUE_VS_ENVOY_MIN:g}× Envoy hop ({app} app)",
        _listing(tput) or "not measured",
        all(v >= QUEUE_VS_ENVOY_MIN for _, v in tput) if tput else None))
    p50 = _ratios(summaries, app, "queue", "p50")
    out.append(Verdict(
        f"queue → app p50 ≤ Envoy hop's ({app} app; ratio ≤ 1)",
        _listing(p50) or "not measured",
        all(v <= 1.0 for _, v in p50) if p50 else None))
    gw = next((s for s in open_loop if s.path == "gateway"), None)
    if gw is None or gw.overhead_p95_ms is None:
        out.append(Verdict(f"gateway → queue → app p95 overhead vs direct ≤ "
                           f"{P95_OVERHEAD_LIMIT_MS:g} ms (100 ms app, constant rate)",
                           "not measured", None))
    else:
        out.append(Verdict(
            f"gateway → queue → app p95 overhead vs direct ≤ {P95_OVERHEAD_LIMIT_MS:g} ms "
            f"(100 ms app, {gw.rate:,.0f} req/s)",
            f"{gw.overhead_p95_ms:+.2f} ms (p95 {gw.p95_ms:.2f} ms, {gw.errors} errors)",
            gw.overhead_p95_ms <= P95_OVERHEAD_LIMIT_MS and gw.errors == 0))
    name = (f"{LABELS['activator']} throughput ≥ {ACTIVATOR_VS_ENVOY_MIN:g}× Envoy hop "
            f"({app} app)")
    if "activator" in unavailable:
        out.append(Verdict(name, unavailable["activator"], None))
    else:
        act = _ratios(summaries, app, "activator", "rps")
        out.append(Verdict(name, _listing(act) or "not measured",
                           all(v >= ACTIVATOR_VS_ENVOY_MIN for _, v in act) if act else None))
    name = f"queue RSS at idle ≤ {QUEUE_RSS_LIMIT_MB:g} MB"
    if not queue_idle_rss_mb:
        out.append(Verdict(name, "not measured", None))
    else:
        out.append(Verdict(name, "; ".join(f"{label}: {mb:.1f} MB"
                                           for label, mb in queue_idle_rss_mb.items()),
                           all(mb <= QUEUE_RSS_LIMIT_MB for mb in queue_idle_rss_mb.values())))
    return out


def reference_note(summaries: Sequence[Summary], unavailable: Mapping[str, str],
                   app: str = "fast") -> str:
    """The full cold path against the Envoy hop, printed under the targets but judged by
    none: it is three proxies (the gateway Envoy among them) against one, where issue 8's
    activator target is the activator -> queue path."""
    path = "gateway-activator"
    ratios = _ratios(summaries, app, path, "rps")
    if path in unavailable or not ratios:
        return ""
    return (f"Not a target, for reference: {LABELS[path]} throughput against the one Envoy "
            f"hop ({app} app; three proxies, one of them an Envoy, against one): "
            f"{_listing(ratios)}.")


def targets_table(verdicts: Sequence[Verdict]) -> str:
    return markdown_table(("target (issue 8)", "measured", "verdict"),
                          [(v.target, v.measured, v.mark) for v in verdicts])
