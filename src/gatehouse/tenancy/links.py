"""Access-request links: a single-use, expiring link someone outside the workspace
redeems to connect an account, without an account of their own.

Redeeming creates the connection in the link's workspace, owned by the
link's creator, with the redeemer's attributes, and marks the link used, in
one write; a second redemption (even a concurrent one) finds it used.
Deleting a link removes only the link: a connection it created stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gatehouse.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from gatehouse.graph.changes import DeleteObject, DeleteRelationship, PutObject, TouchRelationship
from gatehouse.graph.model import ObjectRef
from gatehouse.graph.schema import object_problems
from gatehouse.names import object_key, validate_id
from gatehouse.policy.model import OWNER, PARENT, AccessLinkRules
from gatehouse.tenancy import tokens
from gatehouse.tenancy.commit import Commit
from gatehouse.tenancy.context import Context, id_of
from gatehouse.tenancy.invitations import Issued
from gatehouse.tenancy.workspaces import rel

ACTIVE, USED, EXPIRED = "active", "used", "expired"
SOURCE_TYPE_MAX = 64


@dataclass(frozen=True, slots=True)
class LinkView:
    link_id: str
    source_type: str
    status: str
    created_by: str
    expires_at: int
    connection_id: str


@dataclass(frozen=True, slots=True)
class Redeemed:
    connection_id: str
    revision: int


def _rules(ctx: Context) -> AccessLinkRules:
    if ctx.rules.access_links is None:
        raise FailedPrecondition("tenancy", f"policy {ctx.policy.name!r} declares no access "
                                 "links")
    return ctx.rules.access_links


def status_of(attrs: Any, now: float) -> str:
    status = attrs.get("status", ACTIVE)
    if status == ACTIVE and attrs.get("expires_at", 0) <= now:
        return EXPIRED
    return str(status)


def create_access_link(ctx: Context, actor_ref: Any, ws_id: str,
                       source_type: str) -> Commit[Issued]:
    rules = _rules(ctx)
    actor = ctx.subject(actor_ref, "actor")
    ws, org = ctx.workspace(ws_id)
    ctx.authorize(actor, "create_access_link", ws)
    if (not source_type or len(source_type) > SOURCE_TYPE_MAX
            or not source_type.isprintable()):
        raise InvalidArgument("source_type", f"is required: 1-{SOURCE_TYPE_MAX} printable "
                              "characters")
    ctx.require_feature("create_access_link", org)
    link_id = tokens.new_id()
    token = tokens.issue(link_id)
    expires_at = int(ctx.now) + rules.ttl_seconds
    link = object_key(rules.type, link_id)
    attrs = {"source_type": source_type, "status": ACTIVE, "expires_at": expires_at,
             "secret_sha256": token.secret_sha256, "created_by": actor.key,
             "connection_id": ""}
    ops = (PutObject(ObjectRef.from_key(link), attrs), TouchRelationship(rel(link, PARENT, ws)))
    return Commit(ops, (org,), lambda revision: Issued(link_id, token.text, expires_at, revision))


def list_access_links(ctx: Context, actor_ref: Any, ws_id: str) -> list[LinkView]:
    rules = _rules(ctx)
    actor = ctx.subject(actor_ref, "actor")
    ws, _ = ctx.workspace(ws_id)
    ctx.authorize(actor, "create_access_link", ws)
    out = []
    for key in ctx.children(ws, rules.type):
        attrs = ctx.index.attributes(key)
        out.append(LinkView(id_of(key), str(attrs.get("source_type", "")),
                            status_of(attrs, ctx.now), str(attrs.get("created_by", "")),
                            int(attrs.get("expires_at", 0)),
                            str(attrs.get("connection_id", ""))))
    return out


def _connection_attributes(ctx: Context, type_: str, given: dict[str, Any],
                           source_type: str) -> dict[str, Any]:
    """The redeemer's attributes, checked against the created type (whole numbers
    read as int where the type says int); ``source_type`` comes from the link."""
    if "source_type" in given:
        raise InvalidArgument("attributes.source_type", "comes from the link")
    tdef = ctx.policy.types[type_]
    values = dict(given)
    for name, value in given.items():
        attr = tdef.attributes.get(name)
        if (attr is not None and attr.type == "int" and isinstance(value, float)
                and value.is_integer()):
            values[name] = int(value)
    values["source_type"] = source_type
    problems = object_problems(ctx.policy, ObjectRef(type_, "new"), values)
    if problems:
        raise InvalidArgument("attributes", problems[0])
    return values


def redeem_access_link(ctx: Context, token_text: str, connection_id: str,
                       attributes: dict[str, Any]) -> Commit[Redeemed]:
    rules = _rules(ctx)
    link_id, secret = tokens.parse(token_text)
    link = object_key(rules.type, link_id)
    attrs = ctx.index.attributes(link)
    ws = ctx.index.parent(link)
    if ws is None or not tokens.matches(secret, attrs.get("secret_sha256")):
        raise NotFound("token: no access link has this token")
    status = status_of(attrs, ctx.now)
    if status != ACTIVE:
        raise FailedPrecondition("access-link", f"{link} is {status}; a link connects one "
                                 "account, once, within its expiry")
    org = ctx.tenant_of(ws)
    creator = str(attrs.get("created_by", ""))
    if org is None or not ctx.index.exists(creator):
        raise NotFound(f"{link}: its workspace or creator no longer exists")
    if connection_id:
        validate_id(connection_id, "connection_id")
    else:
        connection_id = tokens.new_id()
    conn = object_key(rules.creates, connection_id)
    if ctx.index.exists(conn):
        raise AlreadyExists(f"connection_id: {conn} already exists")
    values = _connection_attributes(ctx, rules.creates, attributes,
                                    str(attrs.get("source_type", "")))
    ops = (PutObject(ObjectRef.from_key(conn), values),
           TouchRelationship(rel(conn, PARENT, ws)),
           TouchRelationship(rel(conn, OWNER, creator)),
           PutObject(ObjectRef.from_key(link), {**attrs, "status": USED,
                                                "connection_id": connection_id}))
    return Commit(ops, (org,), lambda revision: Redeemed(connection_id, revision))


def delete_access_link(ctx: Context, actor_ref: Any, link_id: str) -> Commit[int]:
    rules = _rules(ctx)
    actor = ctx.subject(actor_ref, "actor")
    validate_id(link_id, "link_id")
    link = object_key(rules.type, link_id)
    ws = ctx.index.parent(link)
    if ws is None:
        raise NotFound(f"link_id: {link} does not exist")
    org = ctx.tenant_of(ws)
    ctx.authorize(actor, "create_access_link", ws)
    ops = (DeleteRelationship(rel(link, PARENT, ws)), DeleteObject(ObjectRef.from_key(link)))
    return Commit(ops, tuple(t for t in (org,) if t), lambda revision: revision)
