"""Recorded usage: events, the counters they fold into, and the store seam."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gatehouse.policy.model import Metric

DEDUP_WINDOW_SECONDS = 35 * 24 * 3600
FUTURE_SKEW_SECONDS = 300
ALL_TIME = "all"


def period_of(metric: Metric, event_time: float) -> str:
    """The counter period an event falls in: "all", or "YYYY-MM" (UTC) for monthly metrics."""
    if metric.period == "month":
        return time.strftime("%Y-%m", time.gmtime(event_time))
    return ALL_TIME


@dataclass(frozen=True, slots=True)
class UsageEvent:
    event_id: str
    organization: str  # tenant key, e.g. "organization:acme"
    workspace: str  # workspace id
    metric: Metric
    amount: float
    dimension: str
    event_time: float


@dataclass(slots=True)
class Counters:
    """One organization's recorded counters for one period, per (workspace, metric)."""

    values: dict[tuple[str, str], float] = field(default_factory=dict)
    distinct: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    latest: dict[tuple[str, str], dict[str, tuple[float, float]]] = field(default_factory=dict)

    def value(self, workspace: str, metric: Metric) -> float:
        key = (workspace, metric.name)
        if metric.aggregate == "distinct":
            return float(len(self.distinct.get(key, ())))
        if metric.aggregate == "latest":
            return float(sum(a for _, a in self.latest.get(key, {}).values()))
        return self.values.get(key, 0.0)

    def members(self, workspace: str, metric: Metric) -> set[str]:
        return self.distinct.get((workspace, metric.name), set())


class UsageStore(Protocol):
    """Where recorded usage lives. Extension point: one implementation per backend."""

    async def record(self, event: UsageEvent, window_seconds: int) -> bool:
        """Fold the event into its counters unless its id was seen within the window.

        Returns True if it was a duplicate (and nothing changed). Atomic: two
        concurrent records of one event id count it once.
        """
        ...

    def record_soon(self, event: UsageEvent, window_seconds: int,
                    done: Callable[[bool | BaseException], None]) -> None:
        """``record`` without a coroutine: ``done`` gets what ``record`` would return or
        raise, exactly once, on the event loop's thread (possibly before this returns).
        Called on the loop's thread; the short path of RecordUsage."""
        ...

    async def counters(self, organization: str, periods: Mapping[str, str]) -> dict[str, Counters]:
        """Counters of ``organization`` for each requested period ({period: period})."""
        ...

    async def close(self) -> None: ...
