"""Recorded usage in process memory (the reference; ephemeral like the memory graph)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from gatehouse.limits import LIMITS
from gatehouse.usage.events import Counters, UsageEvent, period_of


class MemoryUsageStore:
    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}  # (org, event id) -> expiry
        self._counters: dict[tuple[str, str], Counters] = {}  # (org, period)

    async def record(self, event: UsageEvent, window_seconds: int) -> bool:
        return self._record(event, window_seconds)

    def record_soon(self, event: UsageEvent, window_seconds: int,
                    done: Callable[[bool | BaseException], None]) -> None:
        try:
            duplicate = self._record(event, window_seconds)
        except Exception as exc:
            done(exc)
            return
        done(duplicate)

    def _record(self, event: UsageEvent, window_seconds: int) -> bool:
        now = time.time()
        key = (event.organization, event.event_id)
        expiry = self._seen.get(key)
        if expiry is not None and expiry > now:
            return True
        self._seen[key] = now + window_seconds
        if len(self._seen) > 1_000_000:
            self._seen = {k: v for k, v in self._seen.items() if v > now}
        metric = event.metric
        counters = self._counters.setdefault(
            (event.organization, period_of(metric, event.event_time)), Counters())
        ck = (event.workspace, metric.name)
        agg = metric.aggregate
        if agg == "count":
            counters.values[ck] = counters.values.get(ck, 0.0) + 1
        elif agg == "sum":  # saturates at counter_max, as the Redis store does
            counters.values[ck] = min(counters.values.get(ck, 0.0) + event.amount,
                                      LIMITS.counter_max)
        elif agg == "max":
            counters.values[ck] = max(counters.values.get(ck, event.amount), event.amount)
        elif agg == "distinct":
            counters.distinct.setdefault(ck, set()).add(event.dimension)
        elif agg == "latest":
            dims = counters.latest.setdefault(ck, {})
            seen = dims.get(event.dimension)
            if seen is None or event.event_time > seen[0]:
                dims[event.dimension] = (event.event_time, event.amount)
        return False

    async def counters(self, organization: str, periods: Mapping[str, str]) -> dict[str, Counters]:
        out = {}
        for period in periods:
            found = self._counters.get((organization, period))
            out[period] = found if found is not None else Counters()
        return out

    async def close(self) -> None:
        return None
