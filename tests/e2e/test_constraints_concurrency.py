"""Invariants under concurrent writers: staff/client exclusion on the agency policy.

Sixteen writers, spread over two gatehouse processes sharing one Redis, race
to make the same person agency staff and a client of the same agency at the
same moment. Afterwards the person is on exactly one side, every write on the
winning side succeeded and every write on the losing side was refused with
the constraint's name.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import grpc
import pytest

from gatehouse.v1 import graph_pb2 as pb
from gatehouse.v1 import graph_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, start_server
from tests.e2e.test_graph_service import update
from tests.redis_server import RedisServer

STAFF = ["organization:brightside#owner@user:{u}", "organization:brightside#admin@user:{u}",
         "organization:brightside#member@user:{u}"]
CLIENT = ["workspace:acme#client@user:{u}"]
WRITERS = 16
ROUNDS = 6


@pytest.fixture(scope="module")
def servers(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
            ) -> list[ServerProcess]:
    tmp = tmp_path_factory.mktemp("race")
    common = ["--policy", "policies/agency", "--redis-url", redis_server.url,
              "--redis-prefix", f"race{uuid.uuid4().hex[:6]}"]
    a = start_server(tmp, *common, "--data", "policies/agency/tests/agency.data.yaml")
    b = start_server(tmp, *common)
    yield [a, b]  # type: ignore[misc]
    a.stop()
    b.stop()


def race(servers: list[ServerProcess], user: str, sides: list[str] | None = None,
         ) -> list[tuple[str, grpc.StatusCode | None, str]]:
    """Every writer fires its one write at the same moment; returns (tuple, code, details)."""
    stubs = [pb_grpc.GraphServiceStub(s.channel()) for s in servers]
    tuples = sides or STAFF + CLIENT
    plan = [tuples[i % len(tuples)].format(u=user) for i in range(WRITERS)]
    results: list[tuple[str, grpc.StatusCode | None, str]] = [("", None, "")] * WRITERS
    barrier = threading.Barrier(WRITERS)

    def writer(i: int) -> None:
        stub = stubs[i % len(stubs)]  # alternate between the two server processes
        barrier.wait()
        try:
            stub.WriteRelationships(pb.WriteRelationshipsRequest(updates=[update(plan[i])]),
                                    timeout=20)
            results[i] = (plan[i], None, "")
        except grpc.RpcError as exc:
            results[i] = (plan[i], exc.code(), exc.details() or "")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def stored_roles(server: ServerProcess, user: str) -> set[str]:
    stub = pb_grpc.GraphServiceStub(server.channel())
    found = set()
    for rtype in ("organization", "workspace"):
        req = pb.ReadRelationshipsRequest(
            filter=pb.RelationshipFilter(resource_type=rtype, subject_type="user",
                                         subject_id=user))
        req.consistency.fully_consistent = True
        for msg in stub.ReadRelationships(req):
            if msg.HasField("relationship"):
                r = msg.relationship
                found.add(f"{r.resource.type}:{r.resource.id}#{r.relation}@user:{user}")
    return found


class TestStaffClientRace:
    @pytest.mark.parametrize("round_", range(ROUNDS))
    def test_exactly_one_side_wins(self, servers: list[ServerProcess], round_: int,
                                   tmp_path: Path) -> None:
        """Racing staff and client writes leave the person on one side only, and exactly
        the winning side's writes succeeded."""
        user = f"racer{round_}{uuid.uuid4().hex[:4]}"
        results = race(servers, user)
        ok = {t for t, code, _ in results if code is None}
        refused = [(t, code, d) for t, code, d in results if code is not None]
        assert ok, results
        staff_won = any("organization:" in t for t in ok)
        winners = [s.format(u=user) for s in (STAFF if staff_won else CLIENT)]
        losers = [s.format(u=user) for s in (CLIENT if staff_won else STAFF)]
        # Every write on the winning side succeeded; none on the losing side did.
        assert ok == {t for t, _, _ in results if t in winners}
        for t, code, details in refused:
            assert t in losers
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            assert details.startswith("staff_or_client:")
        # What Redis holds agrees, as read through the other process.
        assert stored_roles(servers[1], user) == set(winners)


class TestOneClientWorkspaceRace:
    @pytest.mark.parametrize("round_", range(3))
    def test_a_client_lands_in_exactly_one_workspace(self, servers: list[ServerProcess],
                                                     round_: int) -> None:
        """Writers racing to make one person a client of two workspaces: one workspace
        wins, every write for the other is refused naming client_in_one_workspace."""
        user = f"client{round_}{uuid.uuid4().hex[:4]}"
        two = ["workspace:acme#client@user:{u}", "workspace:dash#client@user:{u}"]
        results = race(servers, user, two)
        ok = {t for t, code, _ in results if code is None}
        assert len(ok) == 1, results
        for t, code, details in results:
            if code is not None:
                assert t not in ok
                assert code == grpc.StatusCode.FAILED_PRECONDITION
                assert details.startswith("client_in_one_workspace:")
        assert stored_roles(servers[1], user) == ok
