"""Differential over the wire: a few generated cases through a real gRPC server.

Each example starts `gatehouse serve` on loopback (memory store) with the
generated policy, writes the generated graph through GraphService, and
compares Check (with explanations), CheckBulk, ListAccessible (paged by
cursor) and ComputeUsage with the reference and the recount, so conversion of
contexts, cursors, revisions and usage values is covered too.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from gatehouse.v1 import usage_pb2 as upb
from gatehouse.v1 import usage_pb2_grpc as upb_grpc
from tests.conftest import start_server
from tests.differential import harness
from tests.differential.model import (
    ACTIONS,
    ORGS,
    STRANGER,
    USERS,
    GraphCase,
    PolicyCase,
    Reference,
    contexts,
    graphs,
    policies,
)
from tests.differential.test_usage import Recount
from tests.e2e.test_graph_service import ref, update

SUBJECTS = (*USERS, STRANGER)


@st.composite
def cases(draw: st.DrawFn) -> tuple[PolicyCase, GraphCase, dict[str, Any], int]:
    policy = draw(policies(with_usage=True))
    return policy, draw(graphs(policy)), draw(contexts(nan=False)), draw(st.integers(0, 99))


def _write(graph_stub: gpb_grpc.GraphServiceStub, graph: GraphCase) -> str:
    parents = sorted((r for r in graph.rels if r[1] == "parent"),
                     key=lambda r: (r[0].startswith("doc:"), r))
    revision = ""
    if parents:
        revision = graph_stub.WriteRelationships(gpb.WriteRelationshipsRequest(
            updates=[update(f"{r}#{rel}@{s}") for r, rel, s in parents]), timeout=10).revision
    if graph.attrs:
        updates = []
        for key, attrs in sorted(graph.attrs.items()):
            body = Struct()
            body.update(attrs)
            updates.append(gpb.ObjectUpdate(operation=gpb.ObjectUpdate.OPERATION_PUT,
                                            object=ref(key), attributes=body))
        revision = graph_stub.WriteObjects(gpb.WriteObjectsRequest(updates=updates),
                                           timeout=10).revision
    rest = sorted(r for r in graph.rels if r[1] != "parent")
    if rest:
        revision = graph_stub.WriteRelationships(gpb.WriteRelationshipsRequest(
            updates=[update(f"{r}#{rel}@{s}") for r, rel, s in rest]), timeout=10).revision
    return revision


def _compare(channel: grpc.Channel, policy: PolicyCase, graph: GraphCase,
             ctx: dict[str, Any], seed: int) -> None:
    authz = apb_grpc.AuthorizationServiceStub(channel)
    usage = upb_grpc.UsageServiceStub(channel)
    revision = _write(gpb_grpc.GraphServiceStub(channel), graph)
    reference = Reference(policy, graph)
    where = harness.describe(policy, graph, ctx)
    context = Struct()
    context.update(ctx)
    items: list[apb.CheckRequest] = []
    wanted: list[bool] = []
    for resource in harness.resources(graph):
        rtype = resource.split(":")[0]
        for action in ACTIONS[rtype]:
            for subject in SUBJECTS:
                req = apb.CheckRequest(subject=ref(subject), action=action,
                                       resource=ref(resource), context=context, explain=True)
                if revision:
                    req.consistency.at_least_as_fresh = revision
                resp = authz.Check(req, timeout=10)
                want = reference.allowed(subject, action, resource, ctx)
                assert (resp.decision == apb.DECISION_ALLOW) == want, \
                    f"Check {subject} {action} {resource}: {resp}{where}"
                harness.check_trace(reference, subject, resource, list(resp.explanation.trace))
                req.explain = False
                items.append(req)
                wanted.append(want)
    bulk = authz.CheckBulk(apb.CheckBulkRequest(items=items), timeout=30)
    got = [r.response.decision == apb.DECISION_ALLOW for r in bulk.results]
    assert got == wanted, where
    harness.COUNTS["wire check"] += 2 * len(items)
    rnd = random.Random(seed)
    for subject in SUBJECTS:
        for rtype in ("org", "ws", "doc"):
            action = rnd.choice(ACTIONS[rtype])
            allowed = sorted(r.split(":")[1] for r in harness.resources(graph)
                             if r.startswith(rtype + ":")
                             and reference.allowed(subject, action, r, ctx))
            listed: list[str] = []
            cursor = ""
            for _ in range(50):
                req = apb.ListAccessibleRequest(subject=ref(subject), resource_type=rtype,
                                                action=action, page_size=rnd.randint(1, 3),
                                                cursor=cursor, context=context)
                last = None
                for part in authz.ListAccessible(req, timeout=10):
                    listed.extend(part.resource_ids)
                    last = part
                assert last is not None
                cursor = last.next_cursor
                if last.complete:
                    break
            assert listed == allowed, f"ListAccessible {subject} {action} {rtype}: " \
                f"{listed} != {allowed}{where}"
            harness.COUNTS["wire list"] += 1
    recount = Recount(policy, graph)
    for org in ORGS:
        if not graph.exists(org):
            continue
        oid = org.split(":")[1]
        resp = usage.ComputeUsage(upb.ComputeUsageRequest(organization_id=oid), timeout=10)
        plan, fallback = recount.plan(org)
        assert (resp.plan, resp.plan_is_fallback) == (plan, fallback), where
        for m in resp.metrics:
            assert m.value == recount.org_value(m.name, org), (m, where)
            harness.COUNTS["wire usage"] += 1


class TestWireAgreesWithReference:
    @settings(max_examples=max(3, harness.EXAMPLES // 100), deadline=None,
              phases=harness.PHASES,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(cases())
    def test_grpc_answers_equal_the_reference(
            self, case: tuple[PolicyCase, GraphCase, dict[str, Any], int]) -> None:
        """Through a real server: Check with explain, CheckBulk, paged ListAccessible
        and ComputeUsage equal the reference reading of the docs."""
        policy, graph, ctx, seed = case
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "generated"
            folder.mkdir()
            (folder / "policy.yaml").write_text(policy.yaml())
            server = start_server(Path(tmp), "--policy", str(folder))
            try:
                _compare(server.channel(), policy, graph, ctx, seed)
            finally:
                server.stop()


def teardown_module() -> None:
    """Print how many values were compared so far (seen with ``pytest -s``)."""
    print(f"\ndifferential so far: {dict(harness.COUNTS)}")
