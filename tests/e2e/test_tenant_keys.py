"""Tenant-bound callers over real gRPC, on the memory store and on Redis.

Two organizations, acme and globex, each with workspaces, resources, members,
invitations, access links and a domain. Every RPC is driven as data (``ROWS``):
one request per row, aimed at either organization, sent by a caller bound to
acme, one bound to both, and an unbound one. A caller may act in its own
organizations exactly as an unbound one does; elsewhere it gets
PERMISSION_DENIED naming the request field, and nothing is written. The
listings (ListAccessible, ReadRelationships, Watch, ResolveSignup, a wide
DeleteRelationships) are filtered instead, and have their own tests below.
"""

from __future__ import annotations

import base64
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from gatehouse.v1 import tenancy_pb2 as tpb
from gatehouse.v1 import tenancy_pb2_grpc as tpb_grpc
from gatehouse.v1 import usage_pb2 as upb
from gatehouse.v1 import usage_pb2_grpc as upb_grpc
from tests.conftest import ROOT, ServerProcess
from tests.e2e.tenant_keys import NEWCO, Metadata, as_key, start_tenant_server
from tests.e2e.test_graph_service import ref, relationship, update

OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
ORGS = ("acme", "globex")
KEYS: dict[str, tuple[str, ...] | None] = {
    "acme-key": ("acme",),
    "both-key": ("acme", "globex"),
    "unbound": None,
}


def uid(prefix: str = "x") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def coupler_with_moves(tmp: Path) -> Path:
    """The coupler policy, plus guards for MoveResource (coupler names none)."""
    text = (ROOT / "policies/coupler/policy.yaml").read_text()
    text = text.replace("  guards:\n", "  guards:\n    move_resource: edit\n"
                        "    move_into: workspace.manage_members\n", 1)
    folder = tmp / "coupler-moves"
    folder.mkdir()
    (folder / "policy.yaml").write_text(text)
    return folder


@dataclass
class Org:
    id: str
    owner: str
    member: str
    ws: str
    ws2: str
    flow: str


@dataclass
class World:
    """One server, its stubs, and the two organizations (set up by an unbound caller)."""

    server: ServerProcess
    orgs: dict[str, Org] = field(default_factory=dict)
    dual: str = ""

    def __post_init__(self) -> None:
        ch = self.server.channel()
        self.authz = apb_grpc.AuthorizationServiceStub(ch)
        self.graph = gpb_grpc.GraphServiceStub(ch)
        self.usage = upb_grpc.UsageServiceStub(ch)
        self.tenancy = tpb_grpc.TenancyServiceStub(ch)

    # -- set-up as the unbound caller ------------------------------------------

    def user(self, org: str) -> str:
        """A new user with an email at ``org``'s domain."""
        key = f"user:{uid('u')}"
        attrs = Struct()
        attrs.update({"email": f"{key[5:]}@{org}.test"})
        self.graph.WriteObjects(gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
            operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref(key), attributes=attrs)]),
            timeout=10)
        return key

    def email(self, user: str, org: str) -> str:
        return f"{user[5:]}@{org}.test"

    def set_role(self, org: str, user: str, role: str = "user", ws: str = "") -> None:
        o = self.orgs[org]
        self.tenancy.SetRole(tpb.SetRoleRequest(
            actor=ref(o.owner), scope=ref(f"workspace:{ws or o.ws}"), subject=ref(user),
            role=role), timeout=10)

    def flow(self, org: str) -> str:
        o = self.orgs[org]
        key = f"data_flow:{uid('f')}"
        self.graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[
            update(f"{key}#parent@workspace:{o.ws}"), update(f"{key}#owner@{o.member}")]),
            timeout=10)
        return key

    def workspace(self, org: str) -> tuple[str, str]:
        o = self.orgs[org]
        name = f"ws {uid()}"
        out = self.tenancy.CreateWorkspace(tpb.CreateWorkspaceRequest(
            actor=ref(o.owner), organization_id=org, name=name), timeout=10)
        return out.workspace_id, name

    def invitation(self, org: str) -> tuple[str, str, str]:
        """(invitation id, token, invitee) of a new pending invitation."""
        o = self.orgs[org]
        invitee = self.user(org)
        out = self.tenancy.InviteMember(tpb.InviteMemberRequest(
            actor=ref(o.owner), scope=ref(f"workspace:{o.ws}"),
            email=self.email(invitee, org), role="user"), timeout=10)
        return out.invitation_id, out.token, invitee

    def link(self, org: str) -> tuple[str, str]:
        o = self.orgs[org]
        out = self.tenancy.CreateAccessLink(tpb.CreateAccessLinkRequest(
            actor=ref(o.owner), workspace_id=o.ws, source_type="shopify"), timeout=10)
        return out.link_id, out.token

    def setup(self) -> World:
        self.dual = self.user("example")
        for org in ORGS:
            owner = self.user(org)
            member = self.user(org)
            out = self.tenancy.CreateOrganization(tpb.CreateOrganizationRequest(
                actor=ref(owner), organization_id=org, name=org.title(), plan="enterprise"),
                timeout=10)
            self.orgs[org] = Org(org, owner, member, out.workspace_id, "", "")
            self.orgs[org].ws2 = self.workspace(org)[0]
            self.set_role(org, member)
            self.set_role(org, self.dual)
            self.orgs[org].flow = self.flow(org)
            self.tenancy.AddDomain(tpb.AddDomainRequest(
                actor=ref(owner), organization_id=org, domain=f"{org}.test",
                mode=tpb.ENROLLMENT_AUTO_JOIN, workspace_id=out.workspace_id, role="user"),
                timeout=10)
        return self

    def revision(self) -> int:
        """The store's head revision, read by the unbound caller."""
        req = apb.CheckRequest(subject=ref(self.dual), action="view",
                               resource=ref(f"workspace:{self.orgs['acme'].ws}"))
        req.consistency.fully_consistent = True
        return int(self.authz.Check(req, timeout=10).revision)


@pytest.fixture(scope="module", params=["memory", "redis", "memory-aio"])
def world(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Each store on the default transport (Check answered inline on the poll thread),
    and the memory store on the public aio transport (Check by the servicer)."""
    store, _, transport = request.param.partition("-")
    policy = coupler_with_moves(tmp_path_factory.mktemp("policy"))
    server = start_tenant_server(request, tmp_path_factory, store, "--policy", str(policy),
                                 "--transport", transport or "auto")
    try:
        yield World(server).setup()
    finally:
        server.stop()


# -- the matrix ---------------------------------------------------------------------

Call = Callable[[Metadata], Any]
"""One prepared request, sent with the given caller's metadata; returns the response."""


@dataclass(frozen=True)
class Row:
    """One RPC request aimed at an organization, and what a refusal names."""

    name: str
    field: str
    build: Callable[[World, str], Call]
    """Prepare (as the unbound caller) a request aimed at the organization; return its call."""
    inside: dict[str, grpc.StatusCode] = field(default_factory=dict)
    """The status a caller allowed there gets (default OK), by target organization."""
    per_item: bool = False
    """CheckBulk: the refusal is item 1's error; the call and item 0 are answered."""


def _check(w: World, org: str) -> Call:
    req = apb.CheckRequest(subject=ref(w.dual), action="view", resource=ref(w.orgs[org].flow))
    return lambda md: w.authz.Check(req, metadata=md, timeout=10)


def _check_subject(w: World, org: str) -> Call:
    req = apb.CheckRequest(subject=ref(w.orgs[org].member), action="view",
                           resource=ref(w.orgs["acme"].flow))
    return lambda md: w.authz.Check(req, metadata=md, timeout=10)


def _check_bulk(w: World, org: str) -> Call:
    req = apb.CheckBulkRequest(items=[
        apb.CheckRequest(subject=ref(w.dual), action="view", resource=ref(w.orgs["acme"].flow)),
        apb.CheckRequest(subject=ref(w.dual), action="view", resource=ref(w.orgs[org].flow)),
    ])
    return lambda md: w.authz.CheckBulk(req, metadata=md, timeout=10)


def _list_within(w: World, org: str) -> Call:
    req = apb.ListAccessibleRequest(subject=ref(w.dual), resource_type="data_flow",
                                    action="view", within=ref(f"workspace:{w.orgs[org].ws}"))
    return lambda md: list(w.authz.ListAccessible(req, metadata=md, timeout=10))


def _list_subject(w: World, org: str) -> Call:
    req = apb.ListAccessibleRequest(subject=ref(w.orgs[org].member), resource_type="data_flow",
                                    action="view")
    return lambda md: list(w.authz.ListAccessible(req, metadata=md, timeout=10))


def _write_batch(w: World, org: str) -> Call:
    req = gpb.WriteRelationshipsRequest(updates=[
        update(f"data_flow:{uid('f')}#parent@workspace:{w.orgs['acme'].ws}"),
        update(f"data_flow:{uid('f')}#parent@workspace:{w.orgs[org].ws}"),
    ])
    return lambda md: w.graph.WriteRelationships(req, metadata=md, timeout=10)


def _write_subject(w: World, org: str) -> Call:
    req = gpb.WriteRelationshipsRequest(updates=[
        update(f"organization:acme#ai_workspace@workspace:{w.orgs[org].ws}")])
    return lambda md: w.graph.WriteRelationships(req, metadata=md, timeout=10)


def _write_precondition(w: World, org: str) -> Call:
    o = w.orgs[org]
    req = gpb.WriteRelationshipsRequest(
        updates=[update(f"data_flow:{uid('f')}#parent@workspace:{w.orgs['acme'].ws}")],
        preconditions=[gpb.Precondition(operation=gpb.Precondition.OPERATION_MUST_EXIST,
                                        relationship=relationship(f"{o.flow}#owner@{o.member}"))])
    return lambda md: w.graph.WriteRelationships(req, metadata=md, timeout=10)


def _delete_relationships(w: World, org: str) -> Call:
    flow = w.flow(org)
    req = gpb.DeleteRelationshipsRequest(filter=gpb.RelationshipFilter(
        resource_type="data_flow", resource_id=flow.partition(":")[2], relation="owner"))
    return lambda md: w.graph.DeleteRelationships(req, metadata=md, timeout=10)


def _read_resource(w: World, org: str) -> Call:
    req = gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
        resource_type="data_flow", resource_id=w.orgs[org].flow.partition(":")[2]))
    return lambda md: list(w.graph.ReadRelationships(req, metadata=md, timeout=10))


def _read_subject(w: World, org: str) -> Call:
    req = gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
        resource_type="data_flow", subject_type="user",
        subject_id=w.orgs[org].member.partition(":")[2]))
    return lambda md: list(w.graph.ReadRelationships(req, metadata=md, timeout=10))


def _put(w: World, key: str, attrs: dict[str, Any]) -> Call:
    s = Struct()
    s.update(attrs)
    req = gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
        operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref(key), attributes=s)])
    return lambda md: w.graph.WriteObjects(req, metadata=md, timeout=10)


def _write_flow_object(w: World, org: str) -> Call:
    return _put(w, w.orgs[org].flow, {"name": uid("name ")})


def _write_user_object(w: World, org: str) -> Call:
    member = w.orgs[org].member
    return _put(w, member, {"email": w.email(member, org)})


def _read_object(w: World, org: str) -> Call:
    req = gpb.ReadObjectRequest(object=ref(f"workspace:{w.orgs[org].ws}"))
    return lambda md: w.graph.ReadObject(req, metadata=md, timeout=10)


def _compute_usage(w: World, org: str) -> Call:
    req = upb.ComputeUsageRequest(organization_id=org)
    return lambda md: w.usage.ComputeUsage(req, metadata=md, timeout=10)


def _check_limit(w: World, org: str) -> Call:
    req = upb.CheckLimitRequest(organization_id=org, create_workspace=upb.CreateWorkspace())
    return lambda md: w.usage.CheckLimit(req, metadata=md, timeout=10)


def _record_usage(w: World, org: str) -> Call:
    req = upb.RecordUsageRequest(organization_id=org, events=[upb.UsageEvent(
        event_id=uid("e"), workspace_id=w.orgs[org].ws, metric="llm_credits", amount=1)])
    return lambda md: w.usage.RecordUsage(req, metadata=md, timeout=10)


def _create_organization(w: World, org: str) -> Call:
    req = tpb.CreateOrganizationRequest(actor=ref(w.user(org)), organization_id=org,
                                        name="Again", plan="enterprise")
    return lambda md: w.tenancy.CreateOrganization(req, metadata=md, timeout=10)


def _create_workspace(w: World, org: str) -> Call:
    req = tpb.CreateWorkspaceRequest(actor=ref(w.orgs[org].owner), organization_id=org,
                                     name=f"ws {uid()}")
    return lambda md: w.tenancy.CreateWorkspace(req, metadata=md, timeout=10)


def _create_workspace_actor(w: World, org: str) -> Call:
    req = tpb.CreateWorkspaceRequest(actor=ref(w.orgs[org].owner), organization_id="acme",
                                     name=f"ws {uid()}")
    return lambda md: w.tenancy.CreateWorkspace(req, metadata=md, timeout=10)


def _check_slug(w: World, org: str) -> Call:
    req = tpb.CheckSlugRequest(organization_id=org, slug=uid("slug-"))
    return lambda md: w.tenancy.CheckSlug(req, metadata=md, timeout=10)


def _rename_workspace(w: World, org: str) -> Call:
    o = w.orgs[org]
    req = tpb.RenameWorkspaceRequest(actor=ref(o.owner), workspace_id=o.ws2,
                                     name=f"renamed {uid()}")
    return lambda md: w.tenancy.RenameWorkspace(req, metadata=md, timeout=10)


def _delete_workspace(w: World, org: str) -> Call:
    ws, name = w.workspace(org)
    req = tpb.DeleteWorkspaceRequest(actor=ref(w.orgs[org].owner), workspace_id=ws,
                                     confirm_name=name)
    return lambda md: w.tenancy.DeleteWorkspace(req, metadata=md, timeout=10)


def _invite_member(w: World, org: str) -> Call:
    o = w.orgs[org]
    req = tpb.InviteMemberRequest(actor=ref(o.owner), scope=ref(f"workspace:{o.ws}"),
                                  email=f"{uid()}@{org}.test", role="user")
    return lambda md: w.tenancy.InviteMember(req, metadata=md, timeout=10)


def _accept_invitation(w: World, org: str) -> Call:
    _, token, invitee = w.invitation(org)
    req = tpb.AcceptInvitationRequest(token=token, subject=ref(invitee))
    return lambda md: w.tenancy.AcceptInvitation(req, metadata=md, timeout=10)


def _revoke_invitation(w: World, org: str) -> Call:
    inv, _, _ = w.invitation(org)
    req = tpb.RevokeInvitationRequest(actor=ref(w.orgs[org].owner), invitation_id=inv)
    return lambda md: w.tenancy.RevokeInvitation(req, metadata=md, timeout=10)


def _resend_invitation(w: World, org: str) -> Call:
    inv, _, _ = w.invitation(org)
    req = tpb.ResendInvitationRequest(actor=ref(w.orgs[org].owner), invitation_id=inv)
    return lambda md: w.tenancy.ResendInvitation(req, metadata=md, timeout=10)


def _list_invitations(w: World, org: str) -> Call:
    o = w.orgs[org]
    req = tpb.ListInvitationsRequest(actor=ref(o.owner), scope=ref(f"workspace:{o.ws}"))
    return lambda md: w.tenancy.ListInvitations(req, metadata=md, timeout=10)


def _set_role(w: World, org: str) -> Call:
    o = w.orgs[org]
    req = tpb.SetRoleRequest(actor=ref(o.owner), scope=ref(f"workspace:{o.ws}"),
                             subject=ref(w.user(org)), role="guest")
    return lambda md: w.tenancy.SetRole(req, metadata=md, timeout=10)


def _remove_member(w: World, org: str) -> Call:
    o = w.orgs[org]
    leaving = w.user(org)
    w.set_role(org, leaving, "guest")
    req = tpb.RemoveMemberRequest(actor=ref(o.owner), scope=ref(f"workspace:{o.ws}"),
                                  member=ref(leaving), reassign_to=ref(o.owner))
    return lambda md: w.tenancy.RemoveMember(req, metadata=md, timeout=10)


def _create_access_link(w: World, org: str) -> Call:
    o = w.orgs[org]
    req = tpb.CreateAccessLinkRequest(actor=ref(o.owner), workspace_id=o.ws,
                                      source_type="shopify")
    return lambda md: w.tenancy.CreateAccessLink(req, metadata=md, timeout=10)


def _list_access_links(w: World, org: str) -> Call:
    o = w.orgs[org]
    req = tpb.ListAccessLinksRequest(actor=ref(o.owner), workspace_id=o.ws)
    return lambda md: w.tenancy.ListAccessLinks(req, metadata=md, timeout=10)


def _redeem_access_link(w: World, org: str) -> Call:
    _, token = w.link(org)
    req = tpb.RedeemAccessLinkRequest(token=token)
    return lambda md: w.tenancy.RedeemAccessLink(req, metadata=md, timeout=10)


def _delete_access_link(w: World, org: str) -> Call:
    link, _ = w.link(org)
    req = tpb.DeleteAccessLinkRequest(actor=ref(w.orgs[org].owner), link_id=link)
    return lambda md: w.tenancy.DeleteAccessLink(req, metadata=md, timeout=10)


def _move_resource(w: World, org: str) -> Call:
    o = w.orgs[org]
    req = tpb.MoveResourceRequest(actor=ref(o.owner), resource=ref(w.flow(org)),
                                  to_workspace_id=o.ws2)
    return lambda md: w.tenancy.MoveResource(req, metadata=md, timeout=10)


def _add_domain(w: World, org: str) -> Call:
    req = tpb.AddDomainRequest(actor=ref(w.orgs[org].owner), organization_id=org,
                               domain=f"{uid('d')}.{org}.test", mode=tpb.ENROLLMENT_SUGGEST,
                               role="owner")
    return lambda md: w.tenancy.AddDomain(req, metadata=md, timeout=10)


def _join_by_domain(w: World, org: str) -> Call:
    req = tpb.JoinByDomainRequest(subject=ref(w.user(org)))
    return lambda md: w.tenancy.JoinByDomain(req, metadata=md, timeout=10)


ROWS = [
    Row("Check", "resource", _check),
    Row("Check.subject", "subject", _check_subject),
    Row("CheckBulk", "items[1].resource", _check_bulk, per_item=True),
    Row("ListAccessible.within", "within", _list_within),
    Row("ListAccessible.subject", "subject", _list_subject),
    Row("WriteRelationships", "updates[1].relationship.resource", _write_batch),
    # Relationships never cross tenants: the store refuses what the key may name.
    Row("WriteRelationships.subject", "updates[0].relationship.subject", _write_subject,
        inside={"globex": grpc.StatusCode.FAILED_PRECONDITION}),
    Row("WriteRelationships.precondition", "preconditions[0].relationship.resource",
        _write_precondition),
    Row("DeleteRelationships", "filter.resource_id", _delete_relationships),
    Row("ReadRelationships.resource", "filter.resource_id", _read_resource),
    Row("ReadRelationships.subject", "filter.subject_id", _read_subject),
    Row("WriteObjects", "updates[0].object", _write_flow_object),
    Row("WriteObjects.user", "updates[0].object", _write_user_object),
    Row("ReadObject", "object", _read_object),
    Row("ComputeUsage", "organization_id", _compute_usage),
    Row("CheckLimit", "organization_id", _check_limit),
    Row("RecordUsage", "organization_id", _record_usage),
    # Both exist already: a caller allowed to name them learns just that.
    Row("CreateOrganization", "organization_id", _create_organization,
        inside={o: grpc.StatusCode.ALREADY_EXISTS for o in ORGS}),
    Row("CreateWorkspace", "organization_id", _create_workspace),
    # globex's owner may not create workspaces in acme: the policy says so.
    Row("CreateWorkspace.actor", "actor", _create_workspace_actor,
        inside={"globex": DENIED}),
    Row("CheckSlug", "organization_id", _check_slug),
    Row("RenameWorkspace", "workspace_id", _rename_workspace),
    Row("DeleteWorkspace", "workspace_id", _delete_workspace),
    Row("InviteMember", "scope", _invite_member),
    Row("AcceptInvitation", "token", _accept_invitation),
    Row("RevokeInvitation", "invitation_id", _revoke_invitation),
    Row("ResendInvitation", "invitation_id", _resend_invitation),
    Row("ListInvitations", "scope", _list_invitations),
    Row("SetRole", "scope", _set_role),
    Row("RemoveMember", "scope", _remove_member),
    Row("CreateAccessLink", "workspace_id", _create_access_link),
    Row("ListAccessLinks", "workspace_id", _list_access_links),
    Row("RedeemAccessLink", "token", _redeem_access_link),
    Row("DeleteAccessLink", "link_id", _delete_access_link),
    Row("MoveResource", "resource", _move_resource),
    Row("AddDomain", "organization_id", _add_domain),
    Row("JoinByDomain", "subject", _join_by_domain),
]

# Every RPC of the four services appears in the matrix or in a filtering test below.
FILTERED = {"ListAccessible", "ReadRelationships", "Watch", "ResolveSignup",
            "DeleteRelationships"}


def _outcome(call: Call, md: Metadata) -> tuple[grpc.StatusCode, str, Any]:
    try:
        return OK, "", call(md)
    except grpc.RpcError as err:
        return err.code(), err.details() or "", None


class TestMatrix:
    def test_callers_are_real_api_keys(self, world: World) -> None:
        """The matrix runs through the server's own authentication: a call without a
        key, or with a key not in the file, is refused before any handler."""
        raw = grpc.insecure_channel(world.server.address)
        try:
            stub = apb_grpc.AuthorizationServiceStub(raw)
            req = apb.CheckRequest(subject=ref(world.dual), action="view",
                                   resource=ref(world.orgs["acme"].flow))
            for md in ((), (("authorization", "Bearer gh_not_a_key"),)):
                code, _, _ = _outcome(lambda m: stub.Check(req, metadata=m, timeout=10), md)
                assert code == grpc.StatusCode.UNAUTHENTICATED
            code, _, resp = _outcome(lambda m: stub.Check(req, metadata=m, timeout=10),
                                     as_key(["acme"]))
            assert code == OK and resp.decision == apb.DECISION_ALLOW
        finally:
            raw.close()
        assert '"api keys loaded"' in world.server.logs()

    def test_every_rpc_is_covered(self) -> None:
        """The table names every method of the four services (a new RPC needs a row)."""
        services = [apb.DESCRIPTOR.services_by_name["AuthorizationService"],
                    gpb.DESCRIPTOR.services_by_name["GraphService"],
                    upb.DESCRIPTOR.services_by_name["UsageService"],
                    tpb.DESCRIPTOR.services_by_name["TenancyService"]]
        methods = {m.name for s in services for m in s.methods}
        covered = {r.name.partition(".")[0] for r in ROWS} | FILTERED
        assert methods <= covered, methods - covered

    @pytest.mark.parametrize("key", list(KEYS))
    @pytest.mark.parametrize("target", ORGS)
    @pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
    def test_request(self, world: World, row: Row, target: str, key: str) -> None:
        """Inside its organizations a bound caller is answered as an unbound one;
        outside it gets PERMISSION_DENIED naming the field, and nothing is written."""
        organizations = KEYS[key]
        call = row.build(world, target)
        before = world.revision()
        code, details, resp = _outcome(call, as_key(organizations))
        if organizations is None or target in organizations:
            assert code == row.inside.get(target, OK), details
            if row.per_item and code == OK:
                assert [r.WhichOneof("result") for r in resp.results] == ["response"] * 2
            return
        if row.per_item:
            assert code == OK, details
            first, second = resp.results
            assert first.WhichOneof("result") == "response"
            assert second.error.code == DENIED.value[0]
            details = second.error.message
        else:
            assert code == DENIED, details
        assert details.startswith(f"{row.field}: "), details
        if row.field != "organization_id":  # the caller named no other organization
            assert target not in details, details
        assert world.revision() == before


# -- users, objects that do not exist, new organizations -----------------------------


class TestNames:
    def test_a_user_counts_where_they_hold_a_relationship(self, world: World) -> None:
        """A user with no relationship in the key's organizations cannot be named; one
        in both organizations can; an unbound caller names anyone."""
        acme = as_key(["acme"])
        newcomer = world.user("acme")
        resource = ref(world.orgs["acme"].flow)
        for subject, code in ((newcomer, DENIED), (world.orgs["globex"].owner, DENIED),
                              (world.dual, OK), (world.orgs["acme"].member, OK)):
            req = apb.CheckRequest(subject=ref(subject), action="view", resource=resource)
            got, details, _ = _outcome(
                lambda md, r=req: world.authz.Check(r, metadata=md, timeout=10), acme)
            assert got == code, (subject, details)
            if code == DENIED:
                assert details == (f"subject: {subject} holds no relationship in an "
                                   "organization this key may use")
        unbound = world.authz.Check(apb.CheckRequest(subject=ref(newcomer), action="view",
                                                     resource=resource), timeout=10)
        assert unbound.decision == apb.DECISION_DENY

    def test_an_unknown_object_is_outside_like_another_tenants(self, world: World) -> None:
        """A resource that does not exist is refused exactly like one in globex, so a
        bound caller cannot tell which ids exist elsewhere."""
        details = []
        for resource in ("data_flow:nowhere", world.orgs["globex"].flow):
            req = apb.CheckRequest(subject=ref(world.dual), action="view",
                                   resource=ref(resource))
            code, text, _ = _outcome(
                lambda md, r=req: world.authz.Check(r, metadata=md, timeout=10),
                as_key(["acme"]))
            assert code == DENIED
            details.append(text.replace(resource, "X"))
        assert details[0] == details[1] == "resource: the organization of X is not one " \
                                           "this key may use"

    def test_bad_input_is_invalid_before_it_is_outside(self, world: World) -> None:
        """A malformed name is INVALID_ARGUMENT for a bound caller too."""
        req = apb.CheckRequest(subject=ref("user:"), action="view",
                               resource=ref(world.orgs["globex"].flow))
        code, details, _ = _outcome(
            lambda md: world.authz.Check(req, metadata=md, timeout=10), as_key(["acme"]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("subject.id")

    def test_a_key_creates_only_its_own_organizations(self, world: World) -> None:
        """CreateOrganization works for an id the key is bound to and nothing else (not a
        generated id either)."""
        fresh = NEWCO
        key = as_key(["acme", fresh])
        actor = world.user("example")
        for org_id, code in (("initech", DENIED), ("", DENIED), (fresh, OK)):
            req = tpb.CreateOrganizationRequest(actor=ref(actor), organization_id=org_id,
                                                name="New", plan="enterprise")
            got, details, out = _outcome(
                lambda md, r=req: world.tenancy.CreateOrganization(r, metadata=md,
                                                                   timeout=10), key)
            assert got == code, details
            if code == DENIED:
                assert details.startswith("organization_id: ")
        assert out.organization_id == fresh

    def test_a_used_id_is_refused_without_naming_its_organization(self, world: World) -> None:
        """An id once placed in globex (now without relationships, so the index has
        forgotten it) cannot be placed in acme; the refusal does not say where it is."""
        flow = world.flow("globex")
        o = world.orgs["globex"]
        world.graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[
            update(f"{flow}#parent@workspace:{o.ws}", gpb.RelationshipUpdate.OPERATION_DELETE),
            update(f"{flow}#owner@{o.member}", gpb.RelationshipUpdate.OPERATION_DELETE)]),
            timeout=10)
        req = gpb.WriteRelationshipsRequest(updates=[
            update(f"{flow}#parent@workspace:{world.orgs['acme'].ws}")])
        before = world.revision()
        code, details, _ = _outcome(
            lambda md: world.graph.WriteRelationships(req, metadata=md, timeout=10),
            as_key(["acme"]))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.startswith("tenant-boundary: ") and "globex" not in details
        assert world.revision() == before
        code, details, _ = _outcome(
            lambda md: world.graph.WriteRelationships(req, metadata=md, timeout=10),
            as_key(None))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "organization:globex" in details

    def test_a_bound_key_deletes_no_user_object(self, world: World) -> None:
        """A user object belongs to every organization it is in: a bound key may update
        one of its own members but never delete it."""
        member = world.orgs["acme"].member
        req = gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
            operation=gpb.ObjectUpdate.OPERATION_DELETE, object=ref(member))])
        code, details, _ = _outcome(
            lambda md: world.graph.WriteObjects(req, metadata=md, timeout=10), as_key(["acme"]))
        assert code == DENIED and details.startswith("updates[0].object: ")

    def test_a_new_object_is_in_the_tenant_its_parent_puts_it_in(self, world: World) -> None:
        """A flow created with its parent in the same batch is acme's; its later
        relationships and attributes are acme's to write."""
        acme = as_key(["acme"])
        flow = f"data_flow:{uid('f')}"
        world.graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[
            update(f"{flow}#owner@{world.dual}"),
            update(f"{flow}#parent@workspace:{world.orgs['acme'].ws}")]),
            metadata=acme, timeout=10)
        _put(world, flow, {"name": "mine"})(acme)
        req = gpb.ReadObjectRequest(object=ref(flow))
        req.consistency.fully_consistent = True
        got = world.graph.ReadObject(req, metadata=acme, timeout=10)
        assert dict(got.attributes) == {"name": "mine"}


# -- filtered listings -----------------------------------------------------------------


def _listed(world: World, md: Metadata, **kw: Any) -> set[str]:
    req = apb.ListAccessibleRequest(resource_type="data_flow", action="view", **kw)
    req.consistency.fully_consistent = True
    ids: set[str] = set()
    for msg in world.authz.ListAccessible(req, metadata=md, timeout=10):
        ids.update(msg.resource_ids)
        if msg.revision:
            assert msg.complete
    return ids


def _read(world: World, md: Metadata, **kw: Any) -> set[str]:
    out: set[str] = set()
    cursor = ""
    while True:
        req = gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(**kw), cursor=cursor,
                                           page_size=2)
        req.consistency.fully_consistent = True
        for msg in world.graph.ReadRelationships(req, metadata=md, timeout=10):
            if msg.HasField("relationship"):
                r = msg.relationship
                out.add(f"{r.resource.type}:{r.resource.id}#{r.relation}@"
                        f"{r.subject.type}:{r.subject.id}")
            elif msg.complete:
                return out
            else:
                cursor = msg.next_cursor


class TestFiltered:
    def test_list_accessible_keeps_the_keys_organizations(self, world: World) -> None:
        """ListAccessible for a user in both organizations: each key sees its own flows."""
        everything = _listed(world, as_key(None), subject=ref(world.dual))
        acme = _listed(world, as_key(["acme"]), subject=ref(world.dual))
        both = _listed(world, as_key(ORGS), subject=ref(world.dual))
        flows = {o: o_.flow.partition(":")[2] for o, o_ in world.orgs.items()}
        assert flows["acme"] in acme and flows["globex"] not in acme
        assert both == everything >= set(flows.values())
        assert acme == _listed(world, as_key(None), subject=ref(world.dual),
                               within=ref("organization:acme"))

    def test_pages_and_cursors_hold_no_other_organizations_ids(self, world: World) -> None:
        """Walking ListAccessible and ReadRelationships one item per page as an acme key
        yields acme's items only, and no cursor (readable base64) carries globex's."""
        for _ in range(3):
            world.flow("globex")
            world.flow("acme")
        theirs = _listed(world, as_key(["globex"]), subject=ref(world.dual))
        acme = _listed(world, as_key(["acme"]), subject=ref(world.dual))
        assert theirs and acme and not theirs & acme
        seen: list[str] = []
        cursors: list[str] = []
        cursor = ""
        while True:
            req = apb.ListAccessibleRequest(subject=ref(world.dual), resource_type="data_flow",
                                            action="view", page_size=1, cursor=cursor)
            msgs = list(world.authz.ListAccessible(req, metadata=as_key(["acme"]),
                                                    timeout=10))
            seen += [i for m in msgs for i in m.resource_ids]
            cursor = msgs[-1].next_cursor
            if msgs[-1].complete:
                break
            cursors.append(cursor)
        assert set(seen) == acme and len(seen) == len(acme)
        cursor = ""
        while True:
            rreq = gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
                resource_type="data_flow", relation="parent"), page_size=1, cursor=cursor)
            msgs = list(world.graph.ReadRelationships(rreq, metadata=as_key(["acme"]),
                                                      timeout=10))
            assert all(m.relationship.resource.id not in theirs for m in msgs)
            if msgs[-1].complete:
                break
            cursor = msgs[-1].next_cursor
            cursors.append(cursor)
        for text in cursors:
            plain = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            assert not any(t in plain for t in theirs), plain

    def test_read_relationships_keeps_the_keys_organizations(self, world: World) -> None:
        """Reading by type, or by a user in both organizations, returns exactly acme's
        relationships to an acme key, page after page; both organizations' to a key
        bound to both."""
        parents = _read(world, as_key(None), resource_type="workspace", relation="parent")
        ws_of = {org: {r.partition("#")[0] for r in parents
                       if r.endswith(f"@organization:{org}")} for org in ORGS}
        assert len(ws_of["acme"]) >= 2
        for kw in ({"resource_type": "workspace"},
                   {"resource_type": "workspace", "subject_type": "user",
                    "subject_id": world.dual.partition(":")[2]}):
            everything = _read(world, as_key(None), **kw)
            acme = {r for r in everything if r.partition("#")[0] in ws_of["acme"]}
            both = {r for r in everything
                    if r.partition("#")[0] in ws_of["acme"] | ws_of["globex"]}
            assert acme and acme < both
            assert _read(world, as_key(["acme"]), **kw) == acme
            assert _read(world, as_key(ORGS), **kw) == both

    def test_wide_delete_removes_only_the_keys_relationships(self, world: World) -> None:
        """DeleteRelationships by a filter matching both organizations deletes acme's
        matches for an acme key and leaves globex's."""
        shared = world.user("example")
        for org in ORGS:
            world.set_role(org, shared, "guest")
        out = world.graph.DeleteRelationships(gpb.DeleteRelationshipsRequest(
            filter=gpb.RelationshipFilter(resource_type="workspace", subject_type="user",
                                          subject_id=shared.partition(":")[2])),
            metadata=as_key(["acme"]), timeout=10)
        assert out.deleted == 1
        left = _read(world, as_key(None), resource_type="workspace", subject_type="user",
                     subject_id=shared.partition(":")[2])
        assert left == {f"workspace:{world.orgs['globex'].ws}#guest@{shared}"}

    def test_resolve_signup_shows_only_the_keys_organizations(self, world: World) -> None:
        """A globex address resolves to globex for an unbound or both-key caller and to
        nothing for an acme key."""
        req = tpb.ResolveSignupRequest(email="someone@globex.test")
        seen = {name: [m.organization_id for m in world.tenancy.ResolveSignup(
                    req, metadata=as_key(orgs), timeout=10).matches]
                for name, orgs in KEYS.items()}
        assert seen == {"acme-key": [], "both-key": ["globex"], "unbound": ["globex"]}

    def test_watch_streams_only_the_keys_changes(self, world: World) -> None:
        """A watcher bound to acme sees acme's changes only: not globex's, nor a user
        object that holds nothing in acme."""
        start = world.revision()
        got: queue.Queue[gpb.WatchResponse] = queue.Queue()
        call = world.graph.Watch(gpb.WatchRequest(after_revision=str(start)),
                                 metadata=as_key(["acme"]))

        def pump() -> None:
            try:
                for msg in call:
                    got.put(msg)
            except grpc.RpcError:
                pass

        threading.Thread(target=pump, daemon=True).start()
        try:
            world.flow("globex")
            first = world.flow("acme")
            world.user("acme")
            world.flow("globex")
            second = world.flow("acme")
            seen = []
            for _ in range(2):
                msg = got.get(timeout=10)
                assert not msg.object_updates
                seen.append({f"{u.relationship.resource.type}:{u.relationship.resource.id}"
                             for u in msg.relationship_updates})
            assert seen == [{first}, {second}]
        finally:
            call.cancel()
