"""The in-process observability harness runs every configuration and reports paired
differences (a smoke test with a few requests; the figures themselves are not checked)."""

import shutil
from pathlib import Path

from bench.observability import BEFORE, CONFIGS, measure, summary

REPO = Path(__file__).resolve().parents[2]


async def test_every_configuration_runs_and_is_compared_with_metrics():
    results = await measure(slices=2, requests=20, seed=1)
    assert set(results) == set(CONFIGS)
    assert all(len(v) == 2 and min(v) > 0 for v in results.values())
    assert summary(results)["metrics"]["vs_metrics_us"] == 0


async def test_before_loads_another_trees_counting_and_log_beside_these(tmp_path):
    for part in ("common/metrics.py", "queue/requestlog.py"):
        (tmp_path / "services/ebb" / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "services/ebb" / part, tmp_path / "services/ebb" / part)
    results = await measure(slices=1, requests=20, seed=1, before=str(tmp_path))
    assert set(BEFORE) <= set(results)
