"""The in-memory index of the graph that every decision reads.

It holds forward edges (object -> relation -> subjects), reverse edges
(subject -> relation -> objects), attributes, and each object's ancestor
chain as a ``{type: ancestor key}`` mapping that includes the object itself,
so that "which workspace is this flow in?" is one dict look-up on the hot
path. It is mutated only by :meth:`apply`, from the single event-loop
thread, so a decision (which never awaits) always sees one revision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from gatehouse.graph.changes import (
    Change,
    DeleteObject,
    DeleteRelationship,
    PutObject,
    TouchRelationship,
)
from gatehouse.graph.model import Relationship, Snapshot, object_key
from gatehouse.policy.model import PARENT

_EMPTY: Mapping[str, Any] = {}


def type_of(key: str) -> str:
    return key.partition(":")[0]


class GraphIndex:
    """Forward/reverse edges, attributes and ancestor chains at one revision."""

    def __init__(self) -> None:
        self.revision = 0
        self.forward: dict[str, dict[str, set[str]]] = {}
        self.reverse: dict[str, dict[str, set[str]]] = {}
        self.attrs: dict[str, dict[str, Any]] = {}
        self.parents: dict[str, str] = {}
        self.chains: dict[str, dict[str, str]] = {}
        self.relationship_count = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    # -- reading (Facts protocol) -------------------------------------------

    def attributes(self, key: str) -> Mapping[str, Any]:
        return self.attrs.get(key, _EMPTY)

    def holds(self, obj: str, relation: str, subject: str) -> bool:
        rels = self.forward.get(obj)
        if rels is None:
            return False
        subjects = rels.get(relation)
        return subjects is not None and subject in subjects

    def exists(self, key: str) -> bool:
        return key in self.chains

    def subjects(self, obj: str, relation: str) -> frozenset[str]:
        return frozenset(self.forward.get(obj, {}).get(relation, ()))

    def objects(self, subject: str, relation: str) -> frozenset[str]:
        return frozenset(self.reverse.get(subject, {}).get(relation, ()))

    # -- building -----------------------------------------------------------

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> GraphIndex:
        index = cls()
        for record in snapshot.objects:
            index._put_object(record.ref.key, dict(record.attributes))
        for rel in snapshot.relationships:
            index._touch(rel)
        index.revision = snapshot.revision
        return index

    def apply(self, changes: Iterable[Change]) -> None:
        """Apply changes in revision order; older revisions are skipped."""
        for change in changes:
            if change.revision <= self.revision:
                continue
            for op in change.ops:
                if isinstance(op, TouchRelationship):
                    self._touch(op.relationship)
                elif isinstance(op, DeleteRelationship):
                    self._delete(op.relationship)
                elif isinstance(op, PutObject):
                    self._put_object(op.ref.key, dict(op.attributes))
                elif isinstance(op, DeleteObject):
                    self.attrs.pop(op.ref.key, None)
                    self._forget_if_unused(op.ref.key)
            self.revision = change.revision
        self._wake()

    def _ensure(self, key: str) -> None:
        if key not in self.chains:
            self.chains[key] = {type_of(key): key}

    def _put_object(self, key: str, attributes: dict[str, Any]) -> None:
        self.attrs[key] = attributes
        self._ensure(key)

    def _touch(self, rel: Relationship) -> None:
        obj, subj = rel.resource.key, rel.subject.key
        relation = rel.relation
        subjects = self.forward.setdefault(obj, {}).setdefault(relation, set())
        if subj in subjects:
            return
        subjects.add(subj)
        self.reverse.setdefault(subj, {}).setdefault(relation, set()).add(obj)
        self.relationship_count += 1
        self._ensure(obj)
        self._ensure(subj)
        if relation == PARENT:
            self.parents[obj] = subj
            self._rechain(obj)

    def _delete(self, rel: Relationship) -> None:
        obj, subj = rel.resource.key, rel.subject.key
        relation = rel.relation
        subjects = self.forward.get(obj, {}).get(relation)
        if subjects is None or subj not in subjects:
            return
        subjects.discard(subj)
        if not subjects:
            del self.forward[obj][relation]
            if not self.forward[obj]:
                del self.forward[obj]
        objs = self.reverse[subj][relation]
        objs.discard(obj)
        if not objs:
            del self.reverse[subj][relation]
            if not self.reverse[subj]:
                del self.reverse[subj]
        self.relationship_count -= 1
        if relation == PARENT and self.parents.get(obj) == subj:
            del self.parents[obj]
            self._rechain(obj)
        self._forget_if_unused(obj)
        self._forget_if_unused(subj)

    def _forget_if_unused(self, key: str) -> None:
        if key in self.attrs or key in self.forward or key in self.reverse:
            return
        self.chains.pop(key, None)

    def _rechain(self, root: str) -> None:
        """Recompute the ancestor chains of ``root`` and all its descendants."""
        stack = [root]
        seen: set[str] = set()
        while stack:
            key = stack.pop()
            if key in seen:  # defensive: instance-level cycles are rejected on write
                continue
            seen.add(key)
            chain = {type_of(key): key}
            parent = self.parents.get(key)
            if parent is not None:
                for t, anc in self.chains.get(parent, {type_of(parent): parent}).items():
                    chain.setdefault(t, anc)
            self.chains[key] = chain
            stack.extend(self.reverse.get(key, {}).get(PARENT, ()))

    # -- freshness ----------------------------------------------------------

    async def wait_for(self, revision: int, timeout: float | None) -> bool:
        """Wait until the index has applied ``revision``; False on timeout."""
        if self.revision >= revision:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters = [(r, f) for r, f in self._waiters if f is not fut]

    def _wake(self) -> None:
        for revision, fut in self._waiters:
            if revision <= self.revision and not fut.done():
                fut.set_result(None)


def parse_key(key: str) -> tuple[str, str]:
    type_, _, id_ = key.partition(":")
    return type_, id_


__all__ = ["GraphIndex", "object_key", "parse_key", "type_of"]
