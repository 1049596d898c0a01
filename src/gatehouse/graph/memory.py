"""The memory store: the embedded default and the reference backend.

Ephemeral by design: everything is lost when the process exits, and
:attr:`durable` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gatehouse.errors import FailedPrecondition
from gatehouse.graph.changes import (
    Change,
    DeleteObject,
    DeleteRelationship,
    Operation,
    PutObject,
    TouchRelationship,
)
from gatehouse.graph.model import ObjectRecord, ObjectRef, Relationship, Snapshot
from gatehouse.graph.store import ChangeListener
from gatehouse.policy.model import PARENT

CHANGELOG_LIMIT = 100_000


class MemoryGraphStore:
    """A GraphStore held in this process's memory."""

    durable = False

    def __init__(self) -> None:
        self._revision = 0
        self._objects: dict[ObjectRef, dict[str, Any]] = {}
        self._relationships: set[Relationship] = set()
        self._parents: dict[ObjectRef, ObjectRef] = {}
        self._log: list[Change] = []
        self._listeners: list[ChangeListener] = []

    async def head_revision(self) -> int:
        return self._revision

    async def snapshot(self) -> Snapshot:
        return Snapshot(
            revision=self._revision,
            objects=tuple(ObjectRecord(ref, dict(a)) for ref, a in sorted(self._objects.items())),
            relationships=tuple(sorted(self._relationships)),
        )

    async def write(self, ops: Sequence[Operation]) -> Change:
        parents = dict(self._parents)
        for op in ops:  # check everything before changing anything
            if isinstance(op, TouchRelationship) and op.relationship.relation == PARENT:
                rel = op.relationship
                current = parents.get(rel.resource)
                if current is not None and current != rel.subject:
                    raise FailedPrecondition(
                        "single-parent",
                        f"{rel.resource} already has parent {current}; delete that first",
                    )
                parents[rel.resource] = rel.subject
            elif (
                isinstance(op, DeleteRelationship)
                and op.relationship.relation == PARENT
                and parents.get(op.relationship.resource) == op.relationship.subject
            ):
                del parents[op.relationship.resource]
        for op in ops:
            if isinstance(op, TouchRelationship):
                self._relationships.add(op.relationship)
            elif isinstance(op, DeleteRelationship):
                self._relationships.discard(op.relationship)
            elif isinstance(op, PutObject):
                self._objects[op.ref] = dict(op.attributes)
            elif isinstance(op, DeleteObject):
                self._objects.pop(op.ref, None)
        self._parents = parents
        self._revision += 1
        change = Change(self._revision, tuple(ops))
        self._log.append(change)
        if len(self._log) > CHANGELOG_LIMIT:
            del self._log[: len(self._log) - CHANGELOG_LIMIT]
        for listener in self._listeners:
            listener(change)
        return change

    async def changes_after(self, revision: int) -> list[Change]:
        return [c for c in self._log if c.revision > revision]

    def subscribe(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)
