"""Check a write batch against the current state before anything is applied.

This is the reference for the write semantics (docs/storage.md, "Write
semantics"); the Redis store's Lua script (``lua/write.lua``) implements the
same steps inside Redis so they are atomic there. :class:`MemoryState` is the
state the memory store keeps, and the state a data file is checked against
before it is loaded (:mod:`gatehouse.graph.bootstrap`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gatehouse.errors import Aborted, FailedPrecondition, InvalidArgument, quote
from gatehouse.graph.changes import (
    DeleteObject,
    DeleteRelationship,
    Operation,
    Precondition,
    PutObject,
    TouchRelationship,
)
from gatehouse.graph.model import Snapshot
from gatehouse.names import type_of
from gatehouse.policy.model import PARENT
from gatehouse.policy.rules import CHILD, GLOBAL, ROOT, Exclusive, MaxSubjects, Unique, WriteRules

GLOBAL_SCOPE = "_"


class StateReader(Protocol):
    """The reads a batch check needs (a store's current state)."""

    def stored_home(self, key: str) -> str | None:
        """The tenant scope of a child-type object, if it has one."""
        ...

    def subjects(self, resource: str, relation: str) -> set[str]: ...

    def subject_entries(self, scope: str, subject: str) -> set[str]:
        """``res#rel`` of every relationship ``subject`` holds within ``scope``."""
        ...

    def subject_scopes(self, subject: str) -> Iterable[str]:
        """Every scope in which ``subject`` holds some relationship."""
        ...

    def holders_of(self, scope: str, type_: str, relation: str) -> set[str]: ...


@dataclass(slots=True)
class BatchPlan:
    ops: Sequence[Operation]
    homes: dict[str, str] = field(default_factory=dict)
    new_homes: dict[str, str] = field(default_factory=dict)


def encode_attributes(attributes: Mapping[str, Any]) -> str:
    """The canonical text of an object's attributes; equal text means no change.

    Both stores compare this (Redis stores it verbatim), so ``1`` and ``1.0``
    or ``1`` and ``true`` count as different values in either.
    """
    return json.dumps(dict(attributes), sort_keys=True)


def _target(op: Operation) -> str:
    if isinstance(op, TouchRelationship | DeleteRelationship):
        return str(op.relationship)
    return f"object {op.ref}"


def check_batch(ops: Sequence[Operation]) -> None:
    """Refuse a batch that names one relationship or object twice.

    Two operations on one target in one batch are either redundant or
    contradictory (touch and delete); rather than let their order decide,
    the batch is refused as malformed, naming both positions. This depends
    on the batch alone, so both stores run it before touching any state.
    """
    first: dict[str, int] = {}
    for i, op in enumerate(ops):
        target = _target(op)
        seen = first.setdefault(target, i)
        if seen != i:
            raise InvalidArgument(
                f"updates[{i}]", f"{quote(target, 120)} is already written by updates[{seen}]; "
                "a batch names each relationship and object once")


def plan_batch(
    state: StateReader,
    ops: Sequence[Operation],
    preconditions: Sequence[Precondition],
    rules: WriteRules,
) -> BatchPlan:
    """Return the plan for ``ops`` or raise InvalidArgument / Aborted / FailedPrecondition."""
    check_batch(ops)
    # 1. Preconditions, on the state before the batch.
    for pre in preconditions:
        rel = pre.relationship
        exists = rel.subject.key in state.subjects(rel.resource.key, rel.relation)
        if exists != pre.must_exist:
            raise Aborted(
                f"precondition failed: {rel} {'does not exist' if pre.must_exist else 'exists'}"
            )

    plan = BatchPlan(ops)
    kinds = rules.scope_kind

    def home(key: str) -> str | None:
        if key in plan.homes:
            return plan.homes[key]
        kind = kinds.get(type_of(key), CHILD)
        if kind == ROOT:
            found: str | None = key
        elif kind == GLOBAL:
            found = GLOBAL_SCOPE
        else:
            found = state.stored_home(key)
        if found is not None:
            plan.homes[key] = found
        return found

    # 2. Homes of new child objects, from the batch's parent edges (any order).
    pending = [op.relationship for op in ops
               if isinstance(op, TouchRelationship) and op.relationship.relation == PARENT]
    progress = True
    while pending and progress:
        progress = False
        rest = []
        for rel in pending:
            parent_home = home(rel.subject.key)
            if parent_home is None:
                rest.append(rel)
                continue
            child = rel.resource.key
            current = home(child)
            if current is None:
                plan.homes[child] = parent_home
                plan.new_homes[child] = parent_home
            elif current != parent_home:
                raise FailedPrecondition(
                    "tenant-boundary",
                    f"{rel.resource} belongs to {current}; it cannot move under {rel.subject} "
                    f"in {parent_home}",
                )
            progress = True
        pending = rest
    for op in ops:
        if isinstance(op, TouchRelationship | DeleteRelationship):
            key = op.relationship.resource.key
        elif isinstance(op, PutObject | DeleteObject):
            key = op.ref.key
        else:  # pragma: no cover - exhaustive
            continue
        if home(key) is None:
            if isinstance(op, DeleteRelationship | DeleteObject):
                continue  # deleting what does not exist is a no-op
            raise FailedPrecondition(
                "parent-required",
                f"{key} has no parent; write its #parent relationship first or in the same "
                "batch",
            )

    # 2b. A relationship stays within one tenant: its subject lives in the
    # resource's scope or is global (a user). Parent edges were placed above.
    for op in ops:
        if not isinstance(op, TouchRelationship) or op.relationship.relation == PARENT:
            continue
        rel = op.relationship
        subj = rel.subject.key
        if kinds.get(rel.subject.type, CHILD) == GLOBAL:
            continue
        subj_home = home(subj)
        if subj_home is None:
            raise FailedPrecondition(
                "parent-required",
                f"{subj} has no parent; write its #parent relationship before it is the "
                "subject of a relationship, or in the same batch",
            )
        res_home = plan.homes[rel.resource.key]
        if subj_home != res_home:
            raise FailedPrecondition(
                "tenant-boundary",
                f"{rel} links {res_home} to {subj} in {subj_home}; a relationship stays "
                "within one tenant",
            )

    # 3. The forward sets the batch changes, as they would end up.
    final: dict[tuple[str, str], dict[str, bool]] = {}
    for op in ops:
        if isinstance(op, TouchRelationship | DeleteRelationship):
            rel = op.relationship
            if home(rel.resource.key) is None:
                continue
            final.setdefault((rel.resource.key, rel.relation), {})[rel.subject.key] = \
                isinstance(op, TouchRelationship)

    def final_subjects(res: str, relation: str) -> set[str]:
        current = set(state.subjects(res, relation))
        for subj, present in final.get((res, relation), {}).items():
            if present:
                current.add(subj)
            else:
                current.discard(subj)
        return current

    # 4. One parent at most.
    for (res, relation) in final:
        if relation == PARENT:
            parents = final_subjects(res, relation)
            if len(parents) > 1:
                raise FailedPrecondition(
                    "single-parent",
                    f"{res} would have parents {', '.join(sorted(parents))}; delete the old "
                    "parent in the same batch to move it",
                )

    # 5. Policy constraints.
    for con in rules.constraints:
        if isinstance(con, MaxSubjects):
            for (res, relation) in final:
                if relation == con.relation and type_of(res) == con.type:
                    count = len(final_subjects(res, relation))
                    if count > con.limit:
                        raise FailedPrecondition(
                            con.name,
                            f"{res}#{relation} would have {count} subjects; at most "
                            f"{con.limit} allowed",
                        )
        elif isinstance(con, Unique):
            scopes = {plan.homes[res] for (res, relation) in final
                      if relation == con.relation and type_of(res) == con.type}
            for scope in scopes:
                holders = set(state.holders_of(scope, con.type, con.relation))
                for (res, relation) in final:
                    if relation != con.relation or type_of(res) != con.type:
                        continue
                    if plan.homes[res] != scope:
                        continue
                    if final_subjects(res, relation):
                        holders.add(res)
                    else:
                        holders.discard(res)
                if len(holders) > 1:
                    raise FailedPrecondition(
                        con.name,
                        f"only one {con.type} per tenant may hold {con.relation!r}; "
                        f"{', '.join(sorted(holders))} would",
                    )
        elif isinstance(con, Exclusive):
            sides = con.left | con.right
            touched: set[tuple[str, str]] = set()
            for (res, relation), subs in final.items():
                if f"{type_of(res)}.{relation}" in sides:
                    touched.update((plan.homes[res], s) for s, present in subs.items() if present)
            for scope, subj in touched:
                entries = set(state.subject_entries(scope, subj))
                for (res, relation), subs in final.items():
                    if subj in subs and plan.homes[res] == scope:
                        entry = f"{res}#{relation}"
                        if subs[subj]:
                            entries.add(entry)
                        else:
                            entries.discard(entry)
                held = {f"{type_of(e.partition('#')[0])}.{e.partition('#')[2]}" for e in entries}
                left, right = held & con.left, held & con.right
                if left and right:
                    raise FailedPrecondition(
                        con.name,
                        f"{subj} cannot hold {sorted(left)[0]} and {sorted(right)[0]} in "
                        f"{scope}: these roles are mutually exclusive",
                    )

    # 6. A deleted object is referenced by no relationship after the batch.
    for op in ops:
        if isinstance(op, DeleteObject):
            key = op.ref.key
            count = sum(len(final_subjects(key, r))
                        for r in sorted(rules.relations.get(op.ref.type, ())))
            if kinds.get(op.ref.type, CHILD) == GLOBAL:
                scopes = set(state.subject_scopes(key))
                scopes.update(plan.homes[res] for (res, _), subs in final.items() if key in subs)
            else:
                own = home(key)
                scopes = {own} if own is not None else set()
            for scope in sorted(scopes):
                entries = set(state.subject_entries(scope, key))
                for (res, relation), subs in final.items():
                    if key in subs and plan.homes[res] == scope:
                        if subs[key]:
                            entries.add(f"{res}#{relation}")
                        else:
                            entries.discard(f"{res}#{relation}")
                count += len(entries)
            if count:
                raise FailedPrecondition(
                    "object-in-use",
                    f"{key} is still in {count} relationship(s); delete them first or in the "
                    "same batch",
                )
    return plan


class MemoryState:
    """The graph's state as the memory store keeps it (and a StateReader over it)."""

    def __init__(self) -> None:
        self.homes: dict[str, str] = {}
        self.forward: dict[tuple[str, str], set[str]] = {}
        self.by_subject: dict[tuple[str, str], set[str]] = {}  # (scope, subject) -> {"res#rel"}
        self.holders: dict[tuple[str, str, str], set[str]] = {}  # (scope, type, rel) -> {res}
        self.objects: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, rules: WriteRules) -> MemoryState:
        """The state a store's snapshot describes, scoped by ``rules``."""
        state = cls()
        kinds = rules.scope_kind
        parent_of = {res: subj for res, rel, subj in snapshot.iter_edges() if rel == PARENT}

        def scope_of(key: str) -> str | None:
            seen = set()
            while key not in seen:
                seen.add(key)
                kind = kinds.get(type_of(key), CHILD)
                if kind == ROOT:
                    return key
                if kind == GLOBAL:
                    return GLOBAL_SCOPE
                parent = parent_of.get(key)
                if parent is None:
                    return None
                key = parent
            return None  # a cycle: the stores refuse these on write

        for res, rel, subj in snapshot.iter_edges():
            scope = scope_of(res)
            if scope is None:
                continue
            if kinds.get(type_of(res), CHILD) == CHILD:
                state.homes[res] = scope
            state.add(scope, res, rel, subj)
        for record in snapshot.objects:
            state.objects[record.ref.key] = dict(record.attributes)
        return state

    # StateReader
    def stored_home(self, key: str) -> str | None:
        return self.homes.get(key)

    def subjects(self, resource: str, relation: str) -> set[str]:
        return self.forward.get((resource, relation), set())

    def subject_entries(self, scope: str, subject: str) -> set[str]:
        return self.by_subject.get((scope, subject), set())

    def subject_scopes(self, subject: str) -> list[str]:
        return [scope for (scope, s), entries in self.by_subject.items()
                if s == subject and entries]

    def holders_of(self, scope: str, type_: str, relation: str) -> set[str]:
        return self.holders.get((scope, type_, relation), set())

    # changing
    def add(self, scope: str, res: str, relation: str, subj: str) -> bool:
        """Add one relationship; False if it was there already."""
        subjects = self.forward.setdefault((res, relation), set())
        if subj in subjects:
            return False
        subjects.add(subj)
        self.by_subject.setdefault((scope, subj), set()).add(f"{res}#{relation}")
        self.holders.setdefault((scope, type_of(res), relation), set()).add(res)
        return True

    def remove(self, scope: str, res: str, relation: str, subj: str) -> bool:
        """Remove one relationship; False if it was not there."""
        subjects = self.forward.get((res, relation))
        if subjects is None or subj not in subjects:
            return False
        subjects.discard(subj)
        entries = self.by_subject[(scope, subj)]
        entries.discard(f"{res}#{relation}")
        if not entries:
            del self.by_subject[(scope, subj)]
        if not subjects:
            del self.forward[(res, relation)]
            self.holders[(scope, type_of(res), relation)].discard(res)
        return True

    def apply(self, plan: BatchPlan) -> list[Operation]:
        """Apply a checked plan; return the operations that changed something."""
        effective: list[Operation] = []
        self.homes.update(plan.new_homes)
        for op in plan.ops:
            if isinstance(op, TouchRelationship | DeleteRelationship):
                rel = op.relationship
                res = rel.resource.key
                scope = plan.homes.get(res)
                if scope is None:  # deleting under an object that has no home: nothing there
                    continue
                change = self.add if isinstance(op, TouchRelationship) else self.remove
                if change(scope, res, rel.relation, rel.subject.key):
                    effective.append(op)
            elif isinstance(op, PutObject):
                old = self.objects.get(op.ref.key)
                new = dict(op.attributes)
                if old is None or encode_attributes(old) != encode_attributes(new):
                    self.objects[op.ref.key] = new
                    effective.append(op)
            elif self.objects.pop(op.ref.key, None) is not None:
                effective.append(op)
        return effective
