"""Invitations: invite by email to an organization or workspace role, accept with
the token, resend, revoke, list.

An invitation is an object of the policy's invitation type under the
organization, holding the email, the role, the scope it grants on, its
status and expiry, and the SHA-256 of its token's secret. ``expired`` is not
stored: a pending invitation whose ``expires_at`` has passed reads as
expired and can no longer be accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gatehouse.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, quote
from gatehouse.graph.changes import PutObject, TouchRelationship
from gatehouse.graph.model import ObjectRef
from gatehouse.names import object_key, type_of, validate_id
from gatehouse.policy.model import PARENT, InvitationRules
from gatehouse.tenancy import tokens
from gatehouse.tenancy.commit import Commit
from gatehouse.tenancy.context import Context, id_of
from gatehouse.tenancy.workspaces import rel
from gatehouse.usage.limits import AddMember

PENDING, ACCEPTED, REVOKED, EXPIRED = "pending", "accepted", "revoked", "expired"
EMAIL_RE = re.compile(r"[^@\s]{1,64}@[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?\.[a-z]{2,63}",
                      re.ASCII)


@dataclass(frozen=True, slots=True)
class Issued:
    """An invitation (or access link) and its token, returned once."""

    record_id: str
    token: str
    expires_at: int
    revision: int


@dataclass(frozen=True, slots=True)
class InvitationView:
    invitation_id: str
    email: str
    role: str
    status: str
    expires_at: int


def check_email(value: str, field: str = "email") -> str:
    """The address, lower-cased; InvalidArgument unless it looks like one."""
    email = value.strip().lower()
    if len(email) > 254 or not EMAIL_RE.fullmatch(email):
        raise InvalidArgument(field, f"{quote(value)} is not an email address")
    return email


def _rules(ctx: Context) -> InvitationRules:
    if ctx.rules.invitations is None:
        raise FailedPrecondition("tenancy", f"policy {ctx.policy.name!r} declares no "
                                 "invitations")
    return ctx.rules.invitations


def status_of(attrs: Any, now: float) -> str:
    status = attrs.get("status", PENDING)
    if status == PENDING and attrs.get("expires_at", 0) <= now:
        return EXPIRED
    return str(status)


def _find(ctx: Context, rules: InvitationRules, inv_id: str, field: str) -> tuple[str, str]:
    """(invitation key, organization key) of an existing invitation."""
    validate_id(inv_id, field)
    key = object_key(rules.type, inv_id)
    org = ctx.index.parent(key)
    if org is None or not ctx.index.exists(key):
        raise NotFound(f"{field}: {key} does not exist")
    return key, org


def invite_member(ctx: Context, actor_ref: Any, scope_ref: Any, email: str, role: str,
                  ttl_seconds: int) -> Commit[Issued]:
    rules = _rules(ctx)
    actor = ctx.subject(actor_ref, "actor")
    scope, org = ctx.scope(scope_ref)
    ctx.authorize(actor, ctx.member_guard(scope), scope)
    address = check_email(email)
    allowed = rules.roles.get(type_of(scope), frozenset())
    if role not in allowed:
        raise InvalidArgument("role", f"{quote(role)} cannot be granted by an invitation to "
                              f"{type_of(scope)!r} (roles: {', '.join(sorted(allowed)) or 'none'})")
    if ttl_seconds > rules.max_ttl_seconds:
        raise InvalidArgument("ttl_seconds", f"at most {rules.max_ttl_seconds} "
                              f"({rules.max_ttl_seconds // 86400} days)")
    ttl = ttl_seconds or rules.ttl_seconds
    inv_id = tokens.new_id()
    token = tokens.issue(inv_id)
    expires_at = int(ctx.now) + ttl
    inv = object_key(rules.type, inv_id)
    attrs = {"email": address, "role": role, "status": PENDING, "scope": scope,
             "expires_at": expires_at, "secret_sha256": token.secret_sha256,
             "invited_by": actor.key}
    ops = (PutObject(ObjectRef.from_key(inv), attrs), TouchRelationship(rel(inv, PARENT, org)))
    return Commit(ops, (org,), lambda revision: Issued(inv_id, token.text, expires_at, revision))


def accept_invitation(ctx: Context, token_text: str, subject_ref: Any) -> Commit[int]:
    rules = _rules(ctx)
    inv_id, secret = tokens.parse(token_text)
    key = object_key(rules.type, inv_id)
    attrs = ctx.index.attributes(key)
    org = ctx.index.parent(key)
    if org is None or not tokens.matches(secret, attrs.get("secret_sha256")):
        raise NotFound("token: no invitation has this token")
    status = status_of(attrs, ctx.now)
    if status != PENDING:
        raise FailedPrecondition("invitation", f"{key} is {status}; only a pending invitation "
                                 "can be accepted")
    subject = ctx.subject(subject_ref, "subject")
    email = str(attrs.get("email", ""))
    if ctx.email_of(subject.key) != email:
        raise PermissionDenied("accept", key, f"{subject.key} (whose email is not the "
                               "invitation's)")
    scope = str(attrs.get("scope", ""))
    if ctx.tenant_of(scope) != org:
        raise NotFound(f"{key}: its {quote(scope)} no longer exists")
    role = str(attrs.get("role", ""))
    if role not in rules.roles.get(type_of(scope), frozenset()):
        # Written by hand, or the policy changed since: grant nothing it would refuse.
        raise FailedPrecondition("invitation", f"{key} grants {quote(role)}, which an "
                                 f"invitation to {type_of(scope)!r} may not grant now")
    ctx.require_limit(org, AddMember(scope, email))
    ops = (TouchRelationship(rel(scope, role, subject.key)),
           PutObject(ObjectRef.from_key(key), {**attrs, "status": ACCEPTED}))
    return Commit(ops, (org,), lambda revision: revision)


def _managed(ctx: Context, actor_ref: Any, inv_id: str) -> tuple[InvitationRules, str, str, Any]:
    rules = _rules(ctx)
    actor = ctx.subject(actor_ref, "actor")
    key, org = _find(ctx, rules, inv_id, "invitation_id")
    attrs = ctx.index.attributes(key)
    scope = str(attrs.get("scope", ""))
    ctx.authorize(actor, ctx.member_guard(scope), scope if ctx.index.exists(scope) else org)
    return rules, key, org, attrs


def revoke_invitation(ctx: Context, actor_ref: Any, inv_id: str) -> Commit[int]:
    _, key, org, attrs = _managed(ctx, actor_ref, inv_id)
    status = attrs.get("status")
    if status != PENDING:
        raise FailedPrecondition("invitation", f"{key} is {status}; only a pending invitation "
                                 "can be revoked")
    ops = (PutObject(ObjectRef.from_key(key), {**attrs, "status": REVOKED}),)
    return Commit(ops, (org,), lambda revision: revision)


def resend_invitation(ctx: Context, actor_ref: Any, inv_id: str) -> Commit[Issued]:
    """A new token and a new expiry; the previous token stops working."""
    rules, key, org, attrs = _managed(ctx, actor_ref, inv_id)
    status = attrs.get("status")
    if status != PENDING:
        raise FailedPrecondition("invitation", f"{key} is {status}; only a pending (or expired) "
                                 "invitation can be resent")
    token = tokens.issue(id_of(key))
    expires_at = int(ctx.now) + rules.ttl_seconds
    ops = (PutObject(ObjectRef.from_key(key), {**attrs, "secret_sha256": token.secret_sha256,
                                               "expires_at": expires_at}),)
    return Commit(ops, (org,),
                  lambda revision: Issued(id_of(key), token.text, expires_at, revision))


def list_invitations(ctx: Context, actor_ref: Any, scope_ref: Any) -> list[InvitationView]:
    rules = _rules(ctx)
    actor = ctx.subject(actor_ref, "actor")
    scope, org = ctx.scope(scope_ref)
    ctx.authorize(actor, ctx.member_guard(scope), scope)
    out = []
    for key in ctx.children(org, rules.type):
        attrs = ctx.index.attributes(key)
        if attrs.get("scope") != scope:
            continue
        out.append(InvitationView(id_of(key), str(attrs.get("email", "")),
                                  str(attrs.get("role", "")), status_of(attrs, ctx.now),
                                  int(attrs.get("expires_at", 0))))
    return out
