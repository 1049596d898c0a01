"""What a tenancy operation decides from: one view of the graph, the clock, and the
policy's tenancy rules, with the look-ups every operation shares.

Everything here reads; nothing writes. An operation turns what it reads
into a :class:`~gatehouse.tenancy.commit.Commit`, which the runner writes
only if the tenant is unchanged since this view's revision.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gatehouse import engine
from gatehouse.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    quote,
)
from gatehouse.graph.index import GraphIndex
from gatehouse.graph.model import ObjectRef
from gatehouse.names import object_key, split_key, type_of, validate_id, validate_type
from gatehouse.policy.model import CompiledPolicy, Plan, TenancyModel
from gatehouse.usage.compute import FactsSource, UsageView
from gatehouse.usage.events import ALL_TIME, Counters
from gatehouse.usage.limits import Proposal, check_limit


@dataclass(frozen=True, slots=True)
class Subject:
    """A validated subject reference and its key."""

    ref: ObjectRef
    key: str


class Context:
    """One operation's reading of the world."""

    def __init__(self, policy: CompiledPolicy, index: GraphIndex, now: float,
                 facts: FactsSource | None = None) -> None:
        if policy.tenancy is None:
            raise FailedPrecondition("tenancy", f"policy {policy.name!r} declares no tenancy "
                                     "section, so it supports no tenancy operations")
        self.policy = policy
        self.index = index
        self.now = now
        self.rules: TenancyModel = policy.tenancy
        self.facts = facts
        """Per-workspace usage facts (cached by the runtime); None computes them afresh."""

    @property
    def revision(self) -> int:
        return self.index.revision

    # -- names --------------------------------------------------------------------

    def subject(self, ref: Any, field: str) -> Subject:
        """A subject reference (``actor``, ``member``, ...) the policy accepts as subject."""
        type_ = validate_type(ref.type, f"{field}.type")
        if type_ not in self.policy.subject_types:
            raise InvalidArgument(f"{field}.type", f"{type_!r} is not a subject type (subject "
                                  f"types: {', '.join(sorted(self.policy.subject_types))})")
        id_ = validate_id(ref.id, f"{field}.id")
        return Subject(ObjectRef(type_, id_), object_key(type_, id_))

    def organization(self, org_id: str, field: str = "organization_id") -> str:
        validate_id(org_id, field)
        key = object_key(self.rules.organization, org_id)
        if not self.index.exists(key):
            raise NotFound(f"{field}: {key} does not exist")
        return key

    def workspace(self, ws_id: str, field: str = "workspace_id") -> tuple[str, str]:
        """(workspace key, organization key) of an existing workspace."""
        validate_id(ws_id, field)
        key = object_key(self.rules.workspace, ws_id)
        org = self.index.parent(key)
        if org is None or type_of(org) != self.rules.organization:
            raise NotFound(f"{field}: {key} does not exist")
        return key, org

    def scope(self, ref: Any, field: str = "scope") -> tuple[str, str]:
        """(scope key, organization key) of an organization or workspace reference."""
        type_ = validate_type(ref.type, f"{field}.type")
        if type_ == self.rules.organization:
            key = self.organization(ref.id, f"{field}.id")
            return key, key
        if type_ == self.rules.workspace:
            return self.workspace(ref.id, f"{field}.id")
        raise InvalidArgument(f"{field}.type", f"must be {self.rules.organization!r} or "
                              f"{self.rules.workspace!r}, not {quote(type_)}")

    def tenant_of(self, key: str) -> str | None:
        """The organization an object belongs to (itself for an organization)."""
        if type_of(key) == self.rules.organization:
            return key if self.index.exists(key) else None
        chain = self.index.chain(key)
        return None if chain is None else chain.get(self.rules.organization)

    # -- permission ---------------------------------------------------------------

    def allowed(self, actor: str, action: str, resource: str) -> bool:
        return engine.check(self.policy, self.index, actor, action, type_of(resource), resource)

    def authorize(self, actor: Subject, op: str, target: str) -> None:
        """PermissionDenied unless the actor holds ``op``'s guard action.

        ``target`` is the organization or workspace the operation acts on; the
        guard's action is checked on the object of the guard's type in its
        chain (the workspace itself, or its organization).
        """
        guard = self.rules.guards.get(op)
        if guard is None:
            raise FailedPrecondition("tenancy", f"policy {self.policy.name!r} names no guard "
                                     f"for {op}")
        on = target if not guard.type else (self.index.chain(target) or {}).get(guard.type)
        if on is None or not self.allowed(actor.key, guard.action, on):
            raise PermissionDenied(guard.action, on or target, actor.key)

    def member_guard(self, scope: str) -> str:
        """The guard operation for managing members of ``scope``."""
        if type_of(scope) == self.rules.organization:
            return "manage_organization_members"
        return "manage_workspace_members"

    # -- plans and limits ---------------------------------------------------------

    def plan(self, org: str) -> tuple[Plan | None, bool]:
        return self.policy.usage.resolve_plan(
            self.index.attributes(org).get(self.policy.usage.plan_attribute))

    def require_feature(self, op: str, org: str) -> None:
        feature = self.rules.features.get(op)
        if feature is None:
            return
        plan, _ = self.plan(org)
        if plan is None or feature not in plan.features:
            name = plan.name if plan else "none"
            raise FailedPrecondition(
                f"feature {feature}", f"{op.replace('_', ' ')} needs a plan with {feature!r}; "
                f"{org} is on plan {name!r}")

    def require_limit(self, org: str, proposal: Proposal) -> None:
        """FailedPrecondition naming the metric and limit if ``proposal`` would exceed the plan."""
        model = self.policy.usage
        if not model.metrics:
            return
        period = "current"
        view = UsageView(model, self.index, org, {ALL_TIME: Counters(), period: Counters()},
                         period, self.facts)
        decision = check_limit(view, proposal)
        if not decision.allowed:
            raise FailedPrecondition("plan-limit", decision.reason)

    # -- walking the graph --------------------------------------------------------

    def children(self, key: str, type_: str | None = None) -> list[str]:
        kids = self.index.children.get(key, ())
        return sorted(k for k in kids if type_ is None or type_of(k) == type_)

    def descendants(self, key: str) -> Iterator[str]:
        """Every object below ``key``, deepest first (children before their parent)."""
        stack = [(key, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                if node != key:
                    yield node
                continue
            stack.append((node, True))
            stack.extend((child, False) for child in self.index.children.get(node, ()))

    def relationships_of(self, key: str) -> Iterator[tuple[str, str, str]]:
        """(resource, relation, subject) of every relationship naming ``key`` on either side
        (its parent edge and its children's included)."""
        for relation, subjects in self.index.forward.get(key, {}).items():
            for subject in subjects:
                yield key, relation, subject
        for obj, relations in self.index.held.get(key, {}).items():
            for relation in relations:
                yield obj, relation, key

    def email_of(self, subject: str) -> str:
        value = self.index.attributes(subject).get("email")
        return value.strip().lower() if isinstance(value, str) else ""


def id_of(key: str) -> str:
    return split_key(key)[1]
