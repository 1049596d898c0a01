"""Domain auto-join: an organization claims a verified email domain; people who sign
up with it join (or are offered) a workspace role.

A domain rule is an object of the policy's domain type whose id is the
domain itself, so one domain belongs to at most one organization. Public
email domains (the policy lists them) can never be claimed. The service
cannot verify a domain: the calling product does, before AddDomain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gatehouse.errors import AlreadyExists, FailedPrecondition, InvalidArgument, quote
from gatehouse.graph.changes import PutObject, TouchRelationship
from gatehouse.graph.model import ObjectRef
from gatehouse.names import object_key, type_of
from gatehouse.policy.model import PARENT, DomainRules
from gatehouse.policy.tenancy import DOMAIN_RE
from gatehouse.tenancy.commit import Commit
from gatehouse.tenancy.context import Context, id_of
from gatehouse.tenancy.invitations import check_email
from gatehouse.tenancy.members import in_organization, roles_held
from gatehouse.tenancy.workspaces import rel
from gatehouse.usage.limits import AddMember

AUTO_JOIN, SUGGEST = "auto_join", "suggest"
MODES = (AUTO_JOIN, SUGGEST)


@dataclass(frozen=True, slots=True)
class Match:
    organization_id: str
    workspace_id: str
    role: str
    mode: str


@dataclass(frozen=True, slots=True)
class Joined:
    match: Match
    revision: int


def _rules(ctx: Context) -> DomainRules:
    if ctx.rules.domains is None:
        raise FailedPrecondition("tenancy", f"policy {ctx.policy.name!r} declares no domain "
                                 "rules")
    return ctx.rules.domains


def add_domain(ctx: Context, actor_ref: Any, org_id: str, domain: str, mode: str,
               ws_id: str, role: str) -> Commit[int]:
    rules = _rules(ctx)
    actor = ctx.subject(actor_ref, "actor")
    org = ctx.organization(org_id)
    ctx.authorize(actor, "add_domain", org)
    name = domain.strip().lower()
    if not DOMAIN_RE.fullmatch(name):
        raise InvalidArgument("domain", f"{quote(domain)} is not a domain name")
    if name in rules.public:
        raise FailedPrecondition("public-domain", f"{name} is a public email domain; only an "
                                 "organization's own domain can be claimed")
    if mode not in MODES:
        raise InvalidArgument("mode", f"must be one of {', '.join(MODES)}")
    if ws_id:
        ws, ws_org = ctx.workspace(ws_id)
        if ws_org != org:
            raise InvalidArgument("workspace_id", f"{ws} is not a workspace of {org}")
        scope_type = ctx.rules.workspace
    else:
        scope_type = ctx.rules.organization
    roles = ctx.policy.types[scope_type].roles
    if role not in roles:
        raise InvalidArgument("role", f"{quote(role)} is not a role of {scope_type!r} (roles: "
                              f"{', '.join(sorted(roles))})")
    ctx.require_feature("add_domain", org)
    key = object_key(rules.type, name)
    holder = ctx.index.parent(key)
    if holder is not None and holder != org:
        raise AlreadyExists(f"domain: {name} is claimed by another organization")
    attrs = {"mode": mode, "workspace_id": ws_id, "role": role}
    ops = (PutObject(ObjectRef.from_key(key), attrs), TouchRelationship(rel(key, PARENT, org)))
    return Commit(ops, (org,), lambda revision: revision)


def resolve_signup(ctx: Context, email: str) -> list[Match]:
    rules = _rules(ctx)
    address = check_email(email)
    domain = address.rpartition("@")[2]
    if domain in rules.public:
        return []
    key = object_key(rules.type, domain)
    org = ctx.index.parent(key)
    if org is None or type_of(org) != ctx.rules.organization:
        return []
    attrs = ctx.index.attributes(key)
    return [Match(id_of(org), str(attrs.get("workspace_id", "")), str(attrs.get("role", "")),
                  str(attrs.get("mode", "")))]


def join_by_domain(ctx: Context, subject_ref: Any) -> Commit[Joined]:
    """Give a person the role their verified email's auto-join domain grants."""
    rules = _rules(ctx)
    subject = ctx.subject(subject_ref, "subject")
    email = ctx.email_of(subject.key)
    if not email:
        raise FailedPrecondition("email", f"{subject.key} has no email attribute")
    matches = [m for m in resolve_signup(ctx, email) if m.mode == AUTO_JOIN]
    if not matches:
        raise FailedPrecondition("domain", f"no organization auto-joins {email.partition('@')[2]}")
    match = matches[0]
    org = ctx.organization(match.organization_id)
    if not in_organization(ctx, subject.key, org):
        ctx.require_limit(org, AddMember(org, email))
    grants: set[tuple[str, str]] = set()
    if rules.organization_role and not roles_held(ctx, subject.key, org):
        grants.add((org, rules.organization_role))
    scope = org
    if match.workspace_id:
        scope, _ = ctx.workspace(match.workspace_id)
    if not ctx.index.holds(scope, match.role, subject.key):
        grants.add((scope, match.role))
    ops = [TouchRelationship(rel(on, role, subject.key)) for on, role in sorted(grants)]
    return Commit(tuple(ops), (org,), lambda revision: Joined(match, revision))
