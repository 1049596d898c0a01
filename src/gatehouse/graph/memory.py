"""The memory store: the embedded default and the reference backend.

Ephemeral by design: everything is lost when the process exits, and
:attr:`durable` says so. Its write semantics are the specification the Redis
store's script follows; the conformance suite holds both to it.

Write semantics (both stores):

* Preconditions are evaluated against the state before the batch; one that
  does not hold aborts the write (``Aborted``).
* Every object lives in a tenant scope: a root-type object (organization) is
  its own scope, a global-type object (user) is in the global scope, and a
  child-type object is in its parent's scope — so its ``parent`` must already
  exist or be written in the same batch. Moving an object to another
  tenant's parent is refused.
* An object has at most one parent after the batch.
* Policy constraints (exclusive, unique, max) are checked on the state the
  batch would leave; a violation refuses the whole batch
  (``FailedPrecondition`` naming the constraint).
* Only then is anything applied; the revision increases by one and the
  effective operations are appended to the changelog.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gatehouse.graph.changes import (
    Change,
    DeleteObject,
    DeleteRelationship,
    Operation,
    Precondition,
    PutObject,
    TouchRelationship,
)
from gatehouse.graph.model import ObjectRecord, ObjectRef, Snapshot
from gatehouse.graph.plan import BatchPlan, StateReader, plan_batch
from gatehouse.graph.store import ChangelogGap
from gatehouse.policy.rules import WriteRules

CHANGELOG_LIMIT = 100_000


class _MemoryState(StateReader):
    def __init__(self) -> None:
        self.homes: dict[str, str] = {}
        self.forward: dict[tuple[str, str], set[str]] = {}
        self.by_subject: dict[tuple[str, str], set[str]] = {}  # (scope, subject) -> {"res#rel"}
        self.holders: dict[tuple[str, str, str], set[str]] = {}  # (scope, type, rel) -> {res}
        self.objects: dict[str, dict[str, Any]] = {}

    # StateReader
    def stored_home(self, key: str) -> str | None:
        return self.homes.get(key)

    def subjects(self, resource: str, relation: str) -> set[str]:
        return self.forward.get((resource, relation), set())

    def subject_entries(self, scope: str, subject: str) -> set[str]:
        return self.by_subject.get((scope, subject), set())

    def holders_of(self, scope: str, type_: str, relation: str) -> set[str]:
        return self.holders.get((scope, type_, relation), set())


class MemoryGraphStore:
    """A GraphStore held in this process's memory."""

    durable = False
    description = "memory (ephemeral: data is lost on exit)"

    def __init__(self, changelog_limit: int = CHANGELOG_LIMIT) -> None:
        self._revision = 0
        self._state = _MemoryState()
        self._log: list[Change] = []
        self._limit = changelog_limit
        self._epoch = uuid.uuid4().hex
        self._committed = asyncio.Event()

    async def head_revision(self) -> int:
        return self._revision

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
        preconditions: Sequence[Precondition] = (),
        rules: WriteRules | None = None,
    ) -> Change:
        plan = plan_batch(self._state, ops, preconditions, rules or WriteRules({}))
        effective = self._apply(plan)
        self._revision += 1
        change = Change(self._revision, tuple(effective))
        self._log.append(change)
        if len(self._log) > self._limit:
            del self._log[: len(self._log) - self._limit]
        self._committed.set()
        self._committed = asyncio.Event()
        return change

    def _apply(self, plan: BatchPlan) -> list[Operation]:
        st = self._state
        effective: list[Operation] = []
        for key, scope in plan.new_homes.items():
            st.homes[key] = scope
        for op in plan.ops:
            if isinstance(op, TouchRelationship | DeleteRelationship):
                rel = op.relationship
                res, subj = rel.resource.key, rel.subject.key
                scope = plan.homes[res]
                fkey = (res, rel.relation)
                if isinstance(op, TouchRelationship):
                    subjects = st.forward.setdefault(fkey, set())
                    if subj in subjects:
                        continue
                    subjects.add(subj)
                    st.by_subject.setdefault((scope, subj), set()).add(f"{res}#{rel.relation}")
                    st.holders.setdefault((scope, rel.resource.type, rel.relation), set()).add(res)
                else:
                    subjects = st.forward.get(fkey, set())
                    if subj not in subjects:
                        continue
                    subjects.discard(subj)
                    st.by_subject[(scope, subj)].discard(f"{res}#{rel.relation}")
                    if not subjects:
                        del st.forward[fkey]
                        st.holders[(scope, rel.resource.type, rel.relation)].discard(res)
                effective.append(op)
            elif isinstance(op, PutObject):
                st.objects[op.ref.key] = dict(op.attributes)
                effective.append(op)
            elif isinstance(op, DeleteObject) and st.objects.pop(op.ref.key, None) is not None:
                effective.append(op)
        return effective

    async def follow(self, after: int, epoch: str) -> AsyncIterator[Change]:
        if epoch != self._epoch:
            raise ChangelogGap("the store's epoch changed")
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
