"""The index of one server process, kept current by following the store.

The follower owns the index, the policy it is read with, and the lock that
guards both: only it writes them. Each request takes one ``View`` — the
(policy, index) pair as it was at one moment — so a decision never mixes two
policies or two revisions. Readers on the transport's poll thread take the
view under ``lock``; readers on the event loop thread need no lock, because
the index only changes on that thread between their awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from gatehouse.errors import FailedPrecondition, ResourceExhausted, Unavailable
from gatehouse.graph.changes import Change, DeleteRelationship, TouchRelationship
from gatehouse.graph.index import GraphIndex
from gatehouse.graph.store import ChangelogGap, GraphStore
from gatehouse.limits import LIMITS
from gatehouse.policy.model import PARENT, CompiledPolicy
from gatehouse.runtime.consistency import Consistency, Mode

log = logging.getLogger("gatehouse.follower")

# How many changes a Watch stream may have queued before it is ended as too slow.
WATCH_QUEUE = 10_000
# A change with this many operations or more announces the rows it touches while
# it is applied, so decisions that read none of them need not wait (see busy_rows).
LARGE_CHANGE = 256


@dataclass(frozen=True, slots=True)
class View:
    """The policy and the index one request reads, taken together."""

    policy: CompiledPolicy
    index: GraphIndex


class _Gap:
    """Sentinel queued to watchers when the follower had to rebuild from a snapshot."""


_GAP = _Gap()


class IndexFollower:
    """Builds the index from a snapshot and applies the store's changelog to it.

    When the changelog cannot continue (trimmed past the index, or the store
    lost its data) the index is rebuilt from a snapshot and swapped in whole.
    While the store is unreachable the index keeps serving and health
    listeners hear about it.
    """

    def __init__(self, store: GraphStore, policy: CompiledPolicy, index: GraphIndex,
                 epoch: str, freshness_wait: float = LIMITS.freshness_wait_seconds) -> None:
        self.store = store
        self.lock = threading.Lock()
        """Held while the index or policy changes, and by poll-thread readers."""
        self._policy = policy
        self._index = index
        self._epoch = epoch
        self._healthy = True
        self._listeners: list[Callable[[bool], None]] = []
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Queue[Change | _Gap]] = set()
        self._busy: frozenset[str] | None = None
        # The revision and commit time of the last change applied (None after a snapshot).
        self._last: tuple[int, float] | None = None
        # How long a read without a deadline may wait for the index to reach
        # the revision it asks for; the changelog normally follows in
        # milliseconds, so this only ends waits that would never end.
        self.freshness_wait = freshness_wait

    @classmethod
    async def start(cls, store: GraphStore, policy: CompiledPolicy,
                    freshness_wait: float = LIMITS.freshness_wait_seconds) -> IndexFollower:
        index, epoch = await _snapshot_index(store)
        follower = cls(store, policy, index, epoch, freshness_wait)
        follower._task = asyncio.create_task(follower._follow_loop(), name="index-follower")
        return follower

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- what readers see ---------------------------------------------------

    @property
    def policy(self) -> CompiledPolicy:
        return self._policy

    @property
    def index(self) -> GraphIndex:
        return self._index

    @property
    def revision(self) -> int:
        return self._index.revision

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def store_healthy(self) -> bool:
        return self._healthy

    @property
    def busy_rows(self) -> frozenset[str] | None:
        """While a large change is being applied under ``lock``: the objects whose rows
        it changes (None otherwise, or when it moves objects between parents).

        The index changes only those rows, so a decision that reads only other
        objects' rows sees the same answer before, during and after the apply and
        may read without the lock (Decisions does). A 10,000-operation change takes
        tens of milliseconds to apply; without this every Check would wait for it.
        """
        return self._busy

    def view(self) -> View:
        """The current (policy, index) pair; for readers on the loop thread."""
        return View(self._policy, self._index)

    def on_health(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(healthy)`` whenever the store becomes (un)reachable."""
        self._listeners.append(listener)

    # -- what only the follower and the reloader change -----------------------

    def set_policy(self, policy: CompiledPolicy) -> None:
        """Swap in a new policy; a CheckBulk on the poll thread sees one policy throughout."""
        with self.lock:
            self._policy = policy

    def _set_health(self, healthy: bool) -> None:
        if healthy != self._healthy:
            self._healthy = healthy
            self._advance()
            log.warning("store %s", "reachable again" if healthy else "unreachable",
                        extra={"store": self.store.description})
            for listener in self._listeners:
                listener(healthy)

    def _advance(self) -> None:
        self._advanced.set()
        self._advanced = asyncio.Event()

    async def _follow_loop(self) -> None:
        backoff = 0.05
        while True:
            try:
                # On every (re)connection, before serving as fresh again: the store must
                # still hold the data set the index was built from (same epoch) and be
                # at least where the index is (a Redis restarted from a shorter AOF, or
                # a replica promoted behind it, rewinds the revision).
                epoch, head = await self.store.head()  # raises Unavailable when unreachable
                if epoch != self._epoch:
                    raise ChangelogGap("the store lost or replaced its data (epoch changed)")
                if head < self._index.revision:
                    raise ChangelogGap(f"the store is at revision {head}, behind the index "
                                       f"at {self._index.revision}")
                last = self._last
                if last is not None and last[0] == self._index.revision and last[1]:
                    now = await self.store.committed_at(last[0])
                    if now is not None and now != last[1]:
                        raise ChangelogGap(f"the store went back and wrote revision {last[0]} "
                                           "again with a different change")
                self._set_health(True)
                backoff = 0.05
                async for change in self.store.follow(self._index.revision, self._epoch):
                    self._busy = touched_rows(change) if len(change.ops) >= LARGE_CHANGE else None
                    try:
                        with self.lock:
                            self._index.apply((change,))
                    finally:
                        self._busy = None
                    self._last = (change.revision, change.committed_at)
                    self._publish(change)
                    self._advance()
            except ChangelogGap as exc:
                log.warning("rebuilding the index from a snapshot", extra={"reason": str(exc)})
                try:
                    index, epoch = await _snapshot_index(self.store)
                except Unavailable:
                    self._set_health(False)
                    await asyncio.sleep(backoff)
                    continue
                with self.lock:
                    self._index, self._epoch, self._last = index, epoch, None
                self._set_health(True)
                self._publish(_GAP)
                self._advance()
            except Unavailable as exc:
                self._set_health(False)
                log.debug("follower waiting for the store", extra={"error": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("index follower failed; retrying")
                await asyncio.sleep(1.0)

    # -- waiting for freshness ----------------------------------------------

    async def wait_for(self, revision: int, timeout: float | None) -> bool:
        """Wait until the index has applied ``revision``; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._index.revision < revision:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._advanced.wait(), remaining)
            except TimeoutError:
                return False
        return True

    def fresh_enough(self, consistency: Consistency) -> bool:
        """Whether the index already answers ``consistency`` without waiting or asking."""
        mode = consistency.mode
        if mode is Mode.MINIMIZE_LATENCY:
            return True
        if mode is Mode.FULLY_CONSISTENT or not self._healthy:
            return False
        return self._index.revision >= consistency.revision

    async def ensure(self, consistency: Consistency, timeout: float | None) -> None:
        """Bring the index to the freshness asked for, within ``timeout`` seconds.

        Without a timeout (the call has no deadline) it waits at most
        ``freshness_wait``, so a revision the index never reaches fails
        instead of holding the call forever.
        """
        if consistency.mode is Mode.MINIMIZE_LATENCY:
            return
        if timeout is None:
            timeout = self.freshness_wait
        if consistency.mode is Mode.FULLY_CONSISTENT:
            await self._ensure_head(timeout)
            return
        if not self._healthy:
            # The store went away: until the follower has seen it again (same data set,
            # not rewound) the index cannot prove any revision, for revisions count
            # within one data set only. minimize_latency still answers meanwhile.
            raise Unavailable("the store is unreachable; the index cannot prove it is at "
                              f"revision {consistency.revision} of the store's data; retry")
        target = consistency.revision
        if not await self.wait_for(target, timeout):
            raise Unavailable(
                f"index is at revision {self._index.revision}, not yet at {target}; "
                "retry, or ask with a longer deadline"
            )

    async def _ensure_head(self, timeout: float) -> None:
        """Wait until the index holds the store's newest revision of the store's current
        data set: after a wipe the store's revisions start again from 0, and an old
        index past them must rebuild before it answers as fully consistent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            epoch, target = await self.store.head()
            if epoch == self._epoch:
                if await self.wait_for(target, deadline - loop.time()):
                    return
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            # The follower rebuilds when it notices; it advances when done.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), min(remaining, 0.05))
        raise Unavailable(
            f"index is at revision {self._index.revision}, not yet at the store's newest "
            "revision of its current data; retry, or ask with a longer deadline")

    # -- watching -------------------------------------------------------------

    def _publish(self, item: Change | _Gap) -> None:
        for queue in list(self._watchers):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                # Too slow a reader: end its stream rather than hold unbounded memory.
                self._watchers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(_GAP)

    async def watch(self, after: int | None) -> AsyncIterator[Change]:
        """Committed changes above ``after`` (None: from now on), then live ones.

        Live changes come from this process's own changelog tail, shared by
        every stream; only the replay of history reads the store, and only up
        to the revision the stream subscribed at. So open streams hold no
        store connection and cannot starve writes.
        """
        if len(self._watchers) >= LIMITS.watch_streams:
            raise ResourceExhausted(
                "watch", f"{LIMITS.watch_streams} Watch streams are open on this server "
                "process (the limit); retry later or on another process")
        queue: asyncio.Queue[Change | _Gap] = asyncio.Queue(WATCH_QUEUE)
        self._watchers.add(queue)
        try:
            start = self._index.revision  # the live queue holds everything above this
            epoch = self._epoch
            last = start if after is None else after
            if last > start:
                if not await self.wait_for(last, self.freshness_wait):
                    raise FailedPrecondition(
                        "after_revision", f"revision {last} is ahead of the store "
                        f"(index at {self._index.revision})")
            elif last < start:
                async for change in self.store.follow(last, epoch):
                    yield change
                    last = change.revision
                    if last >= start:
                        break
            while True:
                item = await queue.get()
                if isinstance(item, _Gap):
                    raise FailedPrecondition(
                        "changelog", f"the stream cannot continue after revision {last} (the "
                        "changelog was trimmed, the store lost data, or this reader fell "
                        f"more than {WATCH_QUEUE} changes behind); read the graph again and "
                        "watch from its revision")
                if item.revision <= last:
                    continue
                yield item
                last = item.revision
        finally:
            self._watchers.discard(queue)


def touched_rows(change: Change) -> frozenset[str] | None:
    """The objects whose rows applying ``change`` modifies: the resource of every
    relationship and every object put or deleted. None when the change moves an
    object (a parent edge), which rewrites the ancestor chains of a whole subtree."""
    rows: set[str] = set()
    for op in change.ops:
        if isinstance(op, TouchRelationship | DeleteRelationship):
            if op.relationship.relation == PARENT:
                return None
            rows.add(op.relationship.resource.key)
        else:
            rows.add(op.ref.key)
    return frozenset(rows)


async def _snapshot_index(store: GraphStore) -> tuple[GraphIndex, str]:
    started = time.perf_counter()
    snap = await store.snapshot()
    index = GraphIndex.from_snapshot(snap)
    log.info("index built from snapshot", extra={
        "revision": snap.revision, "relationships": index.relationship_count,
        "seconds": round(time.perf_counter() - started, 3)})
    return index, snap.epoch
