"""Check a write batch against the current state before anything is applied.

This is the reference for the write semantics described in
``gatehouse.graph.memory``; the Redis store's Lua script implements the same
steps inside Redis so they are atomic there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gatehouse.errors import Aborted, FailedPrecondition
from gatehouse.graph.changes import (
    DeleteObject,
    DeleteRelationship,
    Operation,
    Precondition,
    PutObject,
    TouchRelationship,
)
from gatehouse.names import type_of
from gatehouse.policy.constraints import Exclusive, MaxSubjects, Unique
from gatehouse.policy.model import PARENT
from gatehouse.policy.rules import CHILD, GLOBAL, ROOT, WriteRules

GLOBAL_SCOPE = "_"


class StateReader(Protocol):
    """The reads a batch check needs (a store's current state)."""

    def stored_home(self, key: str) -> str | None: ...

    def subjects(self, resource: str, relation: str) -> set[str]: ...

    def subject_entries(self, scope: str, subject: str) -> set[str]: ...

    def holders_of(self, scope: str, type_: str, relation: str) -> set[str]: ...


@dataclass(slots=True)
class BatchPlan:
    ops: Sequence[Operation]
    homes: dict[str, str] = field(default_factory=dict)
    new_homes: dict[str, str] = field(default_factory=dict)


def plan_batch(
    state: StateReader,
    ops: Sequence[Operation],
    preconditions: Sequence[Precondition],
    rules: WriteRules,
) -> BatchPlan:
    """Return the plan for ``ops`` or raise Aborted / FailedPrecondition."""
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
    return plan
