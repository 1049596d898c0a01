"""Roles and removal: SetRole changes one scope only; RemoveMember takes a member's
roles at a scope away and hands what they own there to someone else.

Organization and workspace roles are independent (a person may hold both):
removing an organization role keeps the person's workspace roles, and what
they own in those workspaces stays theirs — unless a ``requires`` constraint
of the policy lets those roles exist only beside an organization role
(gumloop's ``members_are_org_members``): then removal from the organization
takes them too, in the same write. What they own where they will no longer
have a role is reassigned, in that write, to the ``reassign_to`` subject,
except the types the policy keeps with their owner (AI chats).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gatehouse.errors import FailedPrecondition, InvalidArgument, quote
from gatehouse.graph.changes import DeleteRelationship, Operation, TouchRelationship
from gatehouse.names import type_of
from gatehouse.policy.model import OWNER
from gatehouse.policy.rules import MinSubjects, Requires
from gatehouse.tenancy.commit import Commit
from gatehouse.tenancy.context import Context, Subject
from gatehouse.tenancy.workspaces import rel
from gatehouse.usage.limits import AddMember


@dataclass(frozen=True, slots=True)
class Removed:
    revision: int
    reassigned: dict[str, int] = field(default_factory=dict)


def roles_held(ctx: Context, subject: str, scope: str) -> list[str]:
    """The roles ``subject`` holds on ``scope`` (roles only, not other relations)."""
    declared = ctx.policy.types[type_of(scope)].roles
    held = ctx.index.held.get(subject, {}).get(scope, ())
    return sorted(r for r in held if r in declared)


def in_organization(ctx: Context, subject: str, org: str) -> bool:
    """Whether ``subject`` holds any role on ``org`` or one of its workspaces."""
    if roles_held(ctx, subject, org):
        return True
    return any(roles_held(ctx, subject, ws) for ws in ctx.children(org, ctx.rules.workspace))


def _last_owner(ctx: Context, org: str, member: str, removing: list[str]) -> None:
    owner = ctx.rules.owner_role
    if owner in removing and ctx.index.subjects(org, owner) <= {member}:
        # Named after the policy's own constraint when it declares one (the store
        # would refuse the write under that name too), else after the rule.
        rule = next((con.name for con in ctx.policy.write_rules.constraints
                     if isinstance(con, MinSubjects) and con.type == ctx.rules.organization
                     and con.relation == owner), "last-owner")
        raise FailedPrecondition(rule, f"{member} is the last {owner} of {org}; make "
                                 f"someone else {owner} first")


def set_role(ctx: Context, actor_ref: Any, scope_ref: Any, subject_ref: Any,
             role: str) -> Commit[int]:
    actor = ctx.subject(actor_ref, "actor")
    scope, org = ctx.scope(scope_ref)
    ctx.authorize(actor, ctx.member_guard(scope), scope)
    subject = ctx.subject(subject_ref, "subject")
    declared = ctx.policy.types[type_of(scope)].roles
    if role and role not in declared:
        raise InvalidArgument("role", f"{quote(role)} is not a role of {type_of(scope)!r} "
                              f"(roles: {', '.join(sorted(declared))}; \"\" removes)")
    held = roles_held(ctx, subject.key, scope)
    removing = [r for r in held if r != role]
    _last_owner(ctx, org, subject.key, removing)
    ops: list[Operation] = [DeleteRelationship(rel(scope, r, subject.key)) for r in removing]
    if role and role not in held:
        if not in_organization(ctx, subject.key, org):
            ctx.require_limit(org, AddMember(scope, ctx.email_of(subject.key) or subject.key))
        ops.append(TouchRelationship(rel(scope, role, subject.key)))
    return Commit(tuple(ops), (org,), lambda revision: revision)


def _receives_in(ctx: Context, receiver: str, org: str, ws: str | None) -> bool:
    """Whether ``receiver`` holds a receiver role on ``org`` or on workspace ``ws``."""
    for ref in ctx.rules.removal.receivers:
        type_, _, role = ref.partition(".")
        on = org if type_ == ctx.rules.organization else ws
        if on is not None and ctx.index.holds(on, role, receiver):
            return True
    return False


def remove_member(ctx: Context, actor_ref: Any, scope_ref: Any, member_ref: Any,
                  reassign_ref: Any) -> Commit[Removed]:
    actor = ctx.subject(actor_ref, "actor")
    scope, org = ctx.scope(scope_ref)
    ctx.authorize(actor, ctx.member_guard(scope), scope)
    member = ctx.subject(member_ref, "member")
    if not reassign_ref.type and not reassign_ref.id:
        raise InvalidArgument("reassign_to", "is required: who receives what the member owns")
    receiver = ctx.subject(reassign_ref, "reassign_to")
    if receiver.key == member.key:
        raise InvalidArgument("reassign_to", "must be someone other than the member")
    held = roles_held(ctx, member.key, scope)
    if not held:
        raise FailedPrecondition("not-a-member", f"{member.key} holds no role on {scope}")
    _last_owner(ctx, org, member.key, held)
    removed = [(scope, r) for r in held]
    if scope == org:
        removed += _dependent_roles(ctx, member.key, org, held)
    ops: list[Operation] = [DeleteRelationship(rel(on, r, member.key)) for on, r in removed]
    reassigned: Counter[str] = Counter()
    for resource, ws in _owned_losing_access(ctx, member, scope, org, set(removed)):
        if not _receives_in(ctx, receiver.key, org, ws):
            receivers = ", ".join(sorted(ctx.rules.removal.receivers))
            raise FailedPrecondition("reassign_to", f"{receiver.key} holds none of "
                                     f"{receivers} where {resource} lives ({ws or org})")
        ops.append(DeleteRelationship(rel(resource, OWNER, member.key)))
        ops.append(TouchRelationship(rel(resource, OWNER, receiver.key)))
        reassigned[type_of(resource)] += 1
    counts = dict(reassigned)
    return Commit(tuple(ops), (org,), lambda revision: Removed(revision, counts))


def _dependent_roles(ctx: Context, member: str, org: str,
                     removing: list[str]) -> list[tuple[str, str]]:
    """(object, relation) pairs the member must lose with the organization roles
    ``removing``: what a ``requires`` constraint lets them hold only with one of them."""
    org_type = ctx.rules.organization
    kept = {f"{org_type}.{r}" for r in roles_held(ctx, member, org) if r not in removing}
    out: set[tuple[str, str]] = set()
    for con in ctx.policy.write_rules.constraints:
        if not isinstance(con, Requires) or con.needs & kept:
            continue
        for ref in con.relations:
            type_, _, relation = ref.partition(".")
            for obj in ctx.index.objects(member, relation):
                if type_of(obj) == type_ and ctx.tenant_of(obj) == org:
                    out.add((obj, relation))
    return sorted(out)


def _owned_losing_access(ctx: Context, member: Subject, scope: str, org: str,
                         removed: set[tuple[str, str]]) -> list[tuple[str, str | None]]:
    """(resource, its workspace) for everything the member owns that moves.

    Removed from a workspace: everything they own in it. Removed from the
    organization: everything they own in workspaces where they keep no
    workspace role (where they keep one, they keep their things).
    """
    keep = ctx.rules.removal.keep
    ws_type = ctx.rules.workspace
    out = []
    types = ctx.policy.types
    for resource in sorted(ctx.index.objects(member.key, OWNER)):
        tdef = types.get(type_of(resource))
        # `owner` is also the organization's role in some policies: only owned
        # types' owner relation is ownership.
        if tdef is None or not tdef.owned or tdef.name in keep:
            continue
        chain = ctx.index.chain(resource) or {}
        if chain.get(ctx.rules.organization) != org:
            continue
        ws = chain.get(ws_type)
        if type_of(scope) == ws_type:
            if ws != scope:
                continue
        elif ws is not None and any((ws, r) not in removed
                                    for r in roles_held(ctx, member.key, ws)):
            continue
        out.append((resource, ws))
    return out
