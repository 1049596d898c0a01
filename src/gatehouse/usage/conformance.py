"""The usage store contract as an importable suite: one set of scenarios, every backend.

Like :mod:`gatehouse.graph.conformance`: the memory usage store is the
reference, and a backend passes when every scenario in :data:`SCENARIOS`
runs without an AssertionError on stores its :class:`Backend` opens.
Exceptions, where a backend genuinely differs, are written down in the
backend's ``exceptions`` with a reason. Scenarios use plain ``assert``.
"""

from __future__ import annotations

import asyncio
import calendar
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType

from gatehouse.policy.model import Metric
from gatehouse.usage.events import ALL_TIME, UsageEvent, UsageStore
from gatehouse.usage.memory import MemoryUsageStore

ORG = "organization:acme"
OTHER = "organization:globex"
WINDOW = 3600


class Backend:
    """How the suite opens usage stores of one kind. Extension point: subclass per backend."""

    name = "backend"
    # scenario name -> why this backend differs there (the scenario is not run).
    exceptions: Mapping[str, str] = MappingProxyType({})

    def open(self) -> AbstractAsyncContextManager[UsageStore]:
        """A fresh, empty store, closed on exit."""
        raise NotImplementedError


class MemoryBackend(Backend):
    """The reference backend."""

    name = "memory"

    @asynccontextmanager
    async def open(self) -> AsyncIterator[UsageStore]:
        store = MemoryUsageStore()
        try:
            yield store
        finally:
            await store.close()


class RedisBackend(Backend):
    """Stores in one Redis (or Valkey), each under a fresh key prefix."""

    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url

    @asynccontextmanager
    async def open(self) -> AsyncIterator[UsageStore]:
        from gatehouse.usage.redis import RedisUsageStore

        store = RedisUsageStore(self.url, prefix=f"u{uuid.uuid4().hex[:10]}")
        try:
            yield store
        finally:
            await store.close()


@dataclass(frozen=True, slots=True)
class Scenario:
    """One behaviour every usage store must show; ``doc`` says which, in one sentence."""

    name: str
    doc: str
    run: Callable[[Backend], Awaitable[None]]


SCENARIOS: list[Scenario] = []


def scenario(fn: Callable[[UsageStore], Awaitable[None]]
             ) -> Callable[[UsageStore], Awaitable[None]]:
    """Register ``fn(store)`` as a scenario run on a fresh store."""

    async def run(backend: Backend) -> None:
        async with backend.open() as store:
            await fn(store)

    SCENARIOS.append(Scenario(fn.__name__, " ".join((fn.__doc__ or "").split()), run))
    return fn


async def run_scenario(backend: Backend, item: Scenario) -> None:
    """Run one scenario against ``backend`` (the caller skips its exceptions)."""
    await item.run(backend)


def unknown_exceptions(backend: Backend) -> list[str]:
    """Exceptions naming no scenario (a renamed scenario must not hide a difference)."""
    return sorted(set(backend.exceptions) - {s.name for s in SCENARIOS})


# -- helpers ---------------------------------------------------------------------

RUNS = Metric("runs", "recorded", aggregate="count", period="month")
ROWS = Metric("rows", "recorded", aggregate="sum", period="month")
PEAK = Metric("peak", "recorded", aggregate="max")
SOURCES = Metric("sources", "recorded", aggregate="distinct")
SEATS = Metric("seats", "recorded", aggregate="latest")

NOW = time.time()
MONTH = time.strftime("%Y-%m", time.gmtime(NOW))


def event(event_id: str, metric: Metric, amount: float = 1.0, dimension: str = "",
          workspace: str = "ws1", organization: str = ORG, at: float = NOW) -> UsageEvent:
    return UsageEvent(event_id, organization, workspace, metric, amount, dimension, at)


async def value(store: UsageStore, metric: Metric, workspace: str = "ws1",
                organization: str = ORG, period: str | None = None) -> float:
    period = period or (MONTH if metric.period == "month" else ALL_TIME)
    counters = await store.counters(organization, {period: period})
    return counters[period].value(workspace, metric)


# -- scenarios -------------------------------------------------------------------


@scenario
async def an_event_id_counts_once(store: UsageStore) -> None:
    """Recording one event id twice within the window counts it once; the retry says duplicate."""
    assert await store.record(event("e1", RUNS), WINDOW) is False
    assert await store.record(event("e1", RUNS), WINDOW) is True
    assert await store.record(event("e2", RUNS), WINDOW) is False
    assert await value(store, RUNS) == 2


@scenario
async def event_ids_are_per_organization(store: UsageStore) -> None:
    """The same event id in two organizations counts in each."""
    assert await store.record(event("e1", RUNS), WINDOW) is False
    assert await store.record(event("e1", RUNS, organization=OTHER), WINDOW) is False
    assert await value(store, RUNS) == 1
    assert await value(store, RUNS, organization=OTHER) == 1


@scenario
async def concurrent_records_of_one_id_count_once(store: UsageStore) -> None:
    """Many concurrent records of one event id: exactly one counts."""
    results = await asyncio.gather(*(store.record(event("same", ROWS, 5), WINDOW)
                                     for _ in range(20)))
    assert sorted(results) == [False] + [True] * 19
    assert await value(store, ROWS) == 5


@scenario
async def aggregates_fold_as_declared(store: UsageStore) -> None:
    """count adds one, sum adds amounts, max keeps the largest, distinct counts dimensions."""
    for i, amount in enumerate((3, 4.5, 2)):
        await store.record(event(f"r{i}", RUNS), WINDOW)
        await store.record(event(f"s{i}", ROWS, amount), WINDOW)
        await store.record(event(f"p{i}", PEAK, amount), WINDOW)
    for i, dim in enumerate(("asana", "hubspot", "asana")):
        await store.record(event(f"d{i}", SOURCES, dimension=dim), WINDOW)
    assert await value(store, RUNS) == 3
    assert await value(store, ROWS) == 9.5
    assert await value(store, PEAK) == 4.5
    assert await value(store, SOURCES) == 2
    counters = await store.counters(ORG, {ALL_TIME: ALL_TIME})
    assert counters[ALL_TIME].members("ws1", SOURCES) == {"asana", "hubspot"}


@scenario
async def latest_keeps_the_newest_value_per_dimension(store: UsageStore) -> None:
    """latest keeps each dimension's value with the newest event time; an older one is ignored."""
    await store.record(event("a1", SEATS, 5, "team-a", at=NOW - 100), WINDOW)
    await store.record(event("a2", SEATS, 7, "team-a", at=NOW - 50), WINDOW)
    await store.record(event("a0", SEATS, 1, "team-a", at=NOW - 200), WINDOW)
    await store.record(event("b1", SEATS, 3, "team-b", at=NOW - 10), WINDOW)
    assert await value(store, SEATS) == 10


@scenario
async def counters_are_per_workspace_and_period(store: UsageStore) -> None:
    """Monthly counters fall in the event's UTC month and each workspace counts apart."""
    year, month = time.gmtime(NOW)[:2]
    last_year, last_month = (year, month - 1) if month > 1 else (year - 1, 12)
    previous = calendar.timegm((last_year, last_month, 15, 12, 0, 0))
    previous_name = f"{last_year:04d}-{last_month:02d}"
    await store.record(event("now", ROWS, 2), WINDOW)
    await store.record(event("then", ROWS, 3, at=previous), 40 * 86400)
    await store.record(event("other-ws", ROWS, 4, workspace="ws2"), WINDOW)
    assert await value(store, ROWS) == 2
    assert await value(store, ROWS, period=previous_name) == 3
    assert await value(store, ROWS, workspace="ws2") == 4


@scenario
async def nothing_recorded_reads_as_empty(store: UsageStore) -> None:
    """An organization or period with nothing recorded reads as empty counters, not an error."""
    counters = await store.counters("organization:none", {ALL_TIME: ALL_TIME, MONTH: MONTH})
    assert set(counters) == {ALL_TIME, MONTH}
    assert counters[MONTH].value("ws1", ROWS) == 0
    assert counters[ALL_TIME].members("ws1", SOURCES) == set()


@scenario
async def an_event_id_counts_again_after_its_window(store: UsageStore) -> None:
    """Once the dedup window has passed, the same event id counts again."""
    assert await store.record(event("w", RUNS), 1) is False
    # Time passing is the behaviour under test: retry (a duplicate changes
    # nothing) until the one-second window has expired, within a bound.
    deadline = time.monotonic() + 10
    while await store.record(event("w", RUNS), 1):
        assert time.monotonic() < deadline, "the dedup window never expired"
        await asyncio.sleep(0.1)
    assert await value(store, RUNS) == 2


class Done:
    """A ``done`` callback for ``record_soon``: keeps each result it is handed, and the
    thread that handed it."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool | BaseException, int]] = []
        self._called = asyncio.Event()

    def __call__(self, result: bool | BaseException) -> None:
        self.calls.append((result, threading.get_ident()))
        self._called.set()

    async def once(self, store: UsageStore) -> bool | BaseException:
        """The one result: ``done`` was called exactly once, on the loop's thread."""
        await asyncio.wait_for(self._called.wait(), 10)
        await store.counters(ORG, {ALL_TIME: ALL_TIME})  # a round trip: a second answer would be in
        assert len(self.calls) == 1, self.calls
        result, thread = self.calls[0]
        assert thread == threading.get_ident(), "done was called off the loop's thread"
        return result


async def recorded_soon(store: UsageStore, recorded: UsageEvent) -> bool | BaseException:
    done = Done()
    store.record_soon(recorded, WINDOW, done)
    return await done.once(store)


@scenario
async def record_soon_answers_like_record(store: UsageStore) -> None:
    """record_soon hands done what record returns, exactly once, on the loop's thread:
    False for a new event id, True for the same id again (whichever of the two recorded
    it first, several in one loop turn too), and the event counts once."""
    assert await recorded_soon(store, event("s1", ROWS, 5)) is False
    assert await recorded_soon(store, event("s1", ROWS, 5)) is True
    assert await store.record(event("s1", ROWS, 5), WINDOW) is True
    assert await store.record(event("s2", ROWS, 7), WINDOW) is False
    assert await recorded_soon(store, event("s2", ROWS, 7)) is True
    dones = [Done() for _ in range(4)]
    for d, event_id in zip(dones, ("t1", "t2", "t1", "s1"), strict=True):
        store.record_soon(event(event_id, ROWS, 1), WINDOW, d)  # one loop turn
    assert [await d.once(store) for d in dones] == [False, False, True, True]
    assert await value(store, ROWS) == 5 + 7 + 1 + 1
