"""Identifiers that try to reach into Redis keys, through every RPC that takes one.

One server on Redis (real keys, two organizations set up as in
test_tenant_keys). Each case takes one valid request and replaces one field
with a hostile value: separators of the key schema (``:``, ``#``, ``@``), hash
tag braces (``{``, ``}``), glob characters, NUL, newlines, Unicode look-alikes
of letters and of ``:``, and very long values. Where the id syntax forbids
them the answer is INVALID_ARGUMENT naming the field; free-text fields may be
accepted or refused, but never INTERNAL or UNKNOWN. Afterwards every Redis key
under the prefix has one of the shapes docs/storage.md and the usage store
document, its hash tag is an organization's (or ``_``), and no key anywhere
holds a hostile value except an event id, which is free text by design and
sits after the hash tag.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct

from gatehouse.names import ID_RE, TYPE_RE
from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import tenancy_pb2 as tpb
from gatehouse.v1 import usage_pb2 as upb
from tests.e2e.tenant_keys import start_tenant_server
from tests.e2e.test_graph_service import ref, relationship, update
from tests.e2e.test_tenant_keys import World, coupler_with_moves, uid
from tests.redis_server import RedisServer

MARK = f"zq{uuid.uuid4().hex[:6]}"
"""In every hostile value, so any key it reached can be found by a scan."""

HOSTILE = {
    "colon": f"{MARK}:x",
    "hash": f"{MARK}#x",
    "at": f"{MARK}@user:x",
    "open-brace": f"{MARK}{{x",
    "close-brace": f"{MARK}}}x",
    "hash-tag": f"{MARK}}}:{{organization:globex}}",
    "star": f"{MARK}*",
    "question": f"{MARK}?[a]",
    "nul": f"{MARK}\x00x",
    "newline": f"{MARK}\nx",
    "carriage-return": f"{MARK}\r\nx",
    "space": f"{MARK} x",
    "cyrillic-a": f"{MARK}\u0430cme",
    "fullwidth": f"{MARK}\uff41\uff43\uff4d\uff45",
    "fullwidth-colon": f"{MARK}\uff1ax",
    "zero-width": f"{MARK}\u200bx",
    "rtl-override": f"{MARK}\u202ex",
    "long": MARK + "a" * 300,
    "huge": MARK + "a" * 100_000,
}
CLEAN = {"colon", "hash", "at", "open-brace", "close-brace", "hash-tag", "star", "question"}
"""Hostile values that are printable ASCII (the others hold control, non-ASCII or too many
characters)."""

# The documented key shapes (docs/storage.md "Redis key schema"; gatehouse.usage.redis).
_ID = ID_RE.pattern
_TYPE = TYPE_RE.pattern
_OBJ = f"{_TYPE}:{_ID}"
_SCOPE = rf"\{{(?:_|organization:{_ID})\}}"
SHAPES = [re.compile(p) for p in (
    r"meta", r"rev", r"log", r"home", r"scopes",
    rf"{_SCOPE}:(?:rels|objs|rev)",
    rf"{_SCOPE}:f:{_OBJ}#{_TYPE}",
    rf"{_SCOPE}:s:{_OBJ}",
    rf"{_SCOPE}:t:{_TYPE}#{_TYPE}",
    rf"{_SCOPE}:u:{_TYPE}\.{_TYPE}",
    rf"{_SCOPE}:u:(?:all|[0-9]{{4}}-[0-9]{{2}})",
    rf"{_SCOPE}:ev:.+",
)]


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes: the first ``{...}`` if not empty."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


@dataclass(frozen=True)
class Field:
    """One request field that takes an identifier (``strict``) or free text."""

    rpc: str
    path: str
    base: Callable[[World], Message]
    """A valid request (made as the unbound caller) to put the hostile value in."""
    strict: bool = True
    """The id syntax forbids every hostile value: INVALID_ARGUMENT naming ``path``."""


def _org(w: World) -> Any:
    return w.orgs["acme"]


def _check(w: World) -> Message:
    return apb.CheckRequest(subject=ref(w.dual), action="view", resource=ref(_org(w).flow))


def _list(w: World) -> Message:
    return apb.ListAccessibleRequest(subject=ref(w.dual), resource_type="data_flow",
                                     action="view", within=ref(f"workspace:{_org(w).ws}"))


def _write(w: World) -> Message:
    o = _org(w)
    return gpb.WriteRelationshipsRequest(
        updates=[update(f"data_flow:{uid('f')}#parent@workspace:{o.ws}")],
        preconditions=[gpb.Precondition(operation=gpb.Precondition.OPERATION_MUST_EXIST,
                                        relationship=relationship(f"{o.flow}#owner@{o.member}"))])


def _delete(w: World) -> Message:
    o = _org(w)
    return gpb.DeleteRelationshipsRequest(
        filter=gpb.RelationshipFilter(resource_type="data_flow", resource_id=uid("none"),
                                      relation="owner", subject_type="user",
                                      subject_id=o.member.partition(":")[2]),
        preconditions=[gpb.Precondition(operation=gpb.Precondition.OPERATION_MUST_EXIST,
                                        relationship=relationship(f"{o.flow}#owner@{o.member}"))])


def _read(w: World) -> Message:
    o = _org(w)
    return gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
        resource_type="data_flow", resource_id=o.flow.partition(":")[2], relation="owner",
        subject_type="user", subject_id=o.member.partition(":")[2]))


def _objects(w: World) -> Message:
    attrs = Struct()
    attrs.update({"name": "n"})
    return gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
        operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref(_org(w).flow), attributes=attrs)])


def _record(w: World) -> Message:
    return upb.RecordUsageRequest(organization_id="acme", events=[upb.UsageEvent(
        event_id=uid("e"), workspace_id=_org(w).ws, metric="llm_credits", amount=1)])


def _limit_member(w: World) -> Message:
    return upb.CheckLimitRequest(organization_id="acme", add_member=upb.AddMember(
        workspace_id=_org(w).ws, email="new@acme.test"))


def _limit_account(w: World) -> Message:
    return upb.CheckLimitRequest(organization_id="acme", connect_account=upb.ConnectAccount(
        workspace_id=_org(w).ws, source_type="shopify", credential_id="c1", tenants=["t1"]))


def _limit_record(w: World) -> Message:
    return upb.CheckLimitRequest(organization_id="acme", record=upb.RecordAmount(
        workspace_id=_org(w).ws, metric="llm_credits", amount=1))


def _actor(w: World) -> Any:
    return ref(_org(w).owner)


def _ws_scope(w: World) -> Any:
    return ref(f"workspace:{_org(w).ws}")


def _invite(w: World) -> Message:
    return tpb.InviteMemberRequest(actor=_actor(w), scope=_ws_scope(w),
                                   email=f"{uid()}@acme.test", role="user")


def _set_role(w: World) -> Message:
    return tpb.SetRoleRequest(actor=_actor(w), scope=_ws_scope(w), subject=ref(w.dual),
                              role="user")


def _remove(w: World) -> Message:
    return tpb.RemoveMemberRequest(actor=_actor(w), scope=_ws_scope(w),
                                   member=ref(w.user("acme")), reassign_to=_actor(w))


def _move(w: World) -> Message:
    o = _org(w)
    return tpb.MoveResourceRequest(actor=_actor(w), resource=ref(o.flow),
                                   to_workspace_id=o.ws2)


def _domain(w: World) -> Message:
    return tpb.AddDomainRequest(actor=_actor(w), organization_id="acme",
                                domain=f"{uid('d')}.acme.test", mode=tpb.ENROLLMENT_SUGGEST,
                                role="owner")


def _create_org(w: World) -> Message:
    return tpb.CreateOrganizationRequest(actor=ref(w.user("example")),
                                         organization_id=uid("org"), name="N",
                                         plan="enterprise")


def _create_ws(w: World) -> Message:
    return tpb.CreateWorkspaceRequest(actor=_actor(w), organization_id="acme",
                                      name=f"ws {uid()}", slug=uid("s"))


def _fields() -> list[Field]:
    out: list[Field] = []

    def add(rpc: str, base: Callable[[World], Message], *paths: str, strict: bool = True
            ) -> None:
        out.extend(Field(rpc, p, base, strict) for p in paths)

    ref_paths = ("{0}.type", "{0}.id")
    add("Check", _check, "subject.type", "subject.id", "action", "resource.type",
        "resource.id")
    add("CheckBulk", lambda w: apb.CheckBulkRequest(items=[_check(w)]),
        "items[0].subject.id", "items[0].resource.type", "items[0].resource.id",
        "items[0].action")
    add("ListAccessible", _list, "subject.type", "subject.id", "resource_type", "action",
        "within.type", "within.id")
    add("ListAccessible", _list, "cursor", strict=False)
    rel = "updates[0].relationship"
    pre = "preconditions[0].relationship"
    add("WriteRelationships", _write, *(f"{r}.{p}" for r in (rel, pre) for p in (
        "resource.type", "resource.id", "relation", "subject.type", "subject.id")))
    add("DeleteRelationships", _delete, *(f"filter.{p}" for p in (
        "resource_type", "resource_id", "relation", "subject_type", "subject_id")),
        *(f"{pre}.{p}" for p in ("resource.id", "relation", "subject.id")))
    add("ReadRelationships", _read, *(f"filter.{p}" for p in (
        "resource_type", "resource_id", "relation", "subject_type", "subject_id")))
    add("ReadRelationships", _read, "cursor", strict=False)
    add("WriteObjects", _objects, "updates[0].object.type", "updates[0].object.id")
    add("WriteObjects", _objects, "updates[0].attributes.name", strict=False)
    add("ReadObject", lambda w: gpb.ReadObjectRequest(object=ref(_org(w).flow)),
        "object.type", "object.id")
    add("Watch", lambda w: gpb.WatchRequest(after_revision="1"), "after_revision")
    add("ComputeUsage", lambda w: upb.ComputeUsageRequest(organization_id="acme",
                                                          metrics=["users"]),
        "organization_id", "workspace_id", "period", "metrics[0]")
    add("RecordUsage", _record, "organization_id", "events[0].workspace_id",
        "events[0].metric")
    add("RecordUsage", _record, "events[0].event_id", "events[0].dimension", strict=False)
    add("CheckLimit", _limit_member, "organization_id", "add_member.workspace_id")
    add("CheckLimit", _limit_member, "add_member.email", strict=False)
    add("CheckLimit", _limit_account, "connect_account.workspace_id")
    add("CheckLimit", _limit_account, "connect_account.source_type",
        "connect_account.credential_id", "connect_account.tenants[0]", strict=False)
    add("CheckLimit", _limit_record, "record.workspace_id", "record.metric")
    add("CheckLimit", _limit_record, "record.dimension", strict=False)
    add("CreateOrganization", _create_org, "organization_id",
        *(p.format("actor") for p in ref_paths))
    add("CreateOrganization", _create_org, "name", "plan", strict=False)
    add("CreateWorkspace", _create_ws, "organization_id",
        *(p.format("actor") for p in ref_paths))
    add("CreateWorkspace", _create_ws, "name", "slug", strict=False)
    add("CheckSlug", lambda w: tpb.CheckSlugRequest(organization_id="acme", slug=uid("s")),
        "organization_id")
    add("CheckSlug", lambda w: tpb.CheckSlugRequest(organization_id="acme", slug=uid("s")),
        "slug", strict=False)
    add("RenameWorkspace", lambda w: tpb.RenameWorkspaceRequest(
        actor=_actor(w), workspace_id=_org(w).ws2, name=f"r {uid()}"), "workspace_id",
        "actor.id")
    add("RenameWorkspace", lambda w: tpb.RenameWorkspaceRequest(
        actor=_actor(w), workspace_id=_org(w).ws2, name=f"r {uid()}"), "name", strict=False)
    add("DeleteWorkspace", lambda w: tpb.DeleteWorkspaceRequest(
        actor=_actor(w), workspace_id=_org(w).ws2, confirm_name="no"), "workspace_id",
        "actor.id")
    add("DeleteWorkspace", lambda w: tpb.DeleteWorkspaceRequest(
        actor=_actor(w), workspace_id=_org(w).ws2, confirm_name="no"), "confirm_name",
        strict=False)
    add("InviteMember", _invite, "scope.type", "scope.id", "actor.id")
    add("InviteMember", _invite, "email", "role", strict=False)
    add("AcceptInvitation", lambda w: tpb.AcceptInvitationRequest(
        token=w.invitation("acme")[1], subject=ref(w.dual)), "subject.type", "subject.id")
    add("AcceptInvitation", lambda w: tpb.AcceptInvitationRequest(
        token="x", subject=ref(w.dual)), "token")
    for rpc, message in (("RevokeInvitation", tpb.RevokeInvitationRequest),
                         ("ResendInvitation", tpb.ResendInvitationRequest)):
        add(rpc, lambda w, m=message: m(actor=_actor(w), invitation_id=w.invitation("acme")[0]),
            "invitation_id", "actor.id")
    add("ListInvitations", lambda w: tpb.ListInvitationsRequest(actor=_actor(w),
                                                                scope=_ws_scope(w)),
        "scope.type", "scope.id", "actor.id")
    add("SetRole", _set_role, "scope.id", "subject.type", "subject.id", "actor.id")
    add("SetRole", _set_role, "role", strict=False)
    add("RemoveMember", _remove, "scope.id", "member.id", "reassign_to.id", "actor.id")
    add("CreateAccessLink", lambda w: tpb.CreateAccessLinkRequest(
        actor=_actor(w), workspace_id=_org(w).ws, source_type="shopify"), "workspace_id",
        "actor.id")
    add("CreateAccessLink", lambda w: tpb.CreateAccessLinkRequest(
        actor=_actor(w), workspace_id=_org(w).ws, source_type="shopify"), "source_type",
        strict=False)
    add("ListAccessLinks", lambda w: tpb.ListAccessLinksRequest(
        actor=_actor(w), workspace_id=_org(w).ws), "workspace_id", "actor.id")
    add("RedeemAccessLink", lambda w: tpb.RedeemAccessLinkRequest(token="x"), "token")
    add("RedeemAccessLink", lambda w: tpb.RedeemAccessLinkRequest(
        token=w.link("acme")[1]), "connection_id")
    add("DeleteAccessLink", lambda w: tpb.DeleteAccessLinkRequest(
        actor=_actor(w), link_id=w.link("acme")[0]), "link_id", "actor.id")
    add("MoveResource", _move, "resource.type", "resource.id", "to_workspace_id", "actor.id")
    add("AddDomain", _domain, "organization_id", "workspace_id", "actor.id")
    add("AddDomain", _domain, "domain", "role", strict=False)
    add("ResolveSignup", lambda w: tpb.ResolveSignupRequest(email="a@acme.test"), "email",
        strict=False)
    add("JoinByDomain", lambda w: tpb.JoinByDomainRequest(subject=ref(w.dual)),
        "subject.type", "subject.id")
    return out


FIELDS = _fields()
STREAMS = {"ListAccessible", "ReadRelationships", "Watch"}
SERVICES = {
    "Check": "authz", "CheckBulk": "authz", "ListAccessible": "authz",
    "WriteRelationships": "graph", "DeleteRelationships": "graph",
    "ReadRelationships": "graph", "WriteObjects": "graph", "ReadObject": "graph",
    "Watch": "graph", "ComputeUsage": "usage", "RecordUsage": "usage", "CheckLimit": "usage",
}


def put(msg: Message, path: str, value: str) -> None:
    """Set the string at ``path`` (``a.b[0].c``; ``attributes.<name>`` in a Struct)."""
    *parents, last = path.split(".")
    for part in parents:
        name, _, index = part.partition("[")
        msg = getattr(msg, name)
        if index:
            msg = msg[int(index.rstrip("]"))]
        if isinstance(msg, Struct):
            msg.update({last: value})
            return
    name, _, index = last.partition("[")
    if index:
        getattr(msg, name)[int(index.rstrip("]"))] = value
    else:
        setattr(msg, name, value)


@dataclass
class Env:
    world: World
    redis: redis.Redis
    prefix: str

    def call(self, rpc: str, request: Message) -> tuple[grpc.StatusCode, str, Any]:
        stub = getattr(self.world, SERVICES.get(rpc, "tenancy"))
        try:
            if rpc == "Watch":
                stream = stub.Watch(request, timeout=1)
                try:
                    next(iter(stream))
                finally:
                    stream.cancel()
                return grpc.StatusCode.OK, "", None
            if rpc in STREAMS:
                return grpc.StatusCode.OK, "", list(getattr(stub, rpc)(request, timeout=10))
            return grpc.StatusCode.OK, "", getattr(stub, rpc)(request, timeout=10)
        except grpc.RpcError as err:
            return err.code(), err.details() or "", None

    def keys(self) -> list[str]:
        return sorted(k.decode("utf-8", "backslashreplace")
                      for k in self.redis.scan_iter(match="*", count=1000))


@pytest.fixture(scope="module")
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Env]:
    policy = coupler_with_moves(tmp_path_factory.mktemp("policy"))
    server = start_tenant_server(request, tmp_path_factory, "redis", "--policy", str(policy))
    rs: RedisServer = request.getfixturevalue("redis_server")
    client = redis.Redis(host="127.0.0.1", port=rs.port)
    args = list(server.proc.args)
    prefix = str(args[args.index("--redis-prefix") + 1])
    try:
        yield Env(World(server).setup(), client, prefix)
    finally:
        client.close()
        server.stop()


class TestInjection:
    def test_every_id_field_is_covered(self) -> None:
        """Each RPC that takes an identifier has at least one case here."""
        services = [apb.DESCRIPTOR.services_by_name["AuthorizationService"],
                    gpb.DESCRIPTOR.services_by_name["GraphService"],
                    upb.DESCRIPTOR.services_by_name["UsageService"],
                    tpb.DESCRIPTOR.services_by_name["TenancyService"]]
        methods = {m.name for s in services for m in s.methods}
        assert methods == {f.rpc for f in FIELDS}

    @pytest.mark.parametrize("field", FIELDS, ids=[f"{f.rpc}:{f.path}" for f in FIELDS])
    def test_a_hostile_value_is_refused_or_harmless(self, env: Env, field: Field) -> None:
        """Every hostile value in this field: INVALID_ARGUMENT naming it where ids
        forbid it (per item in CheckBulk); never INTERNAL or UNKNOWN; a short message."""
        for kind, value in HOSTILE.items():
            request = field.base(env.world)
            put(request, field.path, value)
            code, details, resp = env.call(field.rpc, request)
            if field.rpc == "CheckBulk" and code == grpc.StatusCode.OK:
                err = resp.results[0].error
                code, details = grpc.StatusCode(
                    next(c for c in grpc.StatusCode if c.value[0] == err.code)), err.message
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), \
                (kind, details)
            assert len(details) < 1100, kind
            assert value not in details or len(value) < 80, kind
            if field.strict:
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (kind, code, details)
                assert details.startswith(field.path), (kind, details)

    def test_keys_keep_their_documented_shapes(self, env: Env) -> None:
        """After every case above: each key under the prefix has a documented shape and
        an organization's hash tag (or ``_``); no key anywhere holds a hostile value but
        an accepted event id, placed after acme's hash tag."""
        for kind in sorted(CLEAN):  # printable: event ids take them (free text)
            request = _record(env.world)
            put(request, "events[0].event_id", HOSTILE[kind])
            assert env.call("RecordUsage", request)[0] == grpc.StatusCode.OK, kind
        keys = env.keys()
        ours = [k for k in keys if k.startswith(env.prefix + ":")]
        assert len(ours) > 10
        for key in ours:
            rest = key[len(env.prefix) + 1:]
            assert any(s.fullmatch(rest) for s in SHAPES), key
            if "{" in key:
                tag = hash_tag(key)
                assert tag == "_" or re.fullmatch(f"organization:{_ID}", tag), key
        marked = [k for k in keys if MARK in k]
        for key in marked:
            assert key.startswith(f"{env.prefix}:{{organization:acme}}:ev:{MARK}"), key
            assert hash_tag(key) == "organization:acme", key
        accepted = {k.split(":ev:", 1)[1] for k in marked}
        assert {HOSTILE[k] for k in CLEAN} <= accepted <= {
            HOSTILE[k] for k in CLEAN | {"space", "cyrillic-a", "fullwidth", "fullwidth-colon",
                                     "long"}}
