"""Organizations and workspaces: create, check a slug, rename, delete."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gatehouse.errors import AlreadyExists, FailedPrecondition, InvalidArgument, quote
from gatehouse.graph.changes import (
    DeleteObject,
    DeleteRelationship,
    Operation,
    PutObject,
    TouchRelationship,
)
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.names import object_key, split_key, validate_id
from gatehouse.policy.model import PARENT, Attribute
from gatehouse.tenancy import slugs, tokens
from gatehouse.tenancy.commit import Commit
from gatehouse.tenancy.context import Context, Subject
from gatehouse.usage.limits import CreateWorkspace


@dataclass(frozen=True, slots=True)
class Created:
    organization_id: str
    workspace_id: str
    slug: str
    revision: int


@dataclass(frozen=True, slots=True)
class Deleted:
    revision: int
    deleted: int


def rel(resource: str, relation: str, subject: str) -> Relationship:
    return Relationship(ObjectRef.from_key(resource), relation, ObjectRef.from_key(subject))


def _workspace_ops(ctx: Context, org: str, ws: str, name: str, slug: str,
                   creator: Subject | None) -> list[Operation]:
    ops: list[Operation] = [
        PutObject(ObjectRef.from_key(ws), {"name": name, "slug": slug}),
        TouchRelationship(rel(ws, PARENT, org)),
    ]
    if creator is not None and ctx.rules.creator_role:
        ops.append(TouchRelationship(rel(ws, ctx.rules.creator_role, creator.key)))
    return ops


def _rules_of(ctx: Context, name: str) -> Attribute | None:
    """The workspace type's declared attribute ``name`` (its rules check names and slugs)."""
    return ctx.policy.types[ctx.rules.workspace].attributes.get(name)


def slug_owner(ctx: Context, org: str, slug: str) -> str | None:
    """The workspace of ``org`` holding ``slug``, if any."""
    for ws in ctx.children(org, ctx.rules.workspace):
        if ctx.index.attributes(ws).get("slug") == slug:
            return ws
    return None


def _records_naming(ctx: Context, org: str, ws: str) -> list[str]:
    """Tenancy records kept under the organization that name the workspace: its
    invitations and the domain rules that send people to it."""
    out = []
    rules = ctx.rules
    if rules.invitations is not None:
        out += [k for k in ctx.children(org, rules.invitations.type)
                if ctx.index.attributes(k).get("scope") == ws]
    if rules.domains is not None:
        ws_id = split_key(ws)[1]
        out += [k for k in ctx.children(org, rules.domains.type)
                if ctx.index.attributes(k).get("workspace_id") == ws_id]
    return out


def create_organization(ctx: Context, actor_ref: Any, org_id: str, name: str,
                        plan: str) -> Commit[Created]:
    """The organization with its plan, the actor as owner, and its primary workspace."""
    actor = ctx.subject(actor_ref, "actor")
    if org_id:
        validate_id(org_id, "organization_id")
    else:
        org_id = tokens.new_id()
    org = object_key(ctx.rules.organization, org_id)
    if ctx.index.exists(org):
        raise AlreadyExists(f"organization_id: {org} already exists")
    slugs.check_name(name, "name", ctx.policy.types[ctx.rules.organization].attributes.get(
        "name"))
    usage = ctx.policy.usage
    if plan:
        if plan not in usage.plans:
            raise InvalidArgument("plan", f"unknown plan {quote(plan)} (declared: "
                                  f"{', '.join(sorted(usage.plans)) or 'none'})")
    else:
        plan = usage.fallback or ""
    ws_id = tokens.new_id()
    ws = object_key(ctx.rules.workspace, ws_id)
    primary = ctx.rules.primary_workspace
    slug = slugs.derive_slug(primary, _rules_of(ctx, "slug"))
    attrs: dict[str, Any] = {"name": name}
    if plan:
        attrs[usage.plan_attribute] = plan
    ops: list[Operation] = [
        PutObject(ObjectRef.from_key(org), attrs),
        TouchRelationship(rel(org, ctx.rules.owner_role, actor.key)),
        *_workspace_ops(ctx, org, ws, primary, slug, actor),
    ]
    return Commit(tuple(ops), (org,),
                  lambda revision: Created(org_id, ws_id, slug, revision))


def create_workspace(ctx: Context, actor_ref: Any, org_id: str, name: str,
                     slug: str) -> Commit[Created]:
    actor = ctx.subject(actor_ref, "actor")
    org = ctx.organization(org_id)
    ctx.authorize(actor, "create_workspace", org)
    slug_rules = _rules_of(ctx, "slug")
    slugs.check_name(name, "name", _rules_of(ctx, "name"))
    if slug:
        slugs.check_slug(slug, "slug", slug_rules)
        holder = slug_owner(ctx, org, slug)
        if holder is not None:
            raise AlreadyExists(f"slug: {slug!r} is taken in {org} (by {holder})")
    else:
        base = slugs.derive_slug(name, slug_rules)
        slug, n = base, 1
        while slug_owner(ctx, org, slug) is not None:
            n += 1
            suffix = f"-{n}"
            slug = base[:slugs.slug_max(slug_rules) - len(suffix)].rstrip("-") + suffix
    ctx.require_feature("create_workspace", org)
    ctx.require_limit(org, CreateWorkspace())
    ws_id = tokens.new_id()
    ws = object_key(ctx.rules.workspace, ws_id)
    ops = _workspace_ops(ctx, org, ws, name, slug, actor)
    return Commit(tuple(ops), (org,), lambda revision: Created(split_key(org)[1], ws_id, slug,
                                                                  revision))


def check_slug(ctx: Context, org_id: str, slug: str) -> tuple[bool, str]:
    """(available, reason) for ``slug`` in the organization."""
    org = ctx.organization(org_id)
    problem = slugs.slug_problem(slug, _rules_of(ctx, "slug"))
    if problem is not None:
        return False, f"invalid: {problem}"
    holder = slug_owner(ctx, org, slug)
    if holder is not None:
        return False, f"taken by {holder}"
    return True, "available"


def rename_workspace(ctx: Context, actor_ref: Any, ws_id: str, name: str) -> Commit[int]:
    actor = ctx.subject(actor_ref, "actor")
    ws, org = ctx.workspace(ws_id)
    ctx.authorize(actor, "rename_workspace", ws)
    slugs.check_name(name, "name", _rules_of(ctx, "name"))
    attrs = dict(ctx.index.attributes(ws))
    attrs["name"] = name
    return Commit((PutObject(ObjectRef.from_key(ws), attrs),), (org,), lambda revision: revision)


def delete_workspace(ctx: Context, actor_ref: Any, ws_id: str,
                     confirm_name: str) -> Commit[Deleted]:
    """The workspace, everything below it and every relationship naming any of them."""
    actor = ctx.subject(actor_ref, "actor")
    ws, org = ctx.workspace(ws_id)
    ctx.authorize(actor, "delete_workspace", ws)
    name = ctx.index.attributes(ws).get("name", "")
    if confirm_name != name:
        raise InvalidArgument("confirm_name", "must equal the workspace's name exactly")
    if len(ctx.children(org, ctx.rules.workspace)) <= 1:
        raise FailedPrecondition("last-workspace", f"{ws} is the last workspace of {org}; an "
                                 "organization keeps at least one")
    doomed = [*ctx.descendants(ws), ws, *_records_naming(ctx, org, ws)]
    seen: set[tuple[str, str, str]] = set()
    ops: list[Operation] = []
    for key in doomed:
        for triple in ctx.relationships_of(key):
            if triple not in seen:
                seen.add(triple)
                ops.append(DeleteRelationship(rel(*triple)))
    for key in doomed:
        if key in ctx.index.attrs:
            ops.append(DeleteObject(ObjectRef.from_key(key)))
    count = len(doomed) - len(_records_naming(ctx, org, ws))
    return Commit(tuple(ops), (org,), lambda revision: Deleted(revision, count))
