"""Tenant-bound callers: which organization an object is in, and whether a caller
bound to some organizations may name or see it.

A caller whose ``Caller.organizations`` is a set of organization ids (a key
bound to tenants) may only name, read, write or be shown objects inside those
organizations. Every servicer asks this module, and only this module, so the
rule is stated once:

* An object *with a tenant* (the organization type itself, or any type below
  it) is inside when its organization is one of the caller's. Its organization
  is found the way the stores place it: the object itself for the
  organization type, else the organization in its ancestor chain in the index.
  Stores never move an object to another tenant (``tenant-boundary``), so what
  the index says of an object it knows stays true; an object the index does
  not know counts as outside, whether it exists elsewhere or not at all, so a
  refusal never tells a restricted caller which ids exist in other tenants.
* An object *created by the same request* is in the organization its parent
  relationship in that request puts it in (``place``).
* A *user* (a type with no tenant) may be named only if it holds some
  relationship on an object inside one of the caller's organizations. The
  operations that legitimately name a newcomer (accepting an invitation,
  redeeming an access link, joining by domain, creating an organization, and
  a user written as the subject of a relationship inside the caller's
  tenants) decide by the organization of the invitation, link, domain or
  relationship instead; their servicers do not ask about the user.
* A relationship is inside when its resource has a tenant and that tenant is
  inside; its subject is then either in the same tenant (the stores enforce
  it) or a user. Relationships whose resource has no tenant (a user's own
  relations) are outside for every tenant-bound caller.

Refusals are :class:`OutsideTenants` (PERMISSION_DENIED), naming the request
field and quoting only what the caller sent. An unrestricted caller
(``organizations is None``) never builds a guard: :func:`guard` returns None
and the servicers skip every check, so Check pays one attribute read.

Readers: the guard reads the index as it is. Poll-thread callers (Check,
CheckBulk) build and use it under the follower's lock; loop-thread callers
use it between awaits, when the index does not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from gatehouse.auth.caller import caller_of
from gatehouse.errors import FailedPrecondition, GatehouseError, PermissionDenied
from gatehouse.graph.changes import (
    DeleteObject,
    DeleteRelationship,
    Operation,
    PutObject,
    TouchRelationship,
)
from gatehouse.graph.index import GraphIndex
from gatehouse.graph.model import Relationship
from gatehouse.names import object_key, type_of, validate_id, validate_type
from gatehouse.policy.model import PARENT, CompiledPolicy
from gatehouse.policy.rules import CHILD, GLOBAL, ROOT

NOT_YOURS = "is not one this key may use"
TENANT_BOUNDARY = "tenant-boundary"
"""The rule the stores name when a write would link two organizations."""

# Parent links followed when placing an object created by the same request
# (deeper than any policy's type hierarchy; a cycle ends here).
_MAX_DEPTH = 32


class OutsideTenants(PermissionDenied):
    """A tenant-bound caller named something outside its organizations."""

    def __init__(self, field: str, reason: str) -> None:
        GatehouseError.__init__(self, f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.action = ""
        self.resource = ""
        self.actor = ""


class HasNotes(Protocol):
    """What a call carries for its handler (``transport.CallInfo``)."""

    @property
    def notes(self) -> dict[str, Any]: ...


def organizations_of(info: HasNotes | None) -> frozenset[str] | None:
    """The organization ids the call's caller is bound to; None: every organization."""
    if info is None:
        return None
    return caller_of(info.notes).organizations


def organization_type(policy: CompiledPolicy) -> str | None:
    """The type whose ids a key's ``organizations`` name: the tenancy section's
    organization, else the policy's one tenant root type (None if it has several
    or none: then nothing is inside any tenant-bound key's organizations)."""
    cached = _ORG_TYPES.get(policy.version)
    if cached is not None:
        return cached[0]
    if policy.tenancy is not None:
        found: str | None = policy.tenancy.organization
    else:
        roots = [t for t, k in policy.write_rules.scope_kind.items() if k == ROOT]
        found = roots[0] if len(roots) == 1 else None
    if len(_ORG_TYPES) > 64:
        _ORG_TYPES.clear()
    _ORG_TYPES[policy.version] = (found,)
    return found


_ORG_TYPES: dict[str, tuple[str | None]] = {}


class TenantGuard:
    """One request's view of what a tenant-bound caller may name: the caller's
    organizations, read against one (policy, index)."""

    __slots__ = ("index", "kinds", "org_type", "organizations", "placed", "policy", "roots")

    def __init__(self, organizations: frozenset[str], policy: CompiledPolicy,
                 index: GraphIndex) -> None:
        self.organizations = organizations
        self.policy = policy
        self.index = index
        self.kinds: Mapping[str, str] = policy.write_rules.scope_kind
        self.org_type = organization_type(policy)
        self.roots = (frozenset(object_key(self.org_type, o) for o in organizations)
                      if self.org_type is not None else frozenset())
        self.placed: dict[str, str] = {}
        """child key -> parent key, for objects this request creates (see ``place``)."""

    # -- where an object is ---------------------------------------------------

    def organization_of(self, key: str) -> str | None:
        """The organization key of an object with a tenant; None if it has none or
        the index does not know it (and the request does not place it)."""
        org_type = self.org_type
        if org_type is None:
            return None
        for _ in range(_MAX_DEPTH):
            if type_of(key) == org_type:
                return key
            up = self.index.up.get(key)
            if up is not None:
                found = up.get(org_type)
                if found is not None:
                    return found
            parent = self.placed.get(key)
            if parent is None:
                return None
            key = parent
        return None

    def place(self, ops: Iterable[Operation]) -> None:
        """Learn where the request's new objects go: each ``#parent`` relationship it
        writes (or, in a change being watched, removes) places its resource under
        its subject."""
        for op in ops:
            if isinstance(op, TouchRelationship | DeleteRelationship):
                rel = op.relationship
                if rel.relation == PARENT:
                    self.placed.setdefault(rel.resource.key, rel.subject.key)

    def has_tenant(self, key: str) -> bool:
        return self.kinds.get(type_of(key), GLOBAL) != GLOBAL

    def scoped_inside(self, key: str) -> bool:
        """Whether an object with a tenant is in one of the caller's organizations."""
        org = self.organization_of(key)
        return org is not None and org in self.roots

    def user_inside(self, key: str) -> bool:
        """Whether an object without a tenant (a user) holds some relationship on an
        object inside one of the caller's organizations."""
        held = self.index.held.get(key)
        if not held:
            return False
        kinds = self.kinds
        for obj in held:
            if kinds.get(type_of(obj), GLOBAL) != GLOBAL and self.scoped_inside(obj):
                return True
        return False

    def visible(self, key: str) -> bool:
        """Whether the caller may name or see the object ``key``."""
        kind = self.kinds.get(type_of(key))
        if kind is None:
            return False  # a type the policy does not declare
        if kind == GLOBAL:
            return self.user_inside(key)
        return self.scoped_inside(key)

    def relationship_visible(self, resource: str) -> bool:
        """Whether a relationship on ``resource`` is inside (its subject follows)."""
        return self.kinds.get(type_of(resource), GLOBAL) != GLOBAL and \
            self.scoped_inside(resource)

    # -- refusing -------------------------------------------------------------

    def require(self, key: str, field: str) -> None:
        """OutsideTenants naming ``field`` unless the caller may name ``key``."""
        if not self.visible(key):
            raise outside(self, key, field)

    def require_ref(self, type_: str, id_: str, field: str) -> str:
        """Validate a ``{type, id}`` reference (INVALID_ARGUMENT first), then require it."""
        validate_type(type_, f"{field}.type")
        validate_id(id_, f"{field}.id")
        key = object_key(type_, id_)
        self.require(key, field)
        return key

    def require_check(self, subject: str, resource: str, prefix: str = "") -> None:
        """Check and CheckBulk: the subject and the resource are both the caller's to name."""
        if not self.visible(subject):
            raise outside(self, subject, prefix + "subject")
        if not self.visible(resource):
            raise outside(self, resource, prefix + "resource")

    def require_organization(self, org_id: str, field: str) -> str:
        """The key of the organization ``org_id``; OutsideTenants unless it is the caller's."""
        validate_id(org_id, field)
        if org_id not in self.organizations or self.org_type is None:
            raise OutsideTenants(field, f"organization {org_id!r} {NOT_YOURS}")
        return object_key(self.org_type, org_id)

    def require_relationship(self, rel: Relationship, field: str) -> None:
        """A relationship written, deleted or named by a tenant-bound caller: its
        resource inside (placed by the request if new), its subject inside unless
        it is a user (who then holds a relationship inside: a newcomer may be added)."""
        res, subj = rel.resource.key, rel.subject.key
        if not self.relationship_visible(res):
            raise outside(self, res, f"{field}.resource")
        if self.has_tenant(subj) and not self.scoped_inside(subj):
            raise outside(self, subj, f"{field}.subject")

    def require_operations(self, ops: Iterable[Operation], fields: Iterable[str]) -> None:
        """Every object a write batch touches is inside; else the first one outside is
        refused, naming its update (the whole batch is refused: nothing is written)."""
        ops = list(ops)
        self.place(ops)
        for op, field in zip(ops, fields, strict=True):
            if isinstance(op, TouchRelationship | DeleteRelationship):
                self.require_relationship(op.relationship, f"{field}.relationship")
            elif isinstance(op, PutObject | DeleteObject):
                key = op.ref.key
                if isinstance(op, DeleteObject) and not self.has_tenant(key):
                    # It could only go once it holds nothing anywhere, and then it is
                    # nobody's to name: never a bound key's to delete.
                    raise OutsideTenants(f"{field}.object", f"{key} belongs to no single "
                                         "organization; a key bound to organizations "
                                         "cannot delete it")
                self.require(key, f"{field}.object")

    # -- filtering ------------------------------------------------------------

    def visible_operations(self, ops: Iterable[Operation]) -> list[Operation]:
        """The operations of a committed change that are inside (for Watch)."""
        ops = list(ops)
        self.place(ops)
        out: list[Operation] = []
        for op in ops:
            if isinstance(op, TouchRelationship | DeleteRelationship):
                if self.relationship_visible(op.relationship.resource.key):
                    out.append(op)
            elif self.visible(op.ref.key):
                out.append(op)
        return out


def without_names(exc: FailedPrecondition) -> FailedPrecondition:
    """A store's refusal as a bound caller may read it: ``tenant-boundary`` names the
    organization an object really is in, which may not be the caller's to know."""
    if exc.rule != TENANT_BOUNDARY:
        return exc
    return FailedPrecondition(TENANT_BOUNDARY, "an object this request names is already "
                              "in another organization; a relationship stays within one")


def outside(g: TenantGuard, key: str, field: str) -> OutsideTenants:
    """The refusal for ``key``, worded by what kind of object it is; it names only
    what the caller sent, never the organization the object is really in."""
    kind = g.kinds.get(type_of(key))
    if kind == ROOT or type_of(key) == g.org_type:
        return OutsideTenants(field, f"{key} {NOT_YOURS}")
    if kind == CHILD:
        return OutsideTenants(field, f"the organization of {key} {NOT_YOURS}")
    if kind == GLOBAL:
        return OutsideTenants(field, f"{key} holds no relationship in an organization this "
                              "key may use")
    return OutsideTenants(field, f"{key} is in no organization this key may use")


def guard(organizations: frozenset[str] | None, policy: CompiledPolicy,
          index: GraphIndex) -> TenantGuard | None:
    """A guard for a tenant-bound caller; None for an unrestricted one (check nothing)."""
    if organizations is None:
        return None
    return TenantGuard(organizations, policy, index)


__all__ = ["NOT_YOURS", "TENANT_BOUNDARY", "OutsideTenants", "TenantGuard", "guard",
           "organization_type", "organizations_of", "outside", "without_names"]
