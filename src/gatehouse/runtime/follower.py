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
from enum import Enum

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


class IndexState(Enum):
    """What the index can vouch for, the one state readers of the follower consult.

    ``CURRENT``: the store is reachable and the index continues the store's history
    (checked on every (re)connection): it vouches for every revision it has applied.
    ``UNREACHABLE``: the store cannot be reached; the index answers minimize-latency
    reads but vouches for no revision — revisions count within one history, and
    until the follower has seen the store again it cannot tell whether the store
    still holds the one the index was built from (a restart from a shorter AOF, a
    failover that lost writes). ``REBUILDING``: the store is reachable but the index
    no longer continues its history (trimmed, wiped, went back); the old index
    answers minimize-latency reads while a new one is built, and reads that ask
    for a revision wait for it.
    """

    CURRENT = "current"
    UNREACHABLE = "unreachable"
    REBUILDING = "rebuilding"


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
        self._state = IndexState.CURRENT  # built from a snapshot just now
        self._listeners: list[Callable[[bool], None]] = []
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Queue[Change | _Gap]] = set()
        self._busy: frozenset[str] | None = None
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
        """Whether the store is reachable (rebuilding counts: it reads the store)."""
        return self._state is not IndexState.UNREACHABLE

    @property
    def state(self) -> IndexState:
        return self._state

    @property
    def watch_streams(self) -> int:
        """How many Watch streams are open on this process (at most ``LIMITS.watch_streams``)."""
        return len(self._watchers)

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

    def _set_state(self, state: IndexState) -> None:
        if state is self._state:
            return
        was_healthy = self.store_healthy
        self._state = state
        self._advance()  # waiters look again (and fail fast once the store is gone)
        healthy = self.store_healthy
        if healthy != was_healthy:
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
                # On every (re)connection, before the index vouches for a revision again:
                # the store must still hold the history the index was built from (same
                # epoch, not behind, the same write at the index's revision). Raises
                # Unavailable while the store is unreachable.
                await self.store.check_history(self._index.revision, self._epoch)
                self._set_state(IndexState.CURRENT)
                backoff = 0.05
                async for change in self.store.follow(self._index.revision, self._epoch):
                    self._busy = touched_rows(change) if len(change.ops) >= LARGE_CHANGE else None
                    try:
                        with self.lock:
                            self._index.apply((change,))
                    finally:
                        self._busy = None
                    self._publish(change)
                    self._advance()
            except ChangelogGap as exc:
                log.warning("rebuilding the index from a snapshot", extra={"reason": str(exc)})
                await self._rebuild()
            except Unavailable as exc:
                self._set_state(IndexState.UNREACHABLE)
                log.debug("follower waiting for the store", extra={"error": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("index follower failed; retrying")
                await asyncio.sleep(1.0)

    async def _rebuild(self) -> None:
        """Build a new index from a snapshot and swap it in whole; until then the old one
        vouches for no revision (retrying, with back-off, while the store is away)."""
        self._set_state(IndexState.REBUILDING)
        backoff = 0.05
        while True:
            try:
                index, epoch = await _snapshot_index(self.store)
                break
            except Unavailable as exc:
                self._set_state(IndexState.UNREACHABLE)
                log.debug("rebuild waiting for the store", extra={"error": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            except Exception:
                # Never back to following with the old index: it may hold another history.
                log.exception("rebuilding the index failed; retrying")
                await asyncio.sleep(1.0)
        with self.lock:
            self._index, self._epoch = index, epoch
        self._publish(_GAP)
        self._set_state(IndexState.CURRENT)

    # -- waiting for freshness ----------------------------------------------

    def _reached(self, revision: int) -> bool:
        return self._state is IndexState.CURRENT and self._index.revision >= revision

    async def wait_for(self, revision: int, timeout: float | None) -> bool:
        """Wait until the index has applied ``revision``; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._reached(revision):
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
        if mode is Mode.FULLY_CONSISTENT:
            return False
        return self._reached(consistency.revision)

    async def require_issued(self, revision: int, field: str) -> None:
        """Refuse at once a revision the store has not reached (FAILED_PRECONDITION naming
        ``field``): no wait would bring it, so waiting would only hold the call until its
        deadline. Costs one read of the store's head, and only when the index is behind.
        """
        if revision <= self._index.revision:
            return
        head = await self.store.head_revision()
        if revision > head:
            raise FailedPrecondition(
                field, f"revision {revision} is ahead of the store (at {head}): not a token "
                "this store issued (another deployment's, or one from before the store lost "
                "its data)")

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
        if self._state is IndexState.UNREACHABLE:
            # Fail now rather than at the deadline: the index cannot prove any revision
            # until the follower has seen the store again (IndexState).
            raise Unavailable("the store is unreachable; the index cannot prove it is at "
                              f"revision {consistency.revision} of the store's data; retry")
        target = consistency.revision
        await self.require_issued(target, consistency.source)
        if not await self.wait_for(target, timeout):
            raise Unavailable(
                f"index is at revision {self._index.revision}, not yet at {target}; "
                "retry, or ask with a longer deadline"
            )

    async def _ensure_head(self, timeout: float) -> None:
        """Wait until the index holds the store's newest revision of the store's current
        data set: after a wipe the store's revisions start again from 0, and an old
        index past them must rebuild before it answers as fully consistent, even when
        the follower has not noticed the wipe yet."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            epoch, target = await self.store.head()  # Unavailable when unreachable
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
                await self.require_issued(last, "after_revision")
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
