"""The activator's own load per revision, reported each second, and the poke (pure).

For every revision it carries traffic for, the activator reports the time-weighted
average of requests it holds or forwards and how many arrived (Knative's activator
concurrency reporter); the autoscaler adds that to the queues' non-proxied load.

The poke: the first request of a revision that has to wait (no instance, or none with a
free slot) makes the activator send a stat at once — concurrency 1, one request — rather
than at the next tick, because a stat with load for a revision at zero is what makes the
autoscaler decide at once. One poke per spell of activity: a revision is forgotten (and
may be poked again) after a period with no request and none in flight.
Callers pass `now`; nothing here reads a clock.
"""

from __future__ import annotations

from ebb.common.stats import ConcurrencyStats, Report

# What a poke says: concurrency 1, one request, nothing proxied (the activator's load is
# never "proxied"); period 0 = the autoscaler's default (1 s).
POKE = Report(1.0, 0.0, 1, 0, 0.0)


class RevisionLoad(ConcurrencyStats):
    """One revision's requests in the activator (held or being forwarded).

    It is its own `ConcurrencyStats`, so a request costs the activator two calls of
    bookkeeping: `request_in` on arrival (after `Traffic.activate` when the revision was
    idle) and `request_out` when it ends; the per-period figures come from `report`.
    """

    __slots__ = ("namespace", "name", "active", "poked")

    def __init__(self, namespace: str, name: str, now: float) -> None:
        super().__init__(now)
        self.namespace = namespace
        self.name = name
        self.active = False  # reported each period
        self.poked = False  # a poke was sent in this spell of activity


class Traffic:
    """The revisions with load, and their per-period reports."""

    __slots__ = ("_active",)

    def __init__(self) -> None:
        self._active: list[RevisionLoad] = []

    def activate(self, load: RevisionLoad, now: float) -> None:
        """A request arrives for a revision that is not `active`: its spell of activity,
        and its first period, start now (the caller then counts it with `request_in`)."""
        load.restart(now)  # idle means nothing in flight: nothing is lost
        load.active = True
        self._active.append(load)

    def held(self, load: RevisionLoad) -> bool:
        """A request of the revision has to wait; True when that calls for a poke now."""
        if load.poked:
            return False
        load.poked = True
        return True

    def collect(self, now: float) -> list[tuple[str, str, Report]]:
        """Close the period of every active revision: (namespace, name, report) each.

        A revision whose period saw no request and ends with none in flight is reported
        this once more (its load fell to zero) and then forgotten.
        """
        reports = []
        still: list[RevisionLoad] = []
        for load in self._active:
            report = load.report(now)
            reports.append((load.namespace, load.name, report))
            if report.request_count == 0 and load.concurrency == 0:
                load.active = False
                load.poked = False
            else:
                still.append(load)
        self._active = still
        return reports

    @property
    def active(self) -> int:
        return len(self._active)
