"""The in-memory index of the graph that every decision reads.

Layout, chosen for the hot path and for memory:

* ``forward[obj][relation]`` — the subjects holding ``relation`` on ``obj``;
* ``held[subject][obj]`` — the relations ``subject`` holds on ``obj``, so a
  role check is "does any of these relations appear here?" after one look-up
  per ancestor;
* ``up[obj]`` — ``{type: ancestor key}`` for the object's ancestors (not the
  object itself). All children of one parent share one such mapping, so a
  workspace with 5,000 flows stores its lineage once;
* ``children[obj]`` — objects whose parent is ``obj``, to re-derive lineage
  when a parent moves.

Small collections (most relations have one subject) are tuples and become
sets past a few members; membership tests work the same on both.

Threads: the index is mutated only by :meth:`apply` (and replaced whole on a
rebuild), by the runtime's changelog follower while it holds the runtime's
index lock. Decisions read it under that same lock, from the event loop or
from the transport's poll thread (Check, CheckBulk), so a decision sees one
revision and never half a change.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from gatehouse.graph.changes import (
    Change,
    DeleteObject,
    DeleteRelationship,
    PutObject,
    TouchRelationship,
)
from gatehouse.graph.model import Relationship, Snapshot
from gatehouse.names import type_of
from gatehouse.policy.model import PARENT

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_GENERATIONS = itertools.count(1)
_SMALL = 8

Members = tuple[str, ...] | set[str]


def _add(table: dict[str, Members], key: str, value: str) -> bool:
    cur = table.get(key)
    if cur is None:
        table[key] = (value,)
        return True
    if value in cur:
        return False
    if isinstance(cur, tuple):
        table[key] = (*cur, value) if len(cur) < _SMALL else {*cur, value}
    else:
        cur.add(value)
    return True


def _remove(table: dict[str, Members], key: str, value: str) -> bool:
    cur = table.get(key)
    if cur is None or value not in cur:
        return False
    if isinstance(cur, tuple):
        rest = tuple(v for v in cur if v != value)
        if rest:
            table[key] = rest
        else:
            del table[key]
    else:
        cur.discard(value)
        if not cur:
            del table[key]
    return True


class GraphIndex:
    """Edges both ways, attributes and lineage at one revision."""

    def __init__(self) -> None:
        # Distinguishes this index from any other built in this process (caches
        # of derived values key on it; object ids may be reused).
        self.generation = next(_GENERATIONS)
        self.revision = 0
        self.forward: dict[str, dict[str, Members]] = {}
        self.held: dict[str, dict[str, Members]] = {}
        self.attrs: dict[str, dict[str, Any]] = {}
        self.up: dict[str, Mapping[str, str]] = {}
        self.children: dict[str, set[str]] = {}
        self._parent: dict[str, str] = {}
        self._lineage: dict[str, Mapping[str, str]] = {}
        self.relationship_count = 0
        # key -> the revision at which it, something below it, or an attribute of
        # one of its members last changed (for caches of derived values, e.g. usage).
        self.versions: dict[str, int] = {}

    # -- reading (the Facts protocol and friends) ---------------------------

    def attributes(self, key: str) -> Mapping[str, Any]:
        return self.attrs.get(key, _EMPTY)

    def holds(self, obj: str, relation: str, subject: str) -> bool:
        rels = self.held.get(subject)
        if rels is None:
            return False
        on = rels.get(obj)
        return on is not None and relation in on

    def exists(self, key: str) -> bool:
        return key in self.up

    def chain(self, key: str) -> dict[str, str] | None:
        """``{type: key}`` for the object and its ancestors, nearest first; None if unknown."""
        up = self.up.get(key)
        if up is None:
            return None
        return {type_of(key): key, **up}

    def parent(self, key: str) -> str | None:
        return self._parent.get(key)

    def version(self, key: str) -> int:
        """The revision at which ``key``'s subtree last changed (0 if never since start,
        or if it is not in the graph)."""
        return self.versions.get(key, 0)

    def subjects(self, obj: str, relation: str) -> frozenset[str]:
        return frozenset(self.forward.get(obj, {}).get(relation, ()))

    def objects(self, subject: str, relation: str) -> frozenset[str]:
        return frozenset(o for o, rels in self.held.get(subject, {}).items() if relation in rels)

    # -- building -----------------------------------------------------------

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> GraphIndex:
        """Build in bulk: all edges first, then every lineage once, top down."""
        index = cls()
        intern = sys.intern
        forward, held, up, children = index.forward, index.held, index.up, index.children
        count = 0
        for record in snapshot.objects:
            key = intern(record.ref.key)
            index.attrs[key] = dict(record.attributes)
            up.setdefault(key, _EMPTY)
        for res, relation, subj in snapshot.iter_edges():
            res, relation, subj = intern(res), intern(relation), intern(subj)
            if not _add(forward.setdefault(res, {}), relation, subj):
                continue
            _add(held.setdefault(subj, {}), res, relation)
            count += 1
            up.setdefault(res, _EMPTY)
            up.setdefault(subj, _EMPTY)
            if relation == PARENT:
                children.setdefault(subj, set()).add(res)
        index.relationship_count = count
        # Lineage, top down from every object without a parent.
        stack = [key for key in up if PARENT not in forward.get(key, _EMPTY)]
        while stack:
            key = stack.pop()
            for child in children.get(key, ()):
                parent = min(forward[child][PARENT])
                if parent == key:
                    index._parent[child] = key
                    up[child] = index._lineage_of(key)
                    stack.append(child)
        index.revision = snapshot.revision
        return index

    def apply(self, changes: Iterable[Change]) -> None:
        """Apply changes in revision order; revisions already applied are skipped."""
        for change in changes:
            if change.revision <= self.revision:
                continue
            rev = change.revision
            for op in change.ops:
                if isinstance(op, TouchRelationship | DeleteRelationship):
                    key = op.relationship.resource.key
                    self._bump(key, rev)  # its old ancestors ...
                    if isinstance(op, TouchRelationship):
                        self._touch(op.relationship)
                    else:
                        self._delete(op.relationship)
                    self._bump(key, rev)  # ... and its new ones
                elif isinstance(op, PutObject):
                    self._put_object(op.ref.key, dict(op.attributes))
                    self._bump_member(op.ref.key, rev)
                elif isinstance(op, DeleteObject):
                    self._bump_member(op.ref.key, rev)
                    self.attrs.pop(op.ref.key, None)
                    self._forget_if_unused(op.ref.key)
            self.revision = rev

    def _bump(self, key: str, rev: int) -> None:
        versions = self.versions
        if key in self.up:
            versions[key] = rev
        else:
            # Gone (or not there yet): no entry is kept for it, or every object ever
            # deleted would stay here for the life of the process. If it comes back,
            # the write that brings it sets a new, larger revision.
            versions.pop(key, None)
        for anc in self.up.get(key, _EMPTY).values():
            versions[anc] = rev

    def _bump_member(self, key: str, rev: int) -> None:
        """An object's attributes changed: so did everything it holds a relation on."""
        self._bump(key, rev)
        for obj in self.held.get(key, _EMPTY):
            self._bump(obj, rev)

    def _ensure(self, key: str) -> None:
        if key not in self.up:
            self.up[key] = _EMPTY

    def _put_object(self, key: str, attributes: dict[str, Any]) -> None:
        self.attrs[key] = attributes
        self._ensure(key)

    def _touch(self, rel: Relationship) -> None:
        obj, subj, relation = rel.resource.key, rel.subject.key, rel.relation
        if not _add(self.forward.setdefault(obj, {}), relation, subj):
            return
        _add(self.held.setdefault(subj, {}), obj, relation)
        self.relationship_count += 1
        self._ensure(obj)
        self._ensure(subj)
        if relation == PARENT:
            self.children.setdefault(subj, set()).add(obj)
            self._reparent(obj)

    def _delete(self, rel: Relationship) -> None:
        obj, subj, relation = rel.resource.key, rel.subject.key, rel.relation
        fwd = self.forward.get(obj)
        if fwd is None or not _remove(fwd, relation, subj):
            return
        if not fwd:
            del self.forward[obj]
        held = self.held[subj]
        _remove(held, obj, relation)
        if not held:
            del self.held[subj]
        self.relationship_count -= 1
        if relation == PARENT:
            kids = self.children.get(subj)
            if kids is not None:
                kids.discard(obj)
                if not kids:
                    del self.children[subj]
            self._reparent(obj)
        self._forget_if_unused(obj)
        self._forget_if_unused(subj)

    def _forget_if_unused(self, key: str) -> None:
        if key in self.attrs or key in self.forward or key in self.held:
            return
        self.up.pop(key, None)
        self._lineage.pop(key, None)
        self._parent.pop(key, None)
        self.versions.pop(key, None)

    def _lineage_of(self, parent: str) -> Mapping[str, str]:
        """The shared ``up`` mapping for children of ``parent``."""
        lineage = self._lineage.get(parent)
        if lineage is None:
            above = self.up.get(parent, _EMPTY)
            lineage = MappingProxyType({type_of(parent): parent, **above})
            self._lineage[parent] = lineage
        return lineage

    def _reparent(self, root: str) -> None:
        """Re-derive the lineage of ``root`` and of everything below it."""
        stack = [root]
        seen: set[str] = set()
        while stack:
            key = stack.pop()
            if key in seen:  # defensive: instance cycles are refused on write
                continue
            seen.add(key)
            parents = self.forward.get(key, {}).get(PARENT, ())
            # Normally one parent; while a snapshot is being caught up there can
            # briefly be two. Pick deterministically; the replay settles it.
            parent = min(parents) if parents else None
            if parent is None:
                self._parent.pop(key, None)
                if key in self.up:
                    self.up[key] = _EMPTY
            else:
                self._parent[key] = parent
                self.up[key] = self._lineage_of(parent)
            self._lineage.pop(key, None)  # its children's shared mapping is stale
            stack.extend(self.children.get(key, ()))

