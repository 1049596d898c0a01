"""TenancyService over real gRPC, on the memory store and on Redis: every lifecycle
rule of the seeds for the coupler policy, with the races that must hold."""

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
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from gatehouse.v1 import tenancy_pb2 as pb
from gatehouse.v1 import tenancy_pb2_grpc as pb_grpc
from gatehouse.v1 import usage_pb2 as upb
from gatehouse.v1 import usage_pb2_grpc as upb_grpc
from tests.conftest import ServerProcess, start_on_store
from tests.e2e.test_graph_service import ref, update


class Client:
    """Stubs of one server, and helpers that keep the tests short."""

    def __init__(self, server: ServerProcess) -> None:
        channel = server.channel()
        self.tenancy = pb_grpc.TenancyServiceStub(channel)
        self.authz = apb_grpc.AuthorizationServiceStub(channel)
        self.graph = gpb_grpc.GraphServiceStub(channel)
        self.usage = upb_grpc.UsageServiceStub(channel)

    def user(self, email: str | None = None) -> str:
        """A new user (with an email unless None is asked for); returns ``user:<id>``."""
        uid = f"u{uuid.uuid4().hex[:10]}"
        attrs = Struct()
        attrs.update({"email": email or f"{uid}@example.com"})
        self.graph.WriteObjects(gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
            operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref(f"user:{uid}"),
            attributes=attrs)]), timeout=10)
        return f"user:{uid}"

    def org(self, owner: str, plan: str = "pro") -> tuple[str, str]:
        out = self.tenancy.CreateOrganization(pb.CreateOrganizationRequest(
            actor=ref(owner), name="Acme", plan=plan), timeout=10)
        return out.organization_id, out.workspace_id

    def workspace(self, actor: str, org: str, name: str = "", slug: str = "") -> str:
        out = self.tenancy.CreateWorkspace(pb.CreateWorkspaceRequest(
            actor=ref(actor), organization_id=org, name=name or f"ws {uuid.uuid4().hex[:6]}",
            slug=slug), timeout=10)
        return out.workspace_id

    def allowed(self, subject: str, action: str, resource: str, at: str = "") -> bool:
        req = apb.CheckRequest(subject=ref(subject), action=action, resource=ref(resource))
        if at:
            req.consistency.at_least_as_fresh = at
        else:
            req.consistency.fully_consistent = True
        return self.authz.Check(req, timeout=10).decision == apb.DECISION_ALLOW

    def write(self, *texts: str) -> str:
        return self.graph.WriteRelationships(gpb.WriteRelationshipsRequest(
            updates=[update(t) for t in texts]), timeout=10).revision

    def attributes(self, key: str) -> dict[str, Any]:
        req = gpb.ReadObjectRequest(object=ref(key))
        req.consistency.fully_consistent = True
        from google.protobuf.json_format import MessageToDict
        return MessageToDict(self.graph.ReadObject(req, timeout=10).attributes)

    def exists(self, key: str) -> bool:
        try:
            self.attributes(key)
            return True
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            return False

    def owner_of(self, key: str) -> set[str]:
        type_, _, id_ = key.partition(":")
        req = gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
            resource_type=type_, resource_id=id_, relation="owner"))
        req.consistency.fully_consistent = True
        return {f"{m.relationship.subject.type}:{m.relationship.subject.id}"
                for m in self.graph.ReadRelationships(req, timeout=10)
                if m.HasField("relationship")}

    def invite(self, actor: str, scope: str, email: str, role: str,
               ttl: int = 0) -> pb.InviteMemberResponse:
        return self.tenancy.InviteMember(pb.InviteMemberRequest(
            actor=ref(actor), scope=ref(scope), email=email, role=role, ttl_seconds=ttl),
            timeout=10)

    def accept(self, token: str, subject: str) -> str:
        return self.tenancy.AcceptInvitation(pb.AcceptInvitationRequest(
            token=token, subject=ref(subject)), timeout=10).revision


def refused(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    proc = start_on_store(request, tmp_path_factory, request.param, "--policy",
                          "policies/coupler")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def c(server: ServerProcess) -> Client:
    return Client(server)


class TestOrganizations:
    def test_create_organization_makes_the_owner_and_the_primary_workspace(self,
                                                                         c: Client) -> None:
        """One write: the org with its plan, the actor as owner, "My workspace" in it."""
        owner = c.user()
        org, ws = c.org(owner, plan="pro")
        assert c.allowed(owner, "manage_billing", f"organization:{org}")
        assert c.attributes(f"workspace:{ws}") == {"name": "My workspace",
                                                   "slug": "my-workspace"}
        assert c.attributes(f"organization:{org}")["plan"] == "pro"
        usage = c.usage.ComputeUsage(upb.ComputeUsageRequest(
            organization_id=org, consistency=apb.Consistency(fully_consistent=True)),
            timeout=10)
        assert {m.name: m.value for m in usage.metrics}["workspaces"] == 1

    def test_bad_input_and_taken_ids_are_refused(self, c: Client) -> None:
        """An unknown plan, an empty name, a taken id: each named, nothing written."""
        owner = c.user()
        err = refused(c.tenancy.CreateOrganization, pb.CreateOrganizationRequest(
            actor=ref(owner), name="X", plan="platinum"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("plan:")
        err = refused(c.tenancy.CreateOrganization, pb.CreateOrganizationRequest(
            actor=ref(owner), name="  "))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("name:")
        org, _ = c.org(owner)
        err = refused(c.tenancy.CreateOrganization, pb.CreateOrganizationRequest(
            actor=ref(owner), organization_id=org, name="Again"))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        err = refused(c.tenancy.CreateOrganization, pb.CreateOrganizationRequest(
            actor=ref("spaceship:x"), name="X"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("actor.type:")

    def test_an_unresolved_plan_falls_back_to_the_most_restrictive(self, c: Client) -> None:
        """No plan given: the fallback plan (free), which allows one workspace."""
        owner = c.user()
        out = c.tenancy.CreateOrganization(pb.CreateOrganizationRequest(
            actor=ref(owner), name="Nameless"), timeout=10)
        assert c.attributes(f"organization:{out.organization_id}")["plan"] == "free"
        err = refused(c.tenancy.CreateWorkspace, pb.CreateWorkspaceRequest(
            actor=ref(owner), organization_id=out.organization_id, name="Second"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "workspaces: 2 would exceed the limit of 1 on plan 'free'" in err.details()


class TestWorkspaces:
    def test_slugs_are_derived_unique_and_checked(self, c: Client) -> None:
        """A slug comes from the name, a taken one gets a suffix when derived and is
        ALREADY_EXISTS when asked for, and CheckSlug says which."""
        owner = c.user()
        org, _ = c.org(owner)
        first = c.tenancy.CreateWorkspace(pb.CreateWorkspaceRequest(
            actor=ref(owner), organization_id=org, name="Acme Inc."), timeout=10)
        assert first.slug == "acme-inc"
        second = c.tenancy.CreateWorkspace(pb.CreateWorkspaceRequest(
            actor=ref(owner), organization_id=org, name="Acme Inc!"), timeout=10)
        assert second.slug == "acme-inc-2"
        err = refused(c.tenancy.CreateWorkspace, pb.CreateWorkspaceRequest(
            actor=ref(owner), organization_id=org, name="Other", slug="acme-inc"))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        for bad in ("a", "-acme", "acme-", "Acme", "ac_me", "x" * 51):
            err = refused(c.tenancy.CreateWorkspace, pb.CreateWorkspaceRequest(
                actor=ref(owner), organization_id=org, name="Bad", slug=bad))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            assert err.details().startswith("slug:")
        taken = c.tenancy.CheckSlug(pb.CheckSlugRequest(organization_id=org, slug="acme-inc"),
                                    timeout=10)
        assert not taken.available and f"workspace:{first.workspace_id}" in taken.reason
        free = c.tenancy.CheckSlug(pb.CheckSlugRequest(organization_id=org, slug="globex"),
                                   timeout=10)
        assert free.available
        bad = c.tenancy.CheckSlug(pb.CheckSlugRequest(organization_id=org, slug="-x"),
                                  timeout=10)
        assert not bad.available and bad.reason.startswith("invalid:")
        # Another organization may use the same slug.
        other, _ = c.org(c.user())
        assert c.tenancy.CheckSlug(pb.CheckSlugRequest(organization_id=other, slug="acme-inc"),
                                   timeout=10).available

    def test_only_the_guard_action_creates_renames_and_deletes(self, c: Client) -> None:
        """A workspace admin is not the organization owner: PERMISSION_DENIED naming
        the action."""
        owner, admin = c.user(), c.user()
        org, _ = c.org(owner)
        ws = c.workspace(owner, org)
        c.write(f"workspace:{ws}#admin@{admin}")
        err = refused(c.tenancy.CreateWorkspace, pb.CreateWorkspaceRequest(
            actor=ref(admin), organization_id=org, name="Mine"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "create_workspace" in err.details() and f"organization:{org}" in err.details()
        err = refused(c.tenancy.RenameWorkspace, pb.RenameWorkspaceRequest(
            actor=ref(admin), workspace_id=ws, name="Renamed"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED

    def test_rename_changes_the_name_and_never_the_slug(self, c: Client) -> None:
        """The slug is fixed at creation."""
        owner = c.user()
        org, _ = c.org(owner)
        ws = c.workspace(owner, org, name="Globex", slug="globex")
        c.tenancy.RenameWorkspace(pb.RenameWorkspaceRequest(
            actor=ref(owner), workspace_id=ws, name="Globex Corporation"), timeout=10)
        assert c.attributes(f"workspace:{ws}") == {"name": "Globex Corporation",
                                                   "slug": "globex"}
        err = refused(c.tenancy.RenameWorkspace, pb.RenameWorkspaceRequest(
            actor=ref(owner), workspace_id=ws, name="x" * 101))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    def test_delete_removes_the_workspace_and_only_it(self, c: Client) -> None:
        """The exact name confirms; the workspace's objects and relationships go, another
        workspace's stay; the last workspace cannot go."""
        owner, user = c.user(), c.user()
        org, primary = c.org(owner)
        ws = c.workspace(owner, org, name="Doomed")
        flow, kept = f"data_flow:f{uuid.uuid4().hex[:8]}", f"data_flow:k{uuid.uuid4().hex[:8]}"
        c.write(f"{flow}#parent@workspace:{ws}", f"{flow}#owner@{user}",
                f"workspace:{ws}#user@{user}", f"{kept}#parent@workspace:{primary}",
                f"{kept}#owner@{user}", f"organization:{org}#ai_workspace@workspace:{ws}")
        err = refused(c.tenancy.DeleteWorkspace, pb.DeleteWorkspaceRequest(
            actor=ref(owner), workspace_id=ws, confirm_name="doomed"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("confirm_name:")
        out = c.tenancy.DeleteWorkspace(pb.DeleteWorkspaceRequest(
            actor=ref(owner), workspace_id=ws, confirm_name="Doomed"), timeout=10)
        assert out.deleted == 2
        assert not c.allowed(user, "view", flow, at=out.revision)
        assert not c.exists(f"workspace:{ws}") and not c.exists(flow)
        assert c.allowed(user, "view", kept, at=out.revision) is False  # no role there
        assert c.owner_of(kept) == {user}
        err = refused(c.tenancy.DeleteWorkspace, pb.DeleteWorkspaceRequest(
            actor=ref(owner), workspace_id=primary, confirm_name="My workspace"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "last-workspace" in err.details()

    def test_a_downgrade_keeps_workspaces_and_refuses_new_ones(self, c: Client) -> None:
        """From pro to starter with three workspaces: they keep working, a fourth is refused."""
        owner = c.user()
        org, _ = c.org(owner, plan="pro")
        ws = [c.workspace(owner, org) for _ in range(2)]
        attrs = Struct()
        attrs.update({"name": "Acme", "plan": "starter"})
        c.graph.WriteObjects(gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
            operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref(f"organization:{org}"),
            attributes=attrs)]), timeout=10)
        assert c.allowed(owner, "view", f"workspace:{ws[1]}")
        err = refused(c.tenancy.CreateWorkspace, pb.CreateWorkspaceRequest(
            actor=ref(owner), organization_id=org, name="Fourth"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "workspaces: 4 would exceed the limit of 1 on plan 'starter'" in err.details()


class TestRaces:
    def _race(self, n: int, call: Callable[[int], Any]) -> list[Any]:
        results: list[Any] = [None] * n
        barrier = threading.Barrier(n)

        def run(i: int) -> None:
            barrier.wait()
            try:
                results[i] = call(i)
            except grpc.RpcError as exc:
                results[i] = exc.code()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return results

    def test_racing_creates_of_one_slug_leave_exactly_one(self, c: Client) -> None:
        """Eight creates of the same slug at once: one succeeds, seven are ALREADY_EXISTS."""
        owner = c.user()
        org, _ = c.org(owner)
        results = self._race(8, lambda i: c.tenancy.CreateWorkspace(pb.CreateWorkspaceRequest(
            actor=ref(owner), organization_id=org, name=f"Same {i}", slug="same"), timeout=30))
        ok = [r for r in results if isinstance(r, pb.CreateWorkspaceResponse)]
        assert len(ok) == 1
        assert results.count(grpc.StatusCode.ALREADY_EXISTS) == 7

    def test_a_revoked_owner_never_creates_after_the_revocation(self, c: Client) -> None:
        """An owner creating workspaces while another owner revokes them: every create
        that succeeded committed before the revocation's revision."""
        owner, other = c.user(), c.user()
        org, _ = c.org(owner)
        c.write(f"organization:{org}#owner@{other}")

        def act(i: int) -> Any:
            if i == 0:
                return c.tenancy.SetRole(pb.SetRoleRequest(
                    actor=ref(other), scope=ref(f"organization:{org}"), subject=ref(owner),
                    role=""), timeout=30)
            return c.tenancy.CreateWorkspace(pb.CreateWorkspaceRequest(
                actor=ref(owner), organization_id=org, name=f"W{i}"), timeout=30)

        results = self._race(8, act)
        revoked = int(results[0].revision)
        for r in results[1:]:
            if isinstance(r, pb.CreateWorkspaceResponse):
                assert int(r.revision) < revoked
            else:
                assert r == grpc.StatusCode.PERMISSION_DENIED
        err = refused(c.tenancy.CreateWorkspace, pb.CreateWorkspaceRequest(
            actor=ref(owner), organization_id=org, name="After"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED

    def test_a_link_redeemed_twice_at_once_connects_once(self, c: Client) -> None:
        """Six redemptions of one token at once: exactly one connection."""
        owner = c.user()
        _org, ws = c.org(owner, plan="pro")
        link = c.tenancy.CreateAccessLink(pb.CreateAccessLinkRequest(
            actor=ref(owner), workspace_id=ws, source_type="shopify"), timeout=10)
        results = self._race(6, lambda i: c.tenancy.RedeemAccessLink(
            pb.RedeemAccessLinkRequest(token=link.token, connection_id=f"conn{i}"),
            timeout=30))
        ok = [r for r in results if isinstance(r, pb.RedeemAccessLinkResponse)]
        assert len(ok) == 1
        assert results.count(grpc.StatusCode.FAILED_PRECONDITION) == 5


class TestInvitations:
    def test_invite_accept_and_the_role_is_held(self, c: Client) -> None:
        """A workspace invitation accepted by the invited email grants the role once."""
        owner = c.user()
        _org, ws = c.org(owner, plan="pro")
        guest_email = f"g{uuid.uuid4().hex[:6]}@example.com"
        guest = c.user(guest_email)
        inv = c.invite(owner, f"workspace:{ws}", guest_email.upper(), "guest")
        assert len(inv.token) > 40 and inv.expires_at.seconds > time.time() + 6 * 86400
        rev = c.accept(inv.token, guest)
        assert c.allowed(guest, "view", f"workspace:{ws}", at=rev)
        err = refused(c.tenancy.AcceptInvitation, pb.AcceptInvitationRequest(
            token=inv.token, subject=ref(guest)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        listed = c.tenancy.ListInvitations(pb.ListInvitationsRequest(
            actor=ref(owner), scope=ref(f"workspace:{ws}")), timeout=10)
        assert [(i.email, i.role, i.status) for i in listed.invitations] == [
            (guest_email, "guest", pb.INVITATION_ACCEPTED)]

    def test_only_the_invited_email_accepts(self, c: Client) -> None:
        """Another subject with the token is PERMISSION_DENIED; a forged token NOT_FOUND."""
        owner = c.user()
        _org, ws = c.org(owner, plan="pro")
        inv = c.invite(owner, f"workspace:{ws}", "someone@example.com", "user")
        err = refused(c.tenancy.AcceptInvitation, pb.AcceptInvitationRequest(
            token=inv.token, subject=ref(c.user())))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        forged = inv.token[:-4] + ("AAAA" if not inv.token.endswith("AAAA") else "BBBB")
        err = refused(c.tenancy.AcceptInvitation, pb.AcceptInvitationRequest(
            token=forged, subject=ref(owner)))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert inv.token not in err.details() and forged not in err.details()
        err = refused(c.tenancy.AcceptInvitation, pb.AcceptInvitationRequest(
            token="garbage", subject=ref(owner)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    def test_revoked_and_expired_invitations_cannot_be_accepted(self, c: Client) -> None:
        """Revoke ends an invitation; one past its ttl reads as expired; resend revives it
        with a new token and the old one stops working."""
        owner = c.user()
        _org, ws = c.org(owner, plan="pro")
        email = f"r{uuid.uuid4().hex[:6]}@example.com"
        person = c.user(email)
        revoked = c.invite(owner, f"workspace:{ws}", email, "user")
        c.tenancy.RevokeInvitation(pb.RevokeInvitationRequest(
            actor=ref(owner), invitation_id=revoked.invitation_id), timeout=10)
        err = refused(c.tenancy.AcceptInvitation, pb.AcceptInvitationRequest(
            token=revoked.token, subject=ref(person)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "revoked" in err.details()
        short = c.invite(owner, f"workspace:{ws}", email, "user", ttl=1)
        deadline = short.expires_at.seconds
        while time.time() <= deadline:  # the ttl is the behaviour under test
            time.sleep(0.1)
        err = refused(c.tenancy.AcceptInvitation, pb.AcceptInvitationRequest(
            token=short.token, subject=ref(person)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "expired" in err.details()
        statuses = {i.invitation_id: i.status for i in c.tenancy.ListInvitations(
            pb.ListInvitationsRequest(actor=ref(owner), scope=ref(f"workspace:{ws}")),
            timeout=10).invitations}
        assert statuses == {revoked.invitation_id: pb.INVITATION_REVOKED,
                            short.invitation_id: pb.INVITATION_EXPIRED}
        again = c.tenancy.ResendInvitation(pb.ResendInvitationRequest(
            actor=ref(owner), invitation_id=short.invitation_id), timeout=10)
        err = refused(c.tenancy.AcceptInvitation, pb.AcceptInvitationRequest(
            token=short.token, subject=ref(person)))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        rev = c.accept(again.token, person)
        assert c.allowed(person, "view", f"workspace:{ws}", at=rev)

    def test_roles_ttl_and_guard_are_the_policys(self, c: Client) -> None:
        """An invitation may grant only the scope's listed roles, within the maximum ttl,
        and only someone holding the scope's member-management action may invite."""
        owner, user = c.user(), c.user()
        org, ws = c.org(owner, plan="pro")
        c.write(f"workspace:{ws}#user@{user}")
        err = refused(c.tenancy.InviteMember, pb.InviteMemberRequest(
            actor=ref(owner), scope=ref(f"organization:{org}"), email="a@example.com",
            role="admin"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("role:")
        err = refused(c.tenancy.InviteMember, pb.InviteMemberRequest(
            actor=ref(owner), scope=ref(f"workspace:{ws}"), email="a@example.com",
            role="user", ttl_seconds=31 * 86400))
        assert err.details().startswith("ttl_seconds:")
        err = refused(c.tenancy.InviteMember, pb.InviteMemberRequest(
            actor=ref(user), scope=ref(f"workspace:{ws}"), email="a@example.com", role="user"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "manage_members" in err.details()
        err = refused(c.tenancy.InviteMember, pb.InviteMemberRequest(
            actor=ref(owner), scope=ref(f"workspace:{ws}"), email="not-an-email", role="user"))
        assert err.details().startswith("email:")

    def test_seats_are_counted_at_acceptance_by_identity(self, c: Client) -> None:
        """On a plan of 3 users: a new person past the seats is refused at acceptance,
        while someone already counted (same email) costs nothing."""
        owner = c.user()
        _org, ws = c.org(owner, plan="active")  # users: 3
        people = [c.user() for _ in range(3)]
        for p in people[:2]:
            c.write(f"workspace:{ws}#user@{p}")
        email = c.attributes(people[2])["email"]
        inv = c.invite(owner, f"workspace:{ws}", email, "guest")
        err = refused(c.tenancy.AcceptInvitation, pb.AcceptInvitationRequest(
            token=inv.token, subject=ref(people[2])))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "users: 4 would exceed the limit of 3 on plan 'active'" in err.details()
        already = c.attributes(people[0])["email"]
        inv = c.invite(owner, f"workspace:{ws}", already, "admin")
        c.accept(inv.token, people[0])


class TestRolesAndRemoval:
    def test_set_role_changes_one_scope_only(self, c: Client) -> None:
        """A workspace role and an organization role are independent."""
        owner, lead = c.user(), c.user()
        org, ws = c.org(owner, plan="pro")
        scope_org, scope_ws = ref(f"organization:{org}"), ref(f"workspace:{ws}")
        c.tenancy.SetRole(pb.SetRoleRequest(actor=ref(owner), scope=scope_ws,
                                            subject=ref(lead), role="admin"), timeout=10)
        c.tenancy.SetRole(pb.SetRoleRequest(actor=ref(owner), scope=scope_org,
                                            subject=ref(lead), role="owner"), timeout=10)
        rev = c.tenancy.SetRole(pb.SetRoleRequest(actor=ref(owner), scope=scope_org,
                                                  subject=ref(lead), role=""),
                                timeout=10).revision
        assert not c.allowed(lead, "manage_billing", f"organization:{org}", at=rev)
        assert c.allowed(lead, "manage_members", f"workspace:{ws}", at=rev)
        rev = c.tenancy.SetRole(pb.SetRoleRequest(actor=ref(owner), scope=scope_ws,
                                                  subject=ref(lead), role="guest"),
                                timeout=10).revision
        assert not c.allowed(lead, "manage_members", f"workspace:{ws}", at=rev)
        assert c.allowed(lead, "view", f"workspace:{ws}", at=rev)
        err = refused(c.tenancy.SetRole, pb.SetRoleRequest(
            actor=ref(owner), scope=scope_ws, subject=ref(lead), role="owner"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        err = refused(c.tenancy.SetRole, pb.SetRoleRequest(
            actor=ref(owner), scope=scope_org, subject=ref(owner), role=""))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "an_owner_remains" in err.details()

    def test_remove_member_reassigns_everything_but_ai_chats(self, c: Client) -> None:
        """Flows, dashboards and connections (private and shared) go to the receiver in
        the same write; the AI chat stays with its author."""
        owner, member = c.user(), c.user()
        _org, ws = c.org(owner, plan="pro")
        tag = uuid.uuid4().hex[:6]
        things = [f"data_flow:f{tag}", f"dashboard:d{tag}", f"connection:c{tag}",
                  f"ai_chat:a{tag}"]
        c.write(f"workspace:{ws}#user@{member}",
                *(f"{t}#parent@workspace:{ws}" for t in things),
                *(f"{t}#owner@{member}" for t in things))
        err = refused(c.tenancy.RemoveMember, pb.RemoveMemberRequest(
            actor=ref(owner), scope=ref(f"workspace:{ws}"), member=ref(member),
            reassign_to=ref(c.user())))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("reassign_to:")
        out = c.tenancy.RemoveMember(pb.RemoveMemberRequest(
            actor=ref(owner), scope=ref(f"workspace:{ws}"), member=ref(member),
            reassign_to=ref(owner)), timeout=10)
        assert dict(out.reassigned) == {"data_flow": 1, "dashboard": 1, "connection": 1}
        assert [c.owner_of(t) for t in things] == [{owner}, {owner}, {owner}, {member}]
        assert not c.allowed(member, "view", f"workspace:{ws}", at=out.revision)

    def test_ownership_transfer_keeps_the_previous_owners_workspace_roles(self,
                                                                         c: Client) -> None:
        """Invite as owner, accept, the new owner removes the old one: the old owner's
        things where they keep a workspace role stay theirs, the rest move."""
        old = c.user()
        org, primary = c.org(old, plan="pro")
        other = c.workspace(old, org, name="Other")
        new_email = f"n{uuid.uuid4().hex[:6]}@example.com"
        new = c.user(new_email)
        tag = uuid.uuid4().hex[:6]
        kept, moved = f"data_flow:k{tag}", f"data_flow:m{tag}"
        c.write(f"workspace:{primary}#admin@{old}", f"{kept}#parent@workspace:{primary}",
                f"{kept}#owner@{old}", f"{moved}#parent@workspace:{other}",
                f"{moved}#owner@{old}")
        inv = c.invite(old, f"organization:{org}", new_email, "owner")
        c.accept(inv.token, new)
        out = c.tenancy.RemoveMember(pb.RemoveMemberRequest(
            actor=ref(new), scope=ref(f"organization:{org}"), member=ref(old),
            reassign_to=ref(new)), timeout=10)
        assert dict(out.reassigned) == {"data_flow": 1}
        assert c.owner_of(kept) == {old} and c.owner_of(moved) == {new}
        assert not c.allowed(old, "manage_billing", f"organization:{org}", at=out.revision)
        assert c.allowed(old, "edit", kept, at=out.revision)
        err = refused(c.tenancy.RemoveMember, pb.RemoveMemberRequest(
            actor=ref(new), scope=ref(f"organization:{org}"), member=ref(new),
            reassign_to=ref(old)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "an_owner_remains" in err.details()


class TestAccessLinks:
    def test_a_link_connects_once_and_deleting_it_keeps_the_connection(self,
                                                                      c: Client) -> None:
        """Redeeming creates the connection owned by the link's creator; the link reads
        used; deleting it leaves the connection."""
        owner = c.user()
        _org, ws = c.org(owner, plan="active")
        link = c.tenancy.CreateAccessLink(pb.CreateAccessLinkRequest(
            actor=ref(owner), workspace_id=ws, source_type="google_ads"), timeout=10)
        attrs = Struct()
        attrs.update({"credential_id": "ads-cred", "tenants": ["acct-1"]})
        out = c.tenancy.RedeemAccessLink(pb.RedeemAccessLinkRequest(
            token=link.token, attributes=attrs), timeout=10)
        conn = f"connection:{out.connection_id}"
        assert c.owner_of(conn) == {owner}
        assert c.attributes(conn)["source_type"] == "google_ads"
        listed = c.tenancy.ListAccessLinks(pb.ListAccessLinksRequest(
            actor=ref(owner), workspace_id=ws), timeout=10).links
        assert [(x.link_id, x.status, x.connection_id) for x in listed] == [
            (link.link_id, pb.ACCESS_LINK_USED, out.connection_id)]
        assert listed[0].created_by.id == owner.partition(":")[2]
        err = refused(c.tenancy.RedeemAccessLink, pb.RedeemAccessLinkRequest(token=link.token))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        c.tenancy.DeleteAccessLink(pb.DeleteAccessLinkRequest(
            actor=ref(owner), link_id=link.link_id), timeout=10)
        assert c.exists(conn)
        assert not c.tenancy.ListAccessLinks(pb.ListAccessLinksRequest(
            actor=ref(owner), workspace_id=ws), timeout=10).links

    def test_links_need_the_plan_feature_and_the_guard(self, c: Client) -> None:
        """On the free plan links are refused naming the feature; a workspace user may
        not create one."""
        owner, user = c.user(), c.user()
        _org, ws = c.org(owner, plan="free")
        err = refused(c.tenancy.CreateAccessLink, pb.CreateAccessLinkRequest(
            actor=ref(owner), workspace_id=ws, source_type="shopify"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "access_requests" in err.details()
        _org, ws = c.org(owner, plan="pro")
        c.write(f"workspace:{ws}#user@{user}")
        err = refused(c.tenancy.CreateAccessLink, pb.CreateAccessLinkRequest(
            actor=ref(user), workspace_id=ws, source_type="shopify"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED


class TestDomains:
    def test_auto_join_by_a_verified_company_domain(self, c: Client) -> None:
        """Business plan: a company domain auto-joins a workspace as user; public domains
        and plans without the feature are refused."""
        owner = c.user()
        org, ws = c.org(owner, plan="business")
        domain = f"d{uuid.uuid4().hex[:8]}.example.com"
        err = refused(c.tenancy.AddDomain, pb.AddDomainRequest(
            actor=ref(owner), organization_id=org, domain="gmail.com",
            mode=pb.ENROLLMENT_AUTO_JOIN, workspace_id=ws, role="user"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "public-domain" in err.details()
        c.tenancy.AddDomain(pb.AddDomainRequest(
            actor=ref(owner), organization_id=org, domain=domain,
            mode=pb.ENROLLMENT_AUTO_JOIN, workspace_id=ws, role="user"), timeout=10)
        found = c.tenancy.ResolveSignup(pb.ResolveSignupRequest(email=f"new@{domain}"),
                                        timeout=10)
        assert [(m.organization_id, m.workspace_id, m.role, m.mode) for m in found.matches] == [
            (org, ws, "user", pb.ENROLLMENT_AUTO_JOIN)]
        assert not c.tenancy.ResolveSignup(pb.ResolveSignupRequest(
            email="someone@gmail.com"), timeout=10).matches
        newcomer = c.user(f"new@{domain}")
        joined = c.tenancy.JoinByDomain(pb.JoinByDomainRequest(subject=ref(newcomer)),
                                        timeout=10)
        assert c.allowed(newcomer, "view", f"workspace:{ws}", at=joined.revision)
        pro_org, pro_ws = c.org(owner, plan="pro")
        err = refused(c.tenancy.AddDomain, pb.AddDomainRequest(
            actor=ref(owner), organization_id=pro_org, domain=f"x{domain}",
            mode=pb.ENROLLMENT_SUGGEST, workspace_id=pro_ws, role="user"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "domain_autojoin" in err.details()
        rival = c.user()
        other, other_ws = c.org(rival, plan="business")
        err = refused(c.tenancy.AddDomain, pb.AddDomainRequest(
            actor=ref(rival), organization_id=other, domain=domain,
            mode=pb.ENROLLMENT_SUGGEST, workspace_id=other_ws, role="user"))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
