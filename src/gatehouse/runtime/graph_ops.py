"""Graph operations: writes under the current policy's rules, reads from the index."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from gatehouse.auth import tenants
from gatehouse.errors import FailedPrecondition, InvalidArgument, NotFound
from gatehouse.graph.changes import Change, DeleteRelationship, Operation, Precondition
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.graph.query import RelationshipFilter, read_relationships
from gatehouse.graph.schema import object_problems, relationship_fault
from gatehouse.limits import LIMITS
from gatehouse.runtime.consistency import FULLY_CONSISTENT
from gatehouse.runtime.follower import IndexFollower

Position = tuple[str, str, str]


class GraphOperations:
    """GraphService's domain side: validate against the policy, write, read."""

    def __init__(self, follower: IndexFollower) -> None:
        self.follower = follower

    async def write(self, ops: Sequence[Operation],
                    preconditions: Sequence[Precondition] = ()) -> int:
        """Commit one atomic batch under the current policy's rules; return its revision."""
        store, policy = self.follower.store, self.follower.policy
        change = await store.write(ops, preconditions, policy.write_rules)
        return change.revision

    def write_soon(self, ops: Sequence[Operation], preconditions: Sequence[Precondition],
                   done: Callable[[Change | BaseException], None]) -> None:
        """``write`` for the short path: ``done`` gets the change or the error (on the loop)."""
        follower = self.follower
        follower.store.write_soon(ops, preconditions, follower.policy.write_rules, done)

    def validate_relationship(self, rel: Relationship, field: str) -> None:
        """InvalidArgument naming ``field`` unless the policy's types allow ``rel``."""
        fault = relationship_fault(self.follower.policy, rel)
        if fault is not None:
            raise InvalidArgument(f"{field}.{fault[0]}", fault[1])

    def validate_object(self, ref: ObjectRef, attrs: Mapping[str, Any],
                        field: str) -> dict[str, Any]:
        """The attributes, checked against the type (numbers coerced to int where declared)."""
        policy = self.follower.policy
        tdef = policy.types.get(ref.type)
        fixed = dict(attrs)
        if tdef is not None:
            for name, value in attrs.items():
                attr = tdef.attributes.get(name)
                if (attr is not None and attr.type == "int" and isinstance(value, float)
                        and value.is_integer()):
                    fixed[name] = int(value)
        problems = object_problems(policy, ref, fixed)
        if problems:
            raise InvalidArgument(f"{field}.object" if "unknown type" in problems[0]
                                  else f"{field}.attributes", problems[0])
        return fixed

    async def delete_matching(self, flt: RelationshipFilter,
                              preconditions: Sequence[Precondition],
                              organizations: frozenset[str] | None = None) -> tuple[int, int]:
        """Delete every relationship matching ``flt`` at the store's current revision
        (for a caller bound to ``organizations``: every one inside them)."""
        limit = LIMITS.delete_matches_max
        await self.follower.ensure(FULLY_CONSISTENT, LIMITS.freshness_wait_seconds)
        view = self.follower.view()
        guard = tenants.guard(organizations, view.policy, view.index)
        rels, more = read_relationships(view.index, flt, None, limit,
                                        guard.relationship_visible if guard else None)
        if more is not None:
            raise FailedPrecondition(
                "delete-limit", f"more than {limit} relationships match; narrow the filter")
        ops = [DeleteRelationship(rel) for rel in rels]
        pres = list(preconditions) + [Precondition(rel, must_exist=True) for rel in rels]
        revision = await self.write(ops, pres)
        return revision, len(rels)

    def read_relationships(self, flt: RelationshipFilter, after: Position | None, limit: int,
                           organizations: frozenset[str] | None = None,
                           ) -> tuple[list[Relationship], Position | None, int]:
        """One page of matches in key order (for a caller bound to ``organizations``,
        of those inside them), and the revision it was read at."""
        view = self.follower.view()
        guard = tenants.guard(organizations, view.policy, view.index)
        rels, next_key = read_relationships(view.index, flt, after, limit,
                                            guard.relationship_visible if guard else None)
        return rels, next_key, view.index.revision

    def read_object(self, ref: ObjectRef, organizations: frozenset[str] | None = None,
                    ) -> tuple[Mapping[str, Any], int]:
        """An object's attributes; a caller bound to ``organizations`` may read only one
        inside them (outside or absent: PERMISSION_DENIED alike)."""
        view = self.follower.view()
        if ref.type not in view.policy.types:
            raise InvalidArgument("object.type", f"unknown type {ref.type!r}")
        guard = tenants.guard(organizations, view.policy, view.index)
        if guard is not None:
            guard.require(ref.key, "object")
        if not view.index.exists(ref.key):
            raise NotFound(f"{ref} is not in the graph")
        return view.index.attributes(ref.key), view.index.revision

    def watch(self, after: int | None) -> AsyncIterator[Change]:
        """Changes above ``after`` (None: from now on), then live ones."""
        return self.follower.watch(after)
