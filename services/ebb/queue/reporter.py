"""The queue's stats stream: one revision's `ConcurrencyStats`, reported every second.

The streaming (ticker, sender, reconnect with backoff, bounded pending queue) is
`ebb.common.statsreporter.StatsReporter`, shared with the activator; the queue only says
which revision its single `snapshot` belongs to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ebb.common.stats import Report
from ebb.common.statsreporter import StatsReporter


class Reporter(StatsReporter):
    """Closes a stats period every `period_s` and streams it to `target` (HOST:PORT)."""

    def __init__(
        self,
        target: str,
        *,
        instance: str,
        namespace: str,
        revision: str,
        snapshot: Callable[[float], Report],
        started_at: float,
        **options: Any,
    ) -> None:
        super().__init__(
            target,
            instance=instance,
            collect=lambda now: ((namespace, revision, snapshot(now)),),
            started_at=started_at,
            **options,
        )
