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
    PutObject,
    TenantUnchanged,
    TouchRelationship,
    WritePrecondition,
)
from gatehouse.graph.model import Snapshot
from gatehouse.names import type_of
from gatehouse.policy.model import PARENT
from gatehouse.policy.rules import (
    CHILD,
    GLOBAL,
    ROOT,
    AttributeRule,
    Exclusive,
    MaxSubjects,
    MinChildren,
    MinSubjects,
    PerSubject,
    Requires,
    Unique,
    WriteRules,
)

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

    def tenant_revision(self, tenant: str) -> int:
        """The revision of the last write that changed the tenant (0: never)."""
        ...

    def object_attributes(self, key: str) -> Mapping[str, Any] | None:
        """The stored attributes of an object (None: no object stored)."""
        ...

    def unique_holder(self, scope: str, type_: str, attribute: str, value: str) -> str | None:
        """The object of ``type_`` in ``scope`` indexed as holding ``value`` (unique rules)."""
        ...


@dataclass(slots=True)
class BatchPlan:
    ops: Sequence[Operation]
    rules: WriteRules
    homes: dict[str, str] = field(default_factory=dict)
    new_homes: dict[str, str] = field(default_factory=dict)


def same_value(a: Any, b: Any) -> bool:
    """Whether two attribute values are equal as JSON values (what the Redis script
    compares after decoding): numbers by value (1 == 1.0), booleans apart from numbers,
    lists element by element."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        try:
            return float(a) == float(b)
        except OverflowError:
            return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def check_preconditions(preconditions: Sequence[WritePrecondition], rules: WriteRules) -> None:
    """Refuse a tenant precondition naming an object that is no tenant root."""
    for i, pre in enumerate(preconditions):
        if isinstance(pre, TenantUnchanged) and rules.scope_kind.get(
                type_of(pre.tenant), CHILD) != ROOT:
            raise InvalidArgument(f"preconditions[{i}]", f"{quote(pre.tenant)} is not a tenant "
                                  "root object; name the tenant as its root (organization:acme)")


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
    if len(ops) < 2:  # nothing to repeat (the common single write)
        return
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
    preconditions: Sequence[WritePrecondition],
    rules: WriteRules,
) -> BatchPlan:
    """Return the plan for ``ops`` or raise InvalidArgument / Aborted / FailedPrecondition."""
    check_batch(ops)
    check_preconditions(preconditions, rules)
    # 1. Preconditions, on the state before the batch, in their order.
    for pre in preconditions:
        if isinstance(pre, TenantUnchanged):
            last = state.tenant_revision(pre.tenant)
            if last > pre.revision:
                raise Aborted(f"precondition failed: tenant {pre.tenant} changed at revision "
                              f"{last}, after {pre.revision}; read again and decide again")
            continue
        rel = pre.relationship
        exists = rel.subject.key in state.subjects(rel.resource.key, rel.relation)
        if exists != pre.must_exist:
            raise Aborted(
                f"precondition failed: {rel} {'does not exist' if pre.must_exist else 'exists'}"
            )

    plan = BatchPlan(ops, rules)
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

    deleted = {op.ref.key for op in ops if isinstance(op, DeleteObject)}
    by_subject: dict[tuple[str, str], list[tuple[str, bool]]] | None = None

    def final_entries(scope: str, subj: str) -> set[str]:
        """``res#rel`` of every relationship ``subj`` would hold within ``scope``."""
        nonlocal by_subject
        if by_subject is None:
            by_subject = {}
            for (res, relation), subs in final.items():
                for s, present in subs.items():
                    by_subject.setdefault((plan.homes[res], s), []).append(
                        (f"{res}#{relation}", present))
        entries = set(state.subject_entries(scope, subj))
        for entry, present in by_subject.get((scope, subj), ()):
            if present:
                entries.add(entry)
            else:
                entries.discard(entry)
        return entries

    def held_relations(scope: str, subj: str) -> set[str]:
        """``type.relation`` of every relationship ``subj`` would hold within ``scope``."""
        return {f"{type_of(e)}.{e.rpartition('#')[2]}" for e in final_entries(scope, subj)}

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
            for scope, subj in sorted(touched):
                held = held_relations(scope, subj)
                left, right = held & con.left, held & con.right
                if left and right:
                    raise FailedPrecondition(
                        con.name,
                        f"{subj} cannot hold {sorted(left)[0]} and {sorted(right)[0]} in "
                        f"{scope}: these roles are mutually exclusive",
                    )
        elif isinstance(con, PerSubject):
            touched = set()
            for (res, relation), subs in final.items():
                if relation == con.relation and type_of(res) == con.type:
                    touched.update((plan.homes[res], s) for s, present in subs.items() if present)
            for scope, subj in sorted(touched):
                count = sum(1 for e in final_entries(scope, subj)
                            if e.rpartition("#")[2] == con.relation
                            and type_of(e) == con.type)
                if count > con.limit:
                    raise FailedPrecondition(
                        con.name,
                        f"{subj} would hold {con.type}.{con.relation} on {count} objects in "
                        f"{scope}; at most {con.limit} allowed",
                    )
        elif isinstance(con, Requires):
            touched = set()
            for (res, relation), subs in final.items():
                tr = f"{type_of(res)}.{relation}"
                if tr in con.relations:
                    touched.update((plan.homes[res], s) for s, present in subs.items() if present)
                elif tr in con.needs:
                    touched.update((plan.homes[res], s) for s, present in subs.items()
                                   if not present)
            for scope, subj in sorted(touched):
                held = held_relations(scope, subj)
                if held & con.relations and not held & con.needs:
                    raise FailedPrecondition(
                        con.name,
                        f"{subj} would hold {sorted(held & con.relations)[0]} in {scope} "
                        f"without any of {', '.join(sorted(con.needs))}",
                    )
        elif isinstance(con, MinSubjects):
            for (res, relation) in final:
                if relation != con.relation or type_of(res) != con.type or res in deleted:
                    continue
                before = len(state.subjects(res, relation))
                after = len(final_subjects(res, relation))
                if after < con.count <= before:
                    raise FailedPrecondition(
                        con.name,
                        f"{res}#{relation} would have {after} subjects; it keeps at least "
                        f"{con.count}",
                    )
        elif isinstance(con, MinChildren):
            scopes = {plan.homes[res] for (res, relation) in final
                      if relation == PARENT and type_of(res) == con.type}
            for scope in sorted(scopes):
                holders = set(state.holders_of(scope, con.type, PARENT))
                before = len(holders)
                for (res, relation) in final:
                    if (relation == PARENT and type_of(res) == con.type
                            and plan.homes[res] == scope):
                        if final_subjects(res, relation):
                            holders.add(res)
                        else:
                            holders.discard(res)
                if len(holders) < con.count <= before:
                    raise FailedPrecondition(
                        con.name,
                        f"{scope} would have {len(holders)} {con.type} object(s); it keeps "
                        f"at least {con.count}",
                    )

    # 5b. Attribute rules (immutable, unique within the tenant) of the objects put
    # or deleted, for types that have them.
    if rules.attribute_rules:
        check_attribute_rules(state, plan, rules)

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


def check_attribute_rules(state: StateReader, plan: BatchPlan, rules: WriteRules) -> None:
    """Immutable attributes keep their value; unique ones are held once per tenant."""
    claims: dict[tuple[str, str, str, str], str] = {}  # (scope, type, attr, value) -> object
    released: dict[tuple[str, str, str, str], str] = {}
    for op in plan.ops:
        if not isinstance(op, PutObject | DeleteObject):
            continue
        attr_rules = rules.attribute_rules.get(op.ref.type)
        if not attr_rules:
            continue
        key = op.ref.key
        scope = plan.homes.get(key)
        if scope is None:
            continue  # deleting an object that was never placed: nothing there
        old = state.object_attributes(key) or {}
        new = op.attributes if isinstance(op, PutObject) else None
        for rule in attr_rules:
            name = rule.attribute
            if rule.immutable and new is not None and name in old and (
                    name not in new or not same_value(old[name], new[name])):
                raise FailedPrecondition(
                    "immutable-attribute",
                    f"{key} {name} is {quote(str(old[name]))} and may not be changed or "
                    "removed",
                )
            if rule.unique:
                was, now = old.get(name), (new or {}).get(name)
                was = was if isinstance(was, str) else None
                now = now if isinstance(now, str) else None
                if was == now:
                    continue
                if was is not None:
                    released[(scope, op.ref.type, name, was)] = key
                if now is not None:
                    slot = (scope, op.ref.type, name, now)
                    other = claims.setdefault(slot, key)
                    if other != key:
                        raise FailedPrecondition(
                            "unique-attribute",
                            f"{key} {name} {quote(now)} is also written to {other} in this "
                            f"batch; it is unique within {scope}",
                        )
    for (scope, type_, name, value), key in claims.items():
        holder = state.unique_holder(scope, type_, name, value)
        if holder is None or holder == key or released.get((scope, type_, name, value)) == holder:
            continue
        # An entry the index kept while the policy had no such rule may be stale.
        if (state.object_attributes(holder) or {}).get(name) == value:
            raise FailedPrecondition(
                "unique-attribute",
                f"{key} {name} {quote(value)} is already held by {holder} in {scope}",
            )


class MemoryState:
    """The graph's state as the memory store keeps it (and a StateReader over it)."""

    def __init__(self) -> None:
        self.homes: dict[str, str] = {}
        self.forward: dict[tuple[str, str], set[str]] = {}
        self.by_subject: dict[tuple[str, str], set[str]] = {}  # (scope, subject) -> {"res#rel"}
        self.holders: dict[tuple[str, str, str], set[str]] = {}  # (scope, type, rel) -> {res}
        self.objects: dict[str, dict[str, Any]] = {}
        self.tenant_revisions: dict[str, int] = {}  # tenant root -> last revision changing it
        # (scope, type, attribute) -> value -> object, for attributes unique in a tenant
        self.unique: dict[tuple[str, str, str], dict[str, str]] = {}

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
            attr_rules = rules.attribute_rules.get(record.ref.type)
            scope = state.homes.get(record.ref.key) if attr_rules else None
            if attr_rules and scope is not None:
                state.index_unique(scope, record.ref.key, {}, record.attributes, attr_rules)
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

    def tenant_revision(self, tenant: str) -> int:
        return self.tenant_revisions.get(tenant, 0)

    def object_attributes(self, key: str) -> Mapping[str, Any] | None:
        return self.objects.get(key)

    def unique_holder(self, scope: str, type_: str, attribute: str, value: str) -> str | None:
        return self.unique.get((scope, type_, attribute), {}).get(value)

    def index_unique(self, scope: str, key: str, old: Mapping[str, Any],
                     new: Mapping[str, Any], attr_rules: Sequence[AttributeRule]) -> None:
        """Move ``key``'s unique values in the index from ``old`` to ``new``."""
        for rule in attr_rules:
            if not rule.unique:
                continue
            index = self.unique.setdefault((scope, type_of(key), rule.attribute), {})
            was, now = old.get(rule.attribute), new.get(rule.attribute)
            if isinstance(was, str) and was != now and index.get(was) == key:
                del index[was]
            if isinstance(now, str):
                index[now] = key

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

    def apply(self, plan: BatchPlan, revision: int) -> list[Operation]:
        """Apply a checked plan; return the operations that changed something.

        ``revision`` is the one the batch commits at if anything changes: each
        tenant the batch changes records it as its last revision.
        """
        effective: list[Operation] = []
        changed: set[str] = set()
        attribute_rules = plan.rules.attribute_rules
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
                    changed.add(scope)
            elif isinstance(op, PutObject):
                old = self.objects.get(op.ref.key)
                new = dict(op.attributes)
                if old is None or encode_attributes(old) != encode_attributes(new):
                    self.objects[op.ref.key] = new
                    effective.append(op)
                    scope = plan.homes[op.ref.key]
                    changed.add(scope)
                    attr_rules = attribute_rules.get(op.ref.type)
                    if attr_rules:
                        self.index_unique(scope, op.ref.key, old or {}, new, attr_rules)
            else:
                old = self.objects.pop(op.ref.key, None)
                if old is not None:
                    effective.append(op)
                    scope = plan.homes[op.ref.key]
                    changed.add(scope)
                    attr_rules = attribute_rules.get(op.ref.type)
                    if attr_rules:
                        self.index_unique(scope, op.ref.key, old, {}, attr_rules)
        changed.discard(GLOBAL_SCOPE)
        for tenant in changed:
            self.tenant_revisions[tenant] = revision
        return effective
