"""The memory store: the embedded default and the reference backend.

Ephemeral by design: everything is lost when the process exits, and
:attr:`durable` says so. Its write semantics (:func:`gatehouse.graph.plan.plan_batch`,
described in docs/storage.md) are the specification the Redis store's script
follows; the conformance suite (:mod:`gatehouse.graph.conformance`) holds
both to it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

from gatehouse.graph.changes import (
    Change,
    Operation,
    WritePrecondition,
)
from gatehouse.graph.model import ObjectRecord, ObjectRef, Snapshot
from gatehouse.graph.plan import MemoryState, plan_batch
from gatehouse.graph.store import ChangelogGap
from gatehouse.policy.rules import WriteRules

CHANGELOG_LIMIT = 100_000


class MemoryGraphStore:
    """A GraphStore held in this process's memory."""

    durable = False
    description = "memory (ephemeral: data is lost on exit)"

    def __init__(self, changelog_limit: int = CHANGELOG_LIMIT) -> None:
        self._revision = 0
        self._state = MemoryState()
        self._log: list[Change] = []
        self._limit = changelog_limit
        self._epoch = uuid.uuid4().hex
        self._committed = asyncio.Event()

    async def head_revision(self) -> int:
        return self._revision

    async def head(self) -> tuple[str, int]:
        return self._epoch, self._revision

    async def check_history(self, after: int, epoch: str) -> None:
        # A memory store never goes back; only another store (epoch) differs.
        if epoch != self._epoch:
            raise ChangelogGap("the store's epoch changed")
        if after > self._revision:
            raise ChangelogGap(f"the store is at revision {self._revision}, behind {after}")

    async def snapshot(self) -> Snapshot:
        st = self._state
        edges = tuple(
            (res, rel, subj) for (res, rel), subjects in st.forward.items() for subj in subjects
        )
        return Snapshot(
            revision=self._revision,
            objects=tuple(ObjectRecord(ObjectRef.parse(k), dict(a))
                          for k, a in sorted(st.objects.items())),
            epoch=self._epoch,
            edges=edges,
        )

    async def write(
        self,
        ops: Sequence[Operation],
        preconditions: Sequence[WritePrecondition] = (),
        rules: WriteRules | None = None,
    ) -> Change:
        return self._write(ops, preconditions, rules)

    def _write(self, ops: Sequence[Operation], preconditions: Sequence[WritePrecondition],
               rules: WriteRules | None) -> Change:
        plan = plan_batch(self._state, ops, preconditions, rules or WriteRules({}))
        effective = self._state.apply(plan, self._revision + 1)
        if not effective:
            # Nothing changed: nothing to commit or log; the answer is the
            # revision at which the batch's preconditions were seen to hold.
            return Change(self._revision, ())
        self._revision += 1
        change = Change(self._revision, tuple(effective))
        self._log.append(change)
        if len(self._log) > self._limit:
            del self._log[: len(self._log) - self._limit]
        self._committed.set()
        self._committed = asyncio.Event()
        return change

    def write_soon(
        self,
        ops: Sequence[Operation],
        preconditions: Sequence[WritePrecondition],
        rules: WriteRules | None,
        done: Callable[[Change | BaseException], None],
    ) -> None:
        try:
            change = self._write(ops, preconditions, rules)
        except Exception as exc:
            done(exc)
            return
        done(change)

    async def follow(self, after: int, epoch: str) -> AsyncIterator[Change]:
        await self.check_history(after, epoch)
        while True:
            if after < self._revision:
                if not self._log or self._log[0].revision > after + 1:
                    raise ChangelogGap(f"the changelog no longer reaches back to {after}")
                start = after + 1 - self._log[0].revision
                for change in self._log[start:]:
                    yield change
                    after = change.revision
                continue
            await self._committed.wait()

    async def close(self) -> None:
        return None
