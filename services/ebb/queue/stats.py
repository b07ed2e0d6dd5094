"""The queue's request accounting; the code lives in `ebb.common.stats` (the activator uses it too)."""

from ebb.common.stats import ConcurrencyStats, Report

__all__ = ["ConcurrencyStats", "Report"]
