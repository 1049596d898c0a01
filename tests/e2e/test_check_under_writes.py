"""Check and CheckBulk stay consistent while writes land.

Check and CheckBulk are answered on the transport's poll thread while the
index follows writes on the event loop's thread. A writer grants a person
admin on two workspaces in one atomic write and takes both away in the next;
meanwhile readers ask about both workspaces at once. No answer may mix the
two states: a CheckBulk sees one revision of the graph for all its items, and
a client's successive answers never go back in revision.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from tests.conftest import ServerProcess, start_on_store
from tests.e2e.test_graph_service import ref, update

GRANTS = ["workspace:acme#admin@user:zed", "workspace:globex#admin@user:zed"]
ACME_FLOW, GLOBEX_FLOW = "data_flow:acme-ads-daily", "data_flow:globex-finance"
ITEMS = 1000  # long enough that a write applied mid-batch would show
SECONDS = 4.0


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> ServerProcess:
    srv = start_on_store(request, tmp_path_factory, request.param, "--policy", "policies/coupler",
                         "--data", "examples/coupler.data.yaml")
    yield srv  # type: ignore[misc]
    srv.stop()


def toggle(server: ServerProcess, stop: threading.Event, written: list[int]) -> None:
    stub = gpb_grpc.GraphServiceStub(server.channel())
    grant = True
    while not stop.is_set():
        op = (gpb.RelationshipUpdate.OPERATION_TOUCH if grant
              else gpb.RelationshipUpdate.OPERATION_DELETE)
        stub.WriteRelationships(gpb.WriteRelationshipsRequest(
            updates=[update(g, op) for g in GRANTS]), timeout=10)
        written[0] += 1
        grant = not grant


def bulk_request() -> apb.CheckBulkRequest:
    items = []
    for i in range(ITEMS):
        flow = ACME_FLOW if i % 2 == 0 else GLOBEX_FLOW
        items.append(apb.CheckRequest(subject=ref("user:zed"), action="delete",
                                      resource=ref(flow)))
    return apb.CheckBulkRequest(items=items)


class TestUnderWrites:
    def test_bulk_answers_come_from_one_state(self, server: ServerProcess) -> None:
        stub = apb_grpc.AuthorizationServiceStub(server.channel())
        stop, written = threading.Event(), [0]
        writer = threading.Thread(target=toggle, args=(server, stop, written))
        writer.start()
        req = bulk_request()
        seen: set[bool] = set()
        calls = 0
        try:
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                resp = stub.CheckBulk(req, timeout=10)
                decisions = {r.response.decision for r in resp.results}
                assert len(decisions) == 1, f"one CheckBulk saw both states at {resp.revision}"
                seen.add(decisions == {apb.DECISION_ALLOW})
                calls += 1
        finally:
            stop.set()
            writer.join(15)
        assert written[0] > 10 and calls > 10
        assert seen == {True, False}, "the writer never showed both states to the reader"

    def test_revisions_never_go_back_and_pairs_agree(self, server: ServerProcess) -> None:
        stub = apb_grpc.AuthorizationServiceStub(server.channel())
        stop, written = threading.Event(), [0]
        writer = threading.Thread(target=toggle, args=(server, stop, written))
        writer.start()
        last = 0
        try:
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                a = stub.Check(apb.CheckRequest(subject=ref("user:zed"), action="delete",
                                                resource=ref(ACME_FLOW)), timeout=10)
                # Asked at least as fresh as the first answer: the same state or a later one.
                b = stub.Check(apb.CheckRequest(
                    subject=ref("user:zed"), action="delete", resource=ref(GLOBEX_FLOW),
                    consistency=apb.Consistency(at_least_as_fresh=a.revision)), timeout=10)
                assert int(a.revision) >= last and int(b.revision) >= int(a.revision)
                if a.revision == b.revision:
                    assert a.decision == b.decision
                last = int(b.revision)
        finally:
            stop.set()
            writer.join(15)
        assert written[0] > 10


@pytest.mark.parametrize("method", ["/gatehouse.v1.AuthorizationService/Check",
                                    "/gatehouse.v1.AuthorizationService/CheckBulk",
                                    "/gatehouse.v1.GraphService/WriteRelationships",
                                    "/gatehouse.v1.UsageService/ComputeUsage"])
def test_undecodable_request_is_invalid_argument(server: ServerProcess, method: str) -> None:
    """Bytes that are not the method's message: INVALID_ARGUMENT, on the inline and async paths."""
    call = server.channel().unary_unary(method)
    with pytest.raises(grpc.RpcError) as err:
        call(b"\xff\xff\xff", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "request: not a valid protobuf message"
