"""TenancyService races on the coupler policy, over real gRPC: member removal against
concurrent creates in the member's workspace, one invitation accepted many times at
once, and slug creates spread over two server processes sharing one Redis."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import grpc
import pytest

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import tenancy_pb2 as pb
from gatehouse.v1 import usage_pb2 as upb
from tests.conftest import ServerProcess, start_on_store, start_server
from tests.e2e.test_graph_service import ref, update
from tests.e2e.test_tenancy import Client
from tests.e2e.test_tenancy_agency import held, race, statuses
from tests.redis_server import RedisServer

CREATORS = 4
AFTER = 3  # flows each creator adds once the removal has answered
# Flows each creator adds at most while the removal runs; then it waits for the
# removal, so a removal that keeps conflicting still ends once the writers pause.
DURING = 150


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


def flows_in(c: Client, ws: str) -> dict[str, set[str]]:
    """Every data flow of workspace ``ws`` and its owners, read fully consistent (all
    pages, each read at the first page's revision)."""
    flows: list[str] = []
    cursor, revision = "", ""
    while True:
        req = gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
            resource_type="data_flow", relation="parent", subject_type="workspace",
            subject_id=ws), cursor=cursor)
        if revision:
            req.consistency.at_least_as_fresh = revision
        else:
            req.consistency.fully_consistent = True
        last = None
        for m in c.graph.ReadRelationships(req, timeout=10):
            if m.HasField("relationship"):
                flows.append(f"data_flow:{m.relationship.resource.id}")
            last = m
        assert last is not None
        revision = revision or last.revision
        if last.complete or not last.next_cursor:
            break
        cursor = last.next_cursor
    return {f: c.owner_of(f) for f in flows}


class TestRemovalAgainstCreates:
    @pytest.mark.parametrize("round_", range(3))
    def test_nothing_is_left_to_a_removed_member(self, c: Client, round_: int) -> None:
        """While RemoveMember runs, writers keep creating flows owned by the member in
        the workspace: every flow committed before the removal's revision went to the
        receiver, and only flows committed after it are still the member's."""
        owner, member = c.user(), c.user()
        _org, ws = c.org(owner, plan="pro")
        c.write(f"workspace:{ws}#user@{member}")
        created: dict[str, int] = {}  # flow -> revision its creating write committed at
        lock = threading.Lock()
        started = threading.Barrier(CREATORS + 1)
        removed = threading.Event()
        failures: list[BaseException] = []

        def create_one(i: int, n: int) -> None:
            flow = f"data_flow:r{i}x{n}x{uuid.uuid4().hex[:6]}"
            rev = c.graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[
                update(f"{flow}#parent@workspace:{ws}"), update(f"{flow}#owner@{member}")]),
                timeout=30).revision
            with lock:
                created[flow] = int(rev)

        def creator(i: int) -> None:
            try:
                create_one(i, 0)
                started.wait()
                n = 1
                while not removed.is_set() and n <= DURING:
                    create_one(i, n)
                    n += 1
                removed.wait(120)
                for k in range(AFTER):
                    create_one(i, n + k)
            except BaseException as exc:  # reported by the test thread below
                failures.append(exc)
                started.abort()

        threads = [threading.Thread(target=creator, args=(i,)) for i in range(CREATORS)]
        for t in threads:
            t.start()
        try:
            started.wait()
            out, aborted = None, 0
            for _ in range(20):  # ABORTED means "nothing written, retry"
                try:
                    out = c.tenancy.RemoveMember(pb.RemoveMemberRequest(
                        actor=ref(owner), scope=ref(f"workspace:{ws}"), member=ref(member),
                        reassign_to=ref(owner)), timeout=60)
                    break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.ABORTED:
                        raise
                    aborted += 1
        finally:
            removed.set()
            for t in threads:
                t.join(60)
        assert not failures, failures
        assert out is not None, f"RemoveMember was ABORTED {aborted} times"
        removal = int(out.revision)
        before = {f for f, rev in created.items() if rev < removal}
        after = {f for f, rev in created.items() if rev > removal}
        assert len(before) >= CREATORS and len(after) >= CREATORS * AFTER
        assert before | after == set(created)
        stored = flows_in(c, ws)
        assert set(stored) == set(created)
        for flow, owners in stored.items():
            assert owners == ({owner} if flow in before else {member}), (flow, created[flow],
                                                                         removal)
        assert dict(out.reassigned) == {"data_flow": len(before)}
        assert held(c, member) == set()


class TestAcceptRace:
    def test_one_invitation_accepted_at_once_is_accepted_once(self, c: Client) -> None:
        """Eight AcceptInvitation calls for one token by its invitee, released together:
        one succeeds, seven are FAILED_PRECONDITION naming the accepted invitation, and
        the person holds the role once and counts as one user."""
        owner = c.user()
        org, ws = c.org(owner, plan="pro")
        email = f"i{uuid.uuid4().hex[:6]}@example.com"
        person = c.user(email)
        inv = c.invite(owner, f"workspace:{ws}", email, "user")
        results = race(8, lambda i: c.tenancy.AcceptInvitation(pb.AcceptInvitationRequest(
            token=inv.token, subject=ref(person)), timeout=60))
        ok = [r for r in results if isinstance(r, pb.AcceptInvitationResponse)]
        errors = [r for r in results if isinstance(r, grpc.RpcError)]
        assert len(ok) == 1, results
        for err in errors:
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
            assert err.details().startswith("invitation:")
            assert f"invitation:{inv.invitation_id} is accepted" in err.details()
        assert held(c, person) == {f"workspace:{ws}#user"}
        assert statuses(c, owner, f"workspace:{ws}") == {inv.invitation_id:
                                                        pb.INVITATION_ACCEPTED}
        usage = c.usage.ComputeUsage(upb.ComputeUsageRequest(
            organization_id=org, metrics=["users"],
            consistency=apb.Consistency(fully_consistent=True)), timeout=10)
        assert {m.name: m.value for m in usage.metrics}["users"] == 2


    def test_acceptances_racing_for_the_last_seats_stop_at_the_limit(self, c: Client) -> None:
        """On a plan of three users (the owner holds one), eight different invitees
        accepting at once: exactly two get in, six are FAILED_PRECONDITION naming the
        users limit and keep their invitations pending."""
        owner = c.user()
        org, ws = c.org(owner, plan="active")
        people, invites = [], []
        for _ in range(8):
            email = f"s{uuid.uuid4().hex[:6]}@example.com"
            people.append(c.user(email))
            invites.append(c.invite(owner, f"workspace:{ws}", email, "guest"))
        results = race(8, lambda i: c.tenancy.AcceptInvitation(pb.AcceptInvitationRequest(
            token=invites[i].token, subject=ref(people[i])), timeout=60))
        won = [i for i, r in enumerate(results) if isinstance(r, pb.AcceptInvitationResponse)]
        assert len(won) == 2, results
        now = statuses(c, owner, f"workspace:{ws}")
        for i, r in enumerate(results):
            if i in won:
                assert held(c, people[i]) == {f"workspace:{ws}#guest"}
                assert now[invites[i].invitation_id] == pb.INVITATION_ACCEPTED
                continue
            assert r.code() == grpc.StatusCode.FAILED_PRECONDITION, r.details()
            assert "users: 4 would exceed the limit of 3 on plan 'active'" in r.details()
            assert held(c, people[i]) == set()
            assert now[invites[i].invitation_id] == pb.INVITATION_PENDING
        usage = c.usage.ComputeUsage(upb.ComputeUsageRequest(
            organization_id=org, metrics=["users"],
            consistency=apb.Consistency(fully_consistent=True)), timeout=10)
        assert {m.name: m.value for m in usage.metrics}["users"] == 3


@pytest.fixture(scope="module")
def two(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[Client, Client]]:
    """Two server processes on one Redis prefix."""
    tmp = tmp_path_factory.mktemp("tenancy-two")
    common = ["--policy", "policies/coupler", "--redis-url", redis_server.url,
              "--redis-prefix", f"two{uuid.uuid4().hex[:6]}"]
    a, b = start_server(tmp, *common), start_server(tmp, *common)
    yield Client(a), Client(b)
    a.stop()
    b.stop()


class TestTwoServers:
    @pytest.mark.parametrize("round_", range(3))
    def test_slug_creates_over_two_processes_leave_exactly_one(
            self, two: tuple[Client, Client], round_: int) -> None:
        """Ten creates of one slug, alternating between two processes on one Redis: one
        succeeds, nine are ALREADY_EXISTS naming the slug, and both processes see the
        winner holding it."""
        a, b = two
        owner = a.user()
        org, _ = a.org(owner, plan="pro")
        clients = [a, b]
        results = race(10, lambda i: clients[i % 2].tenancy.CreateWorkspace(
            pb.CreateWorkspaceRequest(actor=ref(owner), organization_id=org,
                                      name=f"Same {i}", slug="same"), timeout=60))
        ok = [r for r in results if isinstance(r, pb.CreateWorkspaceResponse)]
        errors = [r for r in results if isinstance(r, grpc.RpcError)]
        assert len(ok) == 1, results
        for err in errors:
            assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err.details()
            assert err.details().startswith("slug: 'same' is taken")
        winner = f"workspace:{ok[0].workspace_id}"
        for client in clients:
            found = client.tenancy.CheckSlug(pb.CheckSlugRequest(organization_id=org,
                                                                 slug="same"), timeout=10)
            assert not found.available and winner in found.reason
        usage = b.usage.ComputeUsage(upb.ComputeUsageRequest(
            organization_id=org, metrics=["workspaces"],
            consistency=apb.Consistency(fully_consistent=True)), timeout=10)
        assert {m.name: m.value for m in usage.metrics}["workspaces"] == 2

    def test_one_invitation_accepted_over_two_processes_is_accepted_once(
            self, two: tuple[Client, Client]) -> None:
        """Eight acceptances of one token spread over two processes: exactly one succeeds."""
        a, b = two
        owner = a.user()
        _org, ws = a.org(owner, plan="pro")
        email = f"i{uuid.uuid4().hex[:6]}@example.com"
        person = a.user(email)
        inv = a.invite(owner, f"workspace:{ws}", email, "guest")
        clients = [a, b]
        results = race(8, lambda i: clients[i % 2].tenancy.AcceptInvitation(
            pb.AcceptInvitationRequest(token=inv.token, subject=ref(person)), timeout=60))
        ok = [r for r in results if isinstance(r, pb.AcceptInvitationResponse)]
        assert len(ok) == 1, results
        for err in results:
            if isinstance(err, grpc.RpcError):
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
                assert "is accepted" in err.details()
        assert held(b, person) == {f"workspace:{ws}#guest"}
