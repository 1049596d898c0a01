"""TenancyService over real gRPC for the agency policy (seed 002), on the memory store
and on Redis: staff and clients, workspaces per plan, slugs per account, client
invitations, and removing a client."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import tenancy_pb2 as pb
from gatehouse.v1 import usage_pb2 as upb
from tests.conftest import ServerProcess, start_on_store
from tests.e2e.test_graph_service import ref
from tests.e2e.test_tenancy import Client, refused

WEEK = 7 * 86400


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    proc = start_on_store(request, tmp_path_factory, request.param, "--policy",
                          "policies/agency")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def c(server: ServerProcess) -> Client:
    return Client(server)


# -- helpers -------------------------------------------------------------------------


def agency(c: Client, plan: str = "growth") -> tuple[str, str, str]:
    """A new agency account: (owner, organization id, primary workspace id)."""
    owner = c.user()
    org, primary = c.org(owner, plan=plan)
    return owner, org, primary


def staff(c: Client, org: str, role: str, email: str | None = None) -> str:
    """A new person holding account role ``role`` on ``org``."""
    person = c.user(email)
    c.write(f"organization:{org}#{role}@{person}")
    return person


def workspace_count(c: Client, org: str) -> int:
    usage = c.usage.ComputeUsage(upb.ComputeUsageRequest(
        organization_id=org, metrics=["workspaces"],
        consistency=apb.Consistency(fully_consistent=True)), timeout=10)
    return int({m.name: m.value for m in usage.metrics}["workspaces"])


def held(c: Client, subject: str) -> set[str]:
    """Every organization or workspace role ``subject`` holds, read fully consistent."""
    s_type, _, s_id = subject.partition(":")
    found = set()
    for r_type in ("organization", "workspace"):
        req = gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
            resource_type=r_type, subject_type=s_type, subject_id=s_id))
        req.consistency.fully_consistent = True
        for msg in c.graph.ReadRelationships(req, timeout=10):
            if msg.HasField("relationship"):
                r = msg.relationship
                found.add(f"{r.resource.type}:{r.resource.id}#{r.relation}")
    return found


def statuses(c: Client, actor: str, scope: str) -> dict[str, int]:
    listed = c.tenancy.ListInvitations(pb.ListInvitationsRequest(
        actor=ref(actor), scope=ref(scope)), timeout=10)
    return {i.invitation_id: i.status for i in listed.invitations}


def create(c: Client, actor: str, org: str, name: str, slug: str = ""
           ) -> pb.CreateWorkspaceResponse:
    return c.tenancy.CreateWorkspace(pb.CreateWorkspaceRequest(
        actor=ref(actor), organization_id=org, name=name, slug=slug), timeout=30)


def race(n: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(0..n-1)`` from n threads released together; each result is the
    response or the refusal (``grpc.RpcError``)."""
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call(i)
        except grpc.RpcError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None for r in results), "a racer did not finish"
    return results


# -- workspaces ----------------------------------------------------------------------


class TestCreatingWorkspaces:
    def test_owners_and_admins_create_workspaces_and_members_may_not(self, c: Client) -> None:
        """create_workspace needs an owner or admin account role: a member is
        PERMISSION_DENIED naming the action and the account, and nothing is created."""
        owner, org, _ = agency(c, "growth")
        admin, member = staff(c, org, "admin"), staff(c, org, "member")
        create(c, owner, org, "By the owner")
        create(c, admin, org, "By an admin")
        assert workspace_count(c, org) == 3
        err = refused(c.tenancy.CreateWorkspace, pb.CreateWorkspaceRequest(
            actor=ref(member), organization_id=org, name="By a member", slug="by-a-member"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "create_workspace" in err.details() and f"organization:{org}" in err.details()
        assert workspace_count(c, org) == 3
        assert c.tenancy.CheckSlug(pb.CheckSlugRequest(organization_id=org, slug="by-a-member"),
                                   timeout=10).available
        # The member still builds inside the existing workspaces.
        ws = create(c, admin, org, "Client X").workspace_id
        assert c.allowed(member, "build", f"workspace:{ws}")

    @pytest.mark.parametrize(("plan", "limit"), [("starter", 1), ("growth", 5), ("scale", 25)])
    def test_each_plan_allows_its_number_of_workspaces(self, c: Client, plan: str,
                                                        limit: int) -> None:
        """Starter 1, growth 5, scale 25: up to the limit succeeds, one more is
        FAILED_PRECONDITION naming the metric, the limit and the plan."""
        owner, org, _ = agency(c, plan)
        for i in range(limit - 1):
            create(c, owner, org, f"Client {i}")
        assert workspace_count(c, org) == limit
        err = refused(c.tenancy.CreateWorkspace, pb.CreateWorkspaceRequest(
            actor=ref(owner), organization_id=org, name="One too many"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (f"workspaces: {limit + 1} would exceed the limit of {limit} on plan "
                f"'{plan}'") in err.details()
        assert workspace_count(c, org) == limit

    @pytest.mark.parametrize("stored_plan", [None, "enterprise"])
    def test_an_unresolved_plan_allows_one_workspace(self, c: Client,
                                                      stored_plan: str | None) -> None:
        """An account created without a plan, or whose stored plan names no plan of the
        policy, gets the most restrictive tier: its one workspace, no second."""
        owner = c.user()
        out = c.tenancy.CreateOrganization(pb.CreateOrganizationRequest(
            actor=ref(owner), name="Unbilled"), timeout=10)
        org = out.organization_id
        if stored_plan is not None:
            attrs = Struct()
            attrs.update({"name": "Unbilled", "plan": stored_plan})
            c.graph.WriteObjects(gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
                operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref(f"organization:{org}"),
                attributes=attrs)]), timeout=10)
        usage = c.usage.ComputeUsage(upb.ComputeUsageRequest(
            organization_id=org, consistency=apb.Consistency(fully_consistent=True)),
            timeout=10)
        assert (usage.plan, usage.plan_is_fallback) == ("starter", stored_plan is not None)
        err = refused(c.tenancy.CreateWorkspace, pb.CreateWorkspaceRequest(
            actor=ref(owner), organization_id=org, name="Second client"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "workspaces: 2 would exceed the limit of 1 on plan 'starter'" in err.details()
        assert workspace_count(c, org) == 1

    def test_racing_creates_at_the_limit_stop_exactly_at_it(self, c: Client) -> None:
        """Twelve creates released together on growth (5, one used): exactly four succeed,
        the other eight are FAILED_PRECONDITION naming the limit, five workspaces remain."""
        owner, org, _ = agency(c, "growth")
        admin = staff(c, org, "admin")
        actors = [owner, admin]
        results = race(12, lambda i: create(c, actors[i % 2], org, f"Racer {i}",
                                            f"racer-{i}"))
        ok = [r for r in results if isinstance(r, pb.CreateWorkspaceResponse)]
        errors = [r for r in results if isinstance(r, grpc.RpcError)]
        assert len(ok) == 4, results
        assert len(errors) == 8
        for err in errors:
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
            assert ("workspaces: 6 would exceed the limit of 5 on plan 'growth'"
                    in err.details())
        assert workspace_count(c, org) == 5
        assert len({r.slug for r in ok}) == 4


class TestSlugsAndNames:
    def test_a_slug_is_unique_per_account_and_shared_across_accounts(self, c: Client) -> None:
        """Two accounts may both use "dashboard"; a second "dashboard" on one account is
        ALREADY_EXISTS naming the slug, and the first keeps it."""
        owner_a, org_a, _ = agency(c, "growth")
        owner_b, org_b, _ = agency(c, "growth")
        first = create(c, owner_a, org_a, "Dashboard", "dashboard")
        other = create(c, owner_b, org_b, "Dashboard", "dashboard")
        assert first.slug == other.slug == "dashboard"
        err = refused(c.tenancy.CreateWorkspace, pb.CreateWorkspaceRequest(
            actor=ref(owner_a), organization_id=org_a, name="Another", slug="dashboard"))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        assert err.details().startswith("slug:") and "'dashboard'" in err.details()
        assert workspace_count(c, org_a) == 2
        taken = c.tenancy.CheckSlug(pb.CheckSlugRequest(organization_id=org_a,
                                                        slug="dashboard"), timeout=10)
        assert not taken.available and f"workspace:{first.workspace_id}" in taken.reason

    def test_rename_changes_the_name_and_keeps_the_slug(self, c: Client) -> None:
        """An admin renames; the slug stays; a member is PERMISSION_DENIED naming
        rename_workspace and the name stays."""
        owner, org, _ = agency(c, "growth")
        admin, member = staff(c, org, "admin"), staff(c, org, "member")
        ws = create(c, owner, org, "Acme Inc.").workspace_id
        c.tenancy.RenameWorkspace(pb.RenameWorkspaceRequest(
            actor=ref(admin), workspace_id=ws, name="Acme Incorporated"), timeout=10)
        assert c.attributes(f"workspace:{ws}") == {"name": "Acme Incorporated",
                                                   "slug": "acme-inc"}
        err = refused(c.tenancy.RenameWorkspace, pb.RenameWorkspaceRequest(
            actor=ref(member), workspace_id=ws, name="Hijacked"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "rename_workspace" in err.details() and f"workspace:{ws}" in err.details()
        assert c.attributes(f"workspace:{ws}")["name"] == "Acme Incorporated"

    def test_delete_needs_the_exact_name(self, c: Client) -> None:
        """A confirm_name differing in case or spacing is INVALID_ARGUMENT naming the field
        and deletes nothing; a member is PERMISSION_DENIED; the exact name deletes the
        workspace with its workflows."""
        owner, org, _ = agency(c, "growth")
        member = staff(c, org, "member")
        ws = create(c, owner, org, "Acme Inc").workspace_id
        flow = f"workflow:w{uuid.uuid4().hex[:8]}"
        c.write(f"{flow}#parent@workspace:{ws}", f"{flow}#owner@{member}")
        for wrong in ("acme inc", "Acme Inc ", "Acme", ""):
            err = refused(c.tenancy.DeleteWorkspace, pb.DeleteWorkspaceRequest(
                actor=ref(owner), workspace_id=ws, confirm_name=wrong))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, wrong
            assert err.details().startswith("confirm_name:")
        err = refused(c.tenancy.DeleteWorkspace, pb.DeleteWorkspaceRequest(
            actor=ref(member), workspace_id=ws, confirm_name="Acme Inc"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "delete_workspace" in err.details()
        assert c.exists(f"workspace:{ws}") and c.owner_of(flow) == {member}
        out = c.tenancy.DeleteWorkspace(pb.DeleteWorkspaceRequest(
            actor=ref(owner), workspace_id=ws, confirm_name="Acme Inc"), timeout=10)
        assert out.deleted == 2  # the workspace and its workflow
        assert not c.exists(f"workspace:{ws}") and c.owner_of(flow) == set()
        assert workspace_count(c, org) == 1


# -- invitations and clients ---------------------------------------------------------


class TestInvitations:
    def test_workspace_invitations_grant_client_only(self, c: Client) -> None:
        """At workspace scope every role but client is INVALID_ARGUMENT naming the role
        field, and no invitation is recorded; any staff member may invite a client."""
        owner, org, ws = agency(c, "growth")
        scope = f"workspace:{ws}"
        for role in ("owner", "admin", "member", "viewer", ""):
            err = refused(c.tenancy.InviteMember, pb.InviteMemberRequest(
                actor=ref(owner), scope=ref(scope), email="client@example.com", role=role))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, role
            assert err.details().startswith("role:") and "client" in err.details()
        assert statuses(c, owner, scope) == {}
        member = staff(c, org, "member")
        inv = c.invite(member, scope, "client@example.com", "client")
        assert statuses(c, owner, scope) == {inv.invitation_id: pb.INVITATION_PENDING}

    def test_invitations_expire_after_seven_days_at_most(self, c: Client) -> None:
        """The default expiry is seven days, seven days may be asked for explicitly, and
        a day more is INVALID_ARGUMENT naming ttl_seconds, recording nothing."""
        owner, _org, ws = agency(c, "growth")
        scope = f"workspace:{ws}"
        before = int(time.time())
        default = c.invite(owner, scope, "a@example.com", "client")
        explicit = c.invite(owner, scope, "b@example.com", "client", ttl=WEEK)
        after = int(time.time()) + 1
        for inv in (default, explicit):
            assert before + WEEK <= inv.expires_at.seconds <= after + WEEK
            stored = c.attributes(f"invitation:{inv.invitation_id}")["expires_at"]
            assert int(stored) == inv.expires_at.seconds
        err = refused(c.tenancy.InviteMember, pb.InviteMemberRequest(
            actor=ref(owner), scope=ref(scope), email="c@example.com", role="client",
            ttl_seconds=WEEK + 86400))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("ttl_seconds:") and f"at most {WEEK}" in err.details()
        assert set(statuses(c, owner, scope)) == {default.invitation_id, explicit.invitation_id}

    def test_teammates_are_invited_to_the_account(self, c: Client) -> None:
        """An account invitation grants a staff role, which reaches every workspace; the
        client role cannot be granted at account scope, and a member may not invite
        staff (PERMISSION_DENIED naming manage_staff)."""
        owner, org, primary = agency(c, "growth")
        other = create(c, owner, org, "Other client").workspace_id
        email = f"t{uuid.uuid4().hex[:6]}@agency.example"
        mate = c.user(email)
        err = refused(c.tenancy.InviteMember, pb.InviteMemberRequest(
            actor=ref(owner), scope=ref(f"organization:{org}"), email=email, role="client"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("role:")
        member = staff(c, org, "member")
        err = refused(c.tenancy.InviteMember, pb.InviteMemberRequest(
            actor=ref(member), scope=ref(f"organization:{org}"), email=email, role="member"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "manage_staff" in err.details() and f"organization:{org}" in err.details()
        assert statuses(c, owner, f"organization:{org}") == {}
        inv = c.invite(owner, f"organization:{org}", email, "member")
        rev = c.accept(inv.token, mate)
        for ws in (primary, other):
            assert c.allowed(mate, "build", f"workspace:{ws}", at=rev)
        assert not c.allowed(mate, "create_workspace", f"organization:{org}", at=rev)
        assert held(c, mate) == {f"organization:{org}#member"}

    def test_staff_cannot_accept_a_client_invitation(self, c: Client) -> None:
        """A teammate accepting a client invitation is FAILED_PRECONDITION naming
        staff_or_client; the invitation stays pending and the person stays staff only."""
        owner, org, ws = agency(c, "growth")
        email = f"s{uuid.uuid4().hex[:6]}@agency.example"
        mate = staff(c, org, "member", email)
        inv = c.invite(owner, f"workspace:{ws}", email, "client")
        err = refused(c.tenancy.AcceptInvitation, pb.AcceptInvitationRequest(
            token=inv.token, subject=ref(mate)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("staff_or_client:")
        assert held(c, mate) == {f"organization:{org}#member"}
        assert statuses(c, owner, f"workspace:{ws}") == {inv.invitation_id:
                                                        pb.INVITATION_PENDING}

    def test_a_client_belongs_to_one_workspace_and_sees_only_it(self, c: Client) -> None:
        """After accepting, a client views its workspace, its workflows and may run them,
        and reaches nothing else; accepting a second workspace's invitation is
        FAILED_PRECONDITION naming client_in_one_workspace, changing nothing."""
        owner, org, ws_a = agency(c, "growth")
        ws_b = create(c, owner, org, "Client B").workspace_id
        tag = uuid.uuid4().hex[:6]
        flow_a, flow_b = f"workflow:a{tag}", f"workflow:b{tag}"
        c.write(f"{flow_a}#parent@workspace:{ws_a}", f"{flow_a}#owner@{owner}",
                f"{flow_b}#parent@workspace:{ws_b}", f"{flow_b}#owner@{owner}")
        email = f"c{tag}@client.example"
        client = c.user(email)
        before = c.invite(owner, f"workspace:{ws_a}", email, "client")
        assert not c.allowed(client, "view", f"workspace:{ws_a}")
        rev = c.accept(before.token, client)
        assert c.allowed(client, "view", f"workspace:{ws_a}", at=rev)
        assert c.allowed(client, "view", flow_a, at=rev)
        assert c.allowed(client, "run", flow_a, at=rev)
        assert not c.allowed(client, "edit", flow_a, at=rev)
        assert not c.allowed(client, "build", f"workspace:{ws_a}", at=rev)
        assert not c.allowed(client, "view", f"workspace:{ws_b}", at=rev)
        assert not c.allowed(client, "view", flow_b, at=rev)
        assert not c.allowed(client, "view", f"organization:{org}", at=rev)
        second = c.invite(owner, f"workspace:{ws_b}", email, "client")
        err = refused(c.tenancy.AcceptInvitation, pb.AcceptInvitationRequest(
            token=second.token, subject=ref(client)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("client_in_one_workspace:")
        assert held(c, client) == {f"workspace:{ws_a}#client"}
        assert statuses(c, owner, f"workspace:{ws_b}") == {second.invitation_id:
                                                          pb.INVITATION_PENDING}
        assert not c.allowed(client, "view", f"workspace:{ws_b}")


class TestRemovingClients:
    def test_removing_a_client_hands_their_connection_to_an_owner_or_admin(self,
                                                                         c: Client) -> None:
        """The client's connection goes to the chosen admin in the same write that takes
        the client role; a plain member as receiver is FAILED_PRECONDITION naming
        reassign_to, and changes nothing."""
        owner, org, ws = agency(c, "growth")
        admin, member = staff(c, org, "admin"), staff(c, org, "member")
        email = f"c{uuid.uuid4().hex[:6]}@client.example"
        client = c.user(email)
        c.accept(c.invite(owner, f"workspace:{ws}", email, "client").token, client)
        conn = f"connection:c{uuid.uuid4().hex[:8]}"
        c.write(f"{conn}#parent@workspace:{ws}", f"{conn}#owner@{client}")
        assert c.allowed(client, "rotate_credentials", conn)
        err = refused(c.tenancy.RemoveMember, pb.RemoveMemberRequest(
            actor=ref(member), scope=ref(f"workspace:{ws}"), member=ref(client),
            reassign_to=ref(member)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("reassign_to:")
        assert "organization.admin" in err.details() and "organization.owner" in err.details()
        assert held(c, client) == {f"workspace:{ws}#client"} and c.owner_of(conn) == {client}
        out = c.tenancy.RemoveMember(pb.RemoveMemberRequest(
            actor=ref(member), scope=ref(f"workspace:{ws}"), member=ref(client),
            reassign_to=ref(admin)), timeout=10)
        assert dict(out.reassigned) == {"connection": 1}
        assert c.owner_of(conn) == {admin}
        assert held(c, client) == set()
        assert not c.allowed(client, "view", f"workspace:{ws}", at=out.revision)
        assert not c.allowed(client, "rotate_credentials", conn, at=out.revision)
