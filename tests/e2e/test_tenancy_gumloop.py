"""TenancyService over real gRPC for the gumloop policy (seed 004), on the memory store
and on Redis: workspaces on Pro, workspace roles for organization members only,
domain auto-join, moving flows, removal with personal credentials kept."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

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
from tests.e2e.test_tenancy_agency import held, statuses, workspace_count


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    proc = start_on_store(request, tmp_path_factory, request.param, "--policy",
                          "policies/gumloop")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def c(server: ServerProcess) -> Client:
    return Client(server)


def company(c: Client, plan: str = "pro") -> tuple[str, str, str]:
    """A new organization: (its admin, organization id, default workspace id)."""
    admin = c.user()
    org, default = c.org(admin, plan=plan)
    return admin, org, default


def org_member(c: Client, org: str, email: str | None = None) -> str:
    person = c.user(email)
    c.write(f"organization:{org}#member@{person}")
    return person


def members(c: Client, org: str) -> int:
    usage = c.usage.ComputeUsage(upb.ComputeUsageRequest(
        organization_id=org, metrics=["members"],
        consistency=apb.Consistency(fully_consistent=True)), timeout=10)
    return int({m.name: m.value for m in usage.metrics}["members"])


def parent_of(c: Client, key: str) -> set[str]:
    type_, _, id_ = key.partition(":")
    req = gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
        resource_type=type_, resource_id=id_, relation="parent"))
    req.consistency.fully_consistent = True
    return {f"{m.relationship.subject.type}:{m.relationship.subject.id}"
            for m in c.graph.ReadRelationships(req, timeout=10) if m.HasField("relationship")}


def credential(c: Client, ws: str, owner: str, shared: bool) -> str:
    key = f"credential:k{uuid.uuid4().hex[:8]}"
    c.write(f"{key}#parent@workspace:{ws}", f"{key}#owner@{owner}")
    attrs = Struct()
    attrs.update({"shared": shared, "provider": "slack"})
    c.graph.WriteObjects(gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
        operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref(key), attributes=attrs)]),
        timeout=10)
    return key


def set_role(c: Client, actor: str, scope: str, subject: str, role: str) -> str:
    return c.tenancy.SetRole(pb.SetRoleRequest(actor=ref(actor), scope=ref(scope),
                                               subject=ref(subject), role=role),
                             timeout=10).revision


class TestWorkspaces:
    def test_any_member_creates_a_workspace_on_pro_and_becomes_its_admin(self,
                                                                        c: Client) -> None:
        """An organization member (not admin) creates a workspace and holds its admin
        role; someone outside the organization is PERMISSION_DENIED naming the action."""
        _admin, org, _ = company(c, "pro")
        member = org_member(c, org)
        out = c.tenancy.CreateWorkspace(pb.CreateWorkspaceRequest(
            actor=ref(member), organization_id=org, name="Growth team"), timeout=10)
        assert held(c, member) == {f"organization:{org}#member",
                                   f"workspace:{out.workspace_id}#admin"}
        assert c.allowed(member, "manage_members", f"workspace:{out.workspace_id}",
                         at=out.revision)
        outsider = c.user()
        err = refused(c.tenancy.CreateWorkspace, pb.CreateWorkspaceRequest(
            actor=ref(outsider), organization_id=org, name="Not mine"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "create_workspace" in err.details() and f"organization:{org}" in err.details()
        assert workspace_count(c, org) == 2 and held(c, outsider) == set()

    def test_the_free_plan_has_no_second_workspace(self, c: Client) -> None:
        """On free even an organization admin is FAILED_PRECONDITION naming the
        multiple_workspaces feature, and the organization keeps its one workspace."""
        admin, org, _ = company(c, "free")
        err = refused(c.tenancy.CreateWorkspace, pb.CreateWorkspaceRequest(
            actor=ref(admin), organization_id=org, name="Second", slug="second"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("feature multiple_workspaces:")
        assert "'free'" in err.details()
        assert workspace_count(c, org) == 1
        assert c.tenancy.CheckSlug(pb.CheckSlugRequest(organization_id=org, slug="second"),
                                   timeout=10).available


class TestRoles:
    def test_a_workspace_role_needs_organization_membership(self, c: Client) -> None:
        """SetRole of a workspace role for someone outside the organization is
        FAILED_PRECONDITION naming members_are_org_members and grants nothing; once an
        organization member, the same call succeeds."""
        admin, org, ws = company(c, "pro")
        person = c.user()
        err = refused(c.tenancy.SetRole, pb.SetRoleRequest(
            actor=ref(admin), scope=ref(f"workspace:{ws}"), subject=ref(person),
            role="member"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("members_are_org_members:")
        assert held(c, person) == set()
        set_role(c, admin, f"organization:{org}", person, "member")
        rev = set_role(c, admin, f"workspace:{ws}", person, "member")
        assert c.allowed(person, "create_flow", f"workspace:{ws}", at=rev)

    def test_an_organization_always_keeps_an_admin(self, c: Client) -> None:
        """The only admin can neither drop their role nor be removed (FAILED_PRECONDITION
        naming the rule and the role); with a second admin, the first may go."""
        admin, org, _ = company(c, "pro")
        scope = f"organization:{org}"
        err = refused(c.tenancy.SetRole, pb.SetRoleRequest(
            actor=ref(admin), scope=ref(scope), subject=ref(admin), role="member"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("an_admin_remains:") and "last admin" in err.details()
        err = refused(c.tenancy.RemoveMember, pb.RemoveMemberRequest(
            actor=ref(admin), scope=ref(scope), member=ref(admin),
            reassign_to=ref(org_member(c, org))))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("an_admin_remains:")
        assert f"{scope}#admin" in held(c, admin)
        second = org_member(c, org)
        set_role(c, admin, scope, second, "admin")
        rev = set_role(c, second, scope, admin, "member")
        assert not c.allowed(admin, "manage_billing", scope, at=rev)
        assert c.allowed(second, "manage_billing", scope, at=rev)


class TestInvitations:
    def test_a_workspace_invitation_waits_for_organization_membership(self,
                                                                     c: Client) -> None:
        """Accepting a workspace invitation before belonging to the organization is
        FAILED_PRECONDITION naming members_are_org_members and leaves it pending; after
        joining by domain the same token grants the workspace role."""
        admin, org, ws = company(c, "pro")
        domain = f"i{uuid.uuid4().hex[:8]}.example.com"
        email = f"bo@{domain}"
        bo = c.user(email)
        inv = c.invite(admin, f"workspace:{ws}", email, "member")
        err = refused(c.tenancy.AcceptInvitation, pb.AcceptInvitationRequest(
            token=inv.token, subject=ref(bo)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("members_are_org_members:")
        assert held(c, bo) == set()
        assert statuses(c, admin, f"workspace:{ws}") == {inv.invitation_id:
                                                        pb.INVITATION_PENDING}
        c.tenancy.AddDomain(pb.AddDomainRequest(
            actor=ref(admin), organization_id=org, domain=domain,
            mode=pb.ENROLLMENT_AUTO_JOIN, role="member"), timeout=10)
        c.tenancy.JoinByDomain(pb.JoinByDomainRequest(subject=ref(bo)), timeout=10)
        rev = c.accept(inv.token, bo)
        assert held(c, bo) == {f"organization:{org}#member", f"workspace:{ws}#member"}
        assert c.allowed(bo, "create_flow", f"workspace:{ws}", at=rev)


class TestDomains:
    def test_joining_by_domain_makes_an_organization_member_with_the_workspace_role(
            self, c: Client) -> None:
        """AddDomain, then ResolveSignup finds the organization and JoinByDomain grants
        organization member plus the domain's workspace role in one write, counting
        one more member."""
        admin, org, default = company(c, "pro")
        team = c.tenancy.CreateWorkspace(pb.CreateWorkspaceRequest(
            actor=ref(admin), organization_id=org, name="Onboarding"), timeout=10).workspace_id
        domain = f"d{uuid.uuid4().hex[:8]}.example.com"
        c.tenancy.AddDomain(pb.AddDomainRequest(
            actor=ref(admin), organization_id=org, domain=domain,
            mode=pb.ENROLLMENT_AUTO_JOIN, workspace_id=team, role="member"), timeout=10)
        found = c.tenancy.ResolveSignup(pb.ResolveSignupRequest(email=f"Ann@{domain}"),
                                        timeout=10)
        assert [(m.organization_id, m.workspace_id, m.role, m.mode) for m in found.matches] == [
            (org, team, "member", pb.ENROLLMENT_AUTO_JOIN)]
        assert members(c, org) == 1
        ann = c.user(f"ann@{domain}")
        joined = c.tenancy.JoinByDomain(pb.JoinByDomainRequest(subject=ref(ann)), timeout=10)
        assert joined.joined.workspace_id == team
        assert held(c, ann) == {f"organization:{org}#member", f"workspace:{team}#member"}
        assert members(c, org) == 2
        assert c.allowed(ann, "create_flow", f"workspace:{team}", at=joined.revision)
        assert c.allowed(ann, "discover", f"workspace:{default}", at=joined.revision)
        assert not c.allowed(ann, "view", f"workspace:{default}", at=joined.revision)
        # Joining again changes nothing and counts nobody twice.
        c.tenancy.JoinByDomain(pb.JoinByDomainRequest(subject=ref(ann)), timeout=10)
        assert members(c, org) == 2

    def test_domains_are_claimed_by_admins_on_pro_and_never_public(self, c: Client) -> None:
        """A member is PERMISSION_DENIED naming manage_domains, a public domain is
        FAILED_PRECONDITION public-domain, a free organization FAILED_PRECONDITION naming
        domain_autojoin; none leaves a claim behind."""
        admin, org, ws = company(c, "pro")
        member = org_member(c, org)
        domain = f"m{uuid.uuid4().hex[:8]}.example.com"
        err = refused(c.tenancy.AddDomain, pb.AddDomainRequest(
            actor=ref(member), organization_id=org, domain=domain,
            mode=pb.ENROLLMENT_AUTO_JOIN, workspace_id=ws, role="member"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "manage_domains" in err.details()
        err = refused(c.tenancy.AddDomain, pb.AddDomainRequest(
            actor=ref(admin), organization_id=org, domain="gmail.com",
            mode=pb.ENROLLMENT_AUTO_JOIN, workspace_id=ws, role="member"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("public-domain:")
        free_admin, free_org, free_ws = company(c, "free")
        err = refused(c.tenancy.AddDomain, pb.AddDomainRequest(
            actor=ref(free_admin), organization_id=free_org, domain=domain,
            mode=pb.ENROLLMENT_AUTO_JOIN, workspace_id=free_ws, role="member"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "domain_autojoin" in err.details()
        for email in (f"x@{domain}", "x@gmail.com"):
            assert not c.tenancy.ResolveSignup(pb.ResolveSignupRequest(email=email),
                                               timeout=10).matches
        nobody = c.user(f"x@{domain}")
        err = refused(c.tenancy.JoinByDomain, pb.JoinByDomainRequest(subject=ref(nobody)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("domain:")
        assert held(c, nobody) == set()


class TestMoves:
    def _two_workspaces(self, c: Client) -> tuple[str, str, str, str]:
        """(organization admin, org, workspace A, workspace B) on Pro."""
        admin, org, a = company(c, "pro")
        b = c.tenancy.CreateWorkspace(pb.CreateWorkspaceRequest(
            actor=ref(admin), organization_id=org, name="B"), timeout=10).workspace_id
        return admin, org, a, b

    def test_an_admin_of_both_workspaces_moves_a_flow(self, c: Client) -> None:
        """The flow's parent becomes the target: the target's members reach it, the
        source's no longer do."""
        _admin, org, a, b = self._two_workspaces(c)
        mover, stay_a, stay_b = org_member(c, org), org_member(c, org), org_member(c, org)
        c.write(f"workspace:{a}#admin@{mover}", f"workspace:{b}#admin@{mover}",
                f"workspace:{a}#member@{stay_a}", f"workspace:{b}#member@{stay_b}")
        flow = f"flow:f{uuid.uuid4().hex[:8]}"
        c.write(f"{flow}#parent@workspace:{a}", f"{flow}#owner@{stay_a}")
        rev = c.tenancy.MoveResource(pb.MoveResourceRequest(
            actor=ref(mover), resource=ref(flow), to_workspace_id=b), timeout=10).revision
        assert parent_of(c, flow) == {f"workspace:{b}"}
        assert c.allowed(stay_b, "edit", flow, at=rev)
        assert not c.allowed(stay_a, "view", flow, at=rev)
        assert c.owner_of(flow) == {stay_a}

    def test_moving_needs_permission_on_both_sides(self, c: Client) -> None:
        """An admin of the source only is PERMISSION_DENIED naming create_flow on the
        target; a member of the source who admins the target is PERMISSION_DENIED naming
        move on the flow; the flow stays where it was."""
        _admin, org, a, b = self._two_workspaces(c)
        source_admin, target_admin = org_member(c, org), org_member(c, org)
        c.write(f"workspace:{a}#admin@{source_admin}", f"workspace:{a}#member@{target_admin}",
                f"workspace:{b}#admin@{target_admin}")
        flow = f"flow:f{uuid.uuid4().hex[:8]}"
        c.write(f"{flow}#parent@workspace:{a}", f"{flow}#owner@{target_admin}")
        err = refused(c.tenancy.MoveResource, pb.MoveResourceRequest(
            actor=ref(source_admin), resource=ref(flow), to_workspace_id=b))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "create_flow" in err.details() and f"workspace:{b}" in err.details()
        err = refused(c.tenancy.MoveResource, pb.MoveResourceRequest(
            actor=ref(target_admin), resource=ref(flow), to_workspace_id=b))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may not move on" in err.details() and flow in err.details()
        assert parent_of(c, flow) == {f"workspace:{a}"}

    def test_a_flow_never_moves_to_another_organization(self, c: Client) -> None:
        """Even for someone who administers both, a target in another organization is
        FAILED_PRECONDITION naming the tenant boundary, and the flow stays."""
        admin, _org, a = company(c, "pro")
        _other_admin, other_org, foreign = company(c, "pro")
        c.write(f"organization:{other_org}#admin@{admin}")
        flow = f"flow:f{uuid.uuid4().hex[:8]}"
        c.write(f"{flow}#parent@workspace:{a}", f"{flow}#owner@{admin}")
        err = refused(c.tenancy.MoveResource, pb.MoveResourceRequest(
            actor=ref(admin), resource=ref(flow), to_workspace_id=foreign))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("tenant-boundary:")
        assert parent_of(c, flow) == {f"workspace:{a}"}


class TestRemoval:
    @pytest.mark.parametrize("scope", ["workspace", "organization"])
    def test_removal_hands_over_flows_and_keeps_personal_credentials(self, c: Client,
                                                                     scope: str) -> None:
        """Removed from a workspace or from the organization, a member's flows go to the
        chosen admin while their personal credential stays theirs (and usable by
        nobody else); a plain member as receiver is FAILED_PRECONDITION naming
        reassign_to, changing nothing."""
        admin, org, ws = company(c, "pro")
        leaver, peer = org_member(c, org), org_member(c, org)
        c.write(f"workspace:{ws}#member@{leaver}", f"workspace:{ws}#member@{peer}")
        flow = f"flow:f{uuid.uuid4().hex[:8]}"
        c.write(f"{flow}#parent@workspace:{ws}", f"{flow}#owner@{leaver}")
        personal = credential(c, ws, leaver, shared=False)
        assert c.allowed(leaver, "use", personal) and not c.allowed(admin, "use", personal)
        target = f"{scope}:{org if scope == 'organization' else ws}"
        before = held(c, leaver)
        err = refused(c.tenancy.RemoveMember, pb.RemoveMemberRequest(
            actor=ref(admin), scope=ref(target), member=ref(leaver), reassign_to=ref(peer)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("reassign_to:")
        assert held(c, leaver) == before and c.owner_of(flow) == {leaver}
        out = c.tenancy.RemoveMember(pb.RemoveMemberRequest(
            actor=ref(admin), scope=ref(target), member=ref(leaver), reassign_to=ref(admin)),
            timeout=10)
        assert dict(out.reassigned) == {"flow": 1}
        assert c.owner_of(flow) == {admin} and c.owner_of(personal) == {leaver}
        assert not c.allowed(leaver, "view", flow, at=out.revision)
        assert not c.allowed(admin, "use", personal, at=out.revision)
        assert not c.allowed(peer, "use", personal, at=out.revision)
        left = held(c, leaver)
        assert f"workspace:{ws}#member" not in left
        if scope == "organization":
            assert left == set()
        else:
            assert left == {f"organization:{org}#member"}
