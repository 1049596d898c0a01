"""UsageService over real gRPC, on the memory store and on Redis: the seed's
worked examples, every counting rule, recording with de-duplication, limits."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from gatehouse.v1 import usage_pb2 as pb
from gatehouse.v1 import usage_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, start_on_store, start_server
from tests.e2e.test_graph_service import ref, update
from tests.redis_server import RedisServer

DATA = "tests/testdata/usage/billing.data.yaml"


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    proc = start_on_store(request, tmp_path_factory, request.param, "--policy",
                          "policies/coupler", "--data", DATA)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def usage(server: ServerProcess) -> pb_grpc.UsageServiceStub:
    return pb_grpc.UsageServiceStub(server.channel())


@pytest.fixture(scope="module")
def graph(server: ServerProcess) -> gpb_grpc.GraphServiceStub:
    return gpb_grpc.GraphServiceStub(server.channel())


def metrics(resp: pb.ComputeUsageResponse) -> dict[str, pb.MetricUsage]:
    return {m.name: m for m in resp.metrics}


def breakdown(m: pb.MetricUsage, dimension: str) -> dict[str, float]:
    return dict(m.by_workspace if dimension == "workspace" else m.by_source_type)


def compute(usage: pb_grpc.UsageServiceStub, org: str, ws: str = "",
            at: str = "") -> dict[str, pb.MetricUsage]:
    req = pb.ComputeUsageRequest(organization_id=org, workspace_id=ws)
    if at:
        req.consistency.at_least_as_fresh = at
    return metrics(usage.ComputeUsage(req, timeout=10))


def event(eid: str, ws: str, metric: str, amount: float = 1, dim: str = "",
          when: float | None = None) -> pb.UsageEvent:
    e = pb.UsageEvent(event_id=eid, workspace_id=ws, metric=metric, amount=amount,
                      dimension=dim)
    if when is not None:
        ts = Timestamp()
        ts.FromNanoseconds(int(when * 1e9))
        e.event_time.CopyFrom(ts)
    return e


class TestSeedExamples:
    def test_three_unique_users(self, usage: pb_grpc.UsageServiceStub) -> None:
        """Owner + user1 + user2 = 3 users: user1 in two workspaces counts once, by email,
        and the owner counts in every workspace."""
        org = compute(usage, "example")
        assert org["users"].value == 3
        assert breakdown(org["users"], "workspace") == {"a": 3, "b": 2}
        assert compute(usage, "example", "b")["users"].value == 2

    def test_three_asana_accounts(self, usage: pb_grpc.UsageServiceStub) -> None:
        """Marketing's 2 Asana credentials + Engineering's 1 = 3, though one credential
        is the same in both; reusing a credential inside a workspace adds nothing."""
        org = compute(usage, "acct")
        per_source = breakdown(org["accounts"], "source_type")
        assert per_source["asana"] == 3
        marketing = compute(usage, "acct", "marketing")["accounts"]
        assert breakdown(marketing, "source_type")["asana"] == 2


class TestCountingRules:
    def test_tenant_and_url_sources(self, usage: pb_grpc.UsageServiceStub) -> None:
        """Tenant-based sources count each distinct selected tenant; URL-based sources
        count each connection even for the same URL; workspaces sum."""
        org = compute(usage, "acct")
        per_source = breakdown(org["accounts"], "source_type")
        assert per_source == {"asana": 3, "google_ads": 3, "csv": 2}
        assert org["accounts"].value == 8
        assert breakdown(org["accounts"], "workspace") == {"marketing": 5, "engineering": 3}

    def test_workspaces_destinations_and_plan(self, usage: pb_grpc.UsageServiceStub) -> None:
        """Workspaces are counted; destination types are distinct across the organization."""
        resp = usage.ComputeUsage(pb.ComputeUsageRequest(organization_id="acct"))
        got = metrics(resp)
        assert got["workspaces"].value == 2
        assert got["destination_types"].value == 2
        assert breakdown(got["destination_types"], "workspace") == {"marketing": 2,
                                                                    "engineering": 1}
        assert resp.plan == "business" and not resp.plan_is_fallback
        assert "domain_autojoin" in resp.features
        assert got["users"].HasField("limit") and got["users"].limit == 25
        assert not got["workspaces"].HasField("limit")  # unlimited on business

    def test_unknown_plan_falls_back_to_most_restrictive(
        self, usage: pb_grpc.UsageServiceStub
    ) -> None:
        """An organization whose plan is unknown gets the fallback plan's limits, flagged."""
        resp = usage.ComputeUsage(pb.ComputeUsageRequest(organization_id="mystery"))
        assert resp.plan == "free" and resp.plan_is_fallback
        got = metrics(resp)
        assert got["workspaces"].limit == 1
        # A member without an email is still counted, as themself.
        assert got["users"].value == 2


class TestRecordUsage:
    def test_sum_count_max_and_rollup(self, usage: pb_grpc.UsageServiceStub) -> None:
        """Recorded counters aggregate per metric and roll up across workspaces."""
        tag = uuid.uuid4().hex[:6]
        resp = usage.RecordUsage(pb.RecordUsageRequest(organization_id="example", events=[
            event(f"{tag}-1", "a", "llm_credits", 2.5),
            event(f"{tag}-2", "b", "llm_credits", 4),
            event(f"{tag}-3", "a", "ai_insights_generations"),
            event(f"{tag}-4", "a", "ai_insights_generations"),
            event(f"{tag}-5", "a", "source_import_rows", 700, "src-1"),
            event(f"{tag}-6", "b", "source_import_rows", 300, "src-2"),
            event(f"{tag}-7", "b", "source_import_rows", 900, "src-2"),
        ]))
        assert [r.duplicate for r in resp.results] == [False] * 7
        got = compute(usage, "example")
        assert got["llm_credits"].value >= 6.5
        assert breakdown(got["llm_credits"], "workspace")["a"] >= 2.5
        assert got["source_import_rows"].value >= 900
        assert compute(usage, "example", "a")["source_import_rows"].value >= 700

    def test_retry_never_counts_twice(self, usage: pb_grpc.UsageServiceStub) -> None:
        """The same event id again is answered as a duplicate and changes nothing."""
        eid = f"retry-{uuid.uuid4().hex}"
        before = compute(usage, "example")["llm_credits"].value
        first = usage.RecordUsage(pb.RecordUsageRequest(
            organization_id="example", events=[event(eid, "a", "llm_credits", 10)]))
        again = usage.RecordUsage(pb.RecordUsageRequest(
            organization_id="example", events=[event(eid, "a", "llm_credits", 10)]))
        assert (first.results[0].duplicate, again.results[0].duplicate) == (False, True)
        assert compute(usage, "example")["llm_credits"].value == before + 10

    def test_concurrent_retries_count_once(self, usage: pb_grpc.UsageServiceStub) -> None:
        """Sixteen concurrent deliveries of one event: exactly one counts."""
        eid = f"race-{uuid.uuid4().hex}"
        before = compute(usage, "example")["llm_credits"].value
        results: list[bool] = []
        barrier = threading.Barrier(16)

        def send() -> None:
            barrier.wait()
            r = usage.RecordUsage(pb.RecordUsageRequest(
                organization_id="example", events=[event(eid, "b", "llm_credits", 1)]))
            results.append(r.results[0].duplicate)

        threads = [threading.Thread(target=send) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sorted(results) == [False] + [True] * 15
        assert compute(usage, "example")["llm_credits"].value == before + 1

    @pytest.mark.parametrize(
        ("ev", "field"),
        [
            (event("", "a", "llm_credits"), "events[0].event_id"),
            (event("x1", "a", "no_such_metric"), "events[0].metric"),
            (event("x2", "a", "users"), "events[0].metric"),
            (event("x3", "a", "llm_credits", -1), "events[0].amount"),
            (event("x4", "a", "llm_credits", float("nan")), "events[0].amount"),
            (event("x5", "a", "llm_credits", 1, when=time.time() - 40 * 86400),
             "events[0].event_time"),
            (event("x6", "a", "llm_credits", 1, when=time.time() + 86400),
             "events[0].event_time"),
        ],
    )
    def test_bad_events_are_invalid_and_record_nothing(
        self, usage: pb_grpc.UsageServiceStub, ev: pb.UsageEvent, field: str
    ) -> None:
        """A bad event fails the call INVALID_ARGUMENT naming it; the good one beside it
        is not recorded either."""
        good_id = f"good-{uuid.uuid4().hex}"
        with pytest.raises(grpc.RpcError) as info:
            usage.RecordUsage(pb.RecordUsageRequest(organization_id="example", events=[
                ev, event(good_id, "a", "llm_credits", 1)]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(field), info.value.details()
        retry = usage.RecordUsage(pb.RecordUsageRequest(
            organization_id="example", events=[event(good_id, "a", "llm_credits", 0)]))
        assert retry.results[0].duplicate is False  # it was never recorded

    def test_unknown_workspace_or_organization_is_not_found(
        self, usage: pb_grpc.UsageServiceStub
    ) -> None:
        """Events for a workspace outside the organization, or an unknown org, are NOT_FOUND."""
        for org, ws in (("example", "marketing"), ("nope", "a")):
            with pytest.raises(grpc.RpcError) as info:
                usage.RecordUsage(pb.RecordUsageRequest(
                    organization_id=org, events=[event(uuid.uuid4().hex, ws, "llm_credits")]))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND


class TestCheckLimit:
    def test_member_already_counted_costs_no_seat(
        self, usage: pb_grpc.UsageServiceStub
    ) -> None:
        """Adding someone already counted in the org is free; a new email adds a seat."""
        known = usage.CheckLimit(pb.CheckLimitRequest(
            organization_id="example",
            add_member=pb.AddMember(workspace_id="b", email="User2@Example.com")))
        assert known.allowed
        (users,) = [c for c in known.checks if c.metric == "users"]
        assert users.proposed == users.current == 3
        new = usage.CheckLimit(pb.CheckLimitRequest(
            organization_id="example",
            add_member=pb.AddMember(workspace_id="b", email="new@example.com")))
        (users,) = [c for c in new.checks if c.metric == "users"]
        assert users.proposed == 4 and new.allowed  # pro allows 10

    def test_connect_account_understands_dedup(self, usage: pb_grpc.UsageServiceStub) -> None:
        """A credential already in the workspace adds nothing; new tenants add one each."""
        same = usage.CheckLimit(pb.CheckLimitRequest(organization_id="acct", connect_account=(
            pb.ConnectAccount(workspace_id="marketing", source_type="asana",
                              credential_id="cred-2"))))
        (acc,) = [c for c in same.checks if c.metric == "accounts"]
        assert acc.proposed == acc.current
        tenants = usage.CheckLimit(pb.CheckLimitRequest(organization_id="acct", connect_account=(
            pb.ConnectAccount(workspace_id="marketing", source_type="google_ads",
                              credential_id="g9", tenants=["ads-3", "ads-4", "ads-5"]))))
        (acc,) = [c for c in tenants.checks if c.metric == "accounts"]
        assert acc.proposed == acc.current + 2

    def test_downgrade_keeps_workspaces_but_blocks_new_ones(
        self, usage: pb_grpc.UsageServiceStub, graph: gpb_grpc.GraphServiceStub,
        server: ServerProcess,
    ) -> None:
        """After a downgrade below usage, Checks on existing workspaces are unchanged, but
        creating another is refused naming the workspaces limit."""
        org = f"down{uuid.uuid4().hex[:6]}"
        graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[
            update(f"workspace:{org}-{i}#parent@organization:{org}") for i in range(3)
        ] + [update(f"organization:{org}#owner@user:boss"),
             update(f"workspace:{org}-2#admin@user:worker")]))
        obj = gpb.ObjectUpdate(operation=gpb.ObjectUpdate.OPERATION_PUT,
                               object=ref(f"organization:{org}"))
        obj.attributes.update({"plan": "pro"})
        w = graph.WriteObjects(gpb.WriteObjectsRequest(updates=[obj]))
        ok = usage.CheckLimit(pb.CheckLimitRequest(
            organization_id=org, create_workspace=pb.CreateWorkspace(),
            consistency=apb.Consistency(at_least_as_fresh=w.revision)))
        assert ok.allowed and ok.plan == "pro"

        obj.attributes.update({"plan": "starter"})
        w = graph.WriteObjects(gpb.WriteObjectsRequest(updates=[obj]))
        refused = usage.CheckLimit(pb.CheckLimitRequest(
            organization_id=org, create_workspace=pb.CreateWorkspace(),
            consistency=apb.Consistency(at_least_as_fresh=w.revision)))
        assert not refused.allowed
        assert refused.reason.startswith("workspaces: 4 would exceed the limit of 1")
        (ws,) = [c for c in refused.checks if c.metric == "workspaces"]
        assert (ws.current, ws.proposed, ws.limit, ws.allowed) == (3, 4, 1, False)
        over = compute(usage, org, at=w.revision)["workspaces"]
        assert over.over and over.value == 3
        authz = apb_grpc.AuthorizationServiceStub(server.channel())
        check = authz.Check(apb.CheckRequest(
            subject=ref("user:worker"), action="manage_members",
            resource=ref(f"workspace:{org}-2"),
            consistency=apb.Consistency(at_least_as_fresh=w.revision)))
        assert check.decision == apb.DECISION_ALLOW

    def test_recorded_amount_against_limit(self, usage: pb_grpc.UsageServiceStub) -> None:
        """A recorded amount that would pass the monthly limit is refused, naming it."""
        resp = usage.CheckLimit(pb.CheckLimitRequest(organization_id="mystery", record=(
            pb.RecordAmount(workspace_id="m1", metric="llm_credits", amount=11))))
        assert not resp.allowed
        assert resp.reason.startswith("llm_credits:")

    def test_bad_requests(self, usage: pb_grpc.UsageServiceStub) -> None:
        """No change, or an unknown workspace, are precise errors."""
        with pytest.raises(grpc.RpcError) as info:
            usage.CheckLimit(pb.CheckLimitRequest(organization_id="example"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("change:")
        with pytest.raises(grpc.RpcError) as info:
            usage.ComputeUsage(pb.ComputeUsageRequest(organization_id="example",
                                                      metrics=["bogus"]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("metrics[0]:")


class TestFreshness:
    def test_usage_follows_graph_writes(self, usage: pb_grpc.UsageServiceStub,
                                        graph: gpb_grpc.GraphServiceStub) -> None:
        """Usage read at a write's revision reflects it: a new flow's destination, a
        member's changed email, a removed connection."""
        before = compute(usage, "acct")
        flow = gpb.ObjectUpdate(operation=gpb.ObjectUpdate.OPERATION_PUT,
                                object=ref(f"data_flow:fresh-{uuid.uuid4().hex[:6]}"))
        flow.attributes.update({"destination_type": f"dest-{uuid.uuid4().hex[:6]}"})
        graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[update(
            f"{flow.object.type}:{flow.object.id}#parent@workspace:engineering")]))
        w = graph.WriteObjects(gpb.WriteObjectsRequest(updates=[flow]))
        after = compute(usage, "acct", at=w.revision)
        assert after["destination_types"].value == before["destination_types"].value + 1

        ex_before = compute(usage, "example")["users"].value
        alias = gpb.ObjectUpdate(operation=gpb.ObjectUpdate.OPERATION_PUT,
                                 object=ref("user:user1-alias"))
        alias.attributes.update({"email": f"someone-else-{uuid.uuid4().hex[:4]}@example.com"})
        w = graph.WriteObjects(gpb.WriteObjectsRequest(updates=[alias]))
        assert compute(usage, "example", at=w.revision)["users"].value == ex_before + 1
        alias.attributes.update({"email": "user1@example.com"})
        w = graph.WriteObjects(gpb.WriteObjectsRequest(updates=[alias]))
        assert compute(usage, "example", at=w.revision)["users"].value == ex_before

        w = graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[update(
            "connection:e-csv-2#parent@workspace:engineering",
            gpb.RelationshipUpdate.OPERATION_DELETE)]))
        now = compute(usage, "acct", at=w.revision)
        assert breakdown(now["accounts"], "source_type")["csv"] == 1


class TestAggregations:
    def test_distinct_and_latest_through_a_policy_that_declares_them(
        self, tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
    ) -> None:
        """`distinct` counts each dimension once across workspaces; `latest` keeps the
        newest amount per dimension, so a late event never overwrites a newer one."""
        import shutil

        from tests.conftest import ROOT

        tmp = tmp_path_factory.mktemp("aggs")
        policy = tmp / "policy"
        shutil.copytree(ROOT / "policies/coupler", policy, ignore=shutil.ignore_patterns("tests"))
        text = (policy / "policy.yaml").read_text()
        text = text.replace("metrics:\n", "metrics:\n  active_sources:\n    recorded: distinct\n"
                            "  stored_rows:\n    recorded: latest\n", 1)
        (policy / "policy.yaml").write_text(text)
        for store in ("memory", "redis"):
            args = ["--policy", str(policy), "--data", DATA]
            if store == "redis":
                args += ["--redis-url", redis_server.url, "--redis-prefix",
                         f"agg{uuid.uuid4().hex[:6]}"]
            server = start_server(tmp, *args)
            try:
                stub = pb_grpc.UsageServiceStub(server.channel())
                now = time.time()
                stub.RecordUsage(pb.RecordUsageRequest(organization_id="example", events=[
                    event("d1", "a", "active_sources", dim="src-1"),
                    event("d2", "a", "active_sources", dim="src-1"),
                    event("d3", "b", "active_sources", dim="src-1"),
                    event("d4", "b", "active_sources", dim="src-2"),
                    event("l1", "a", "stored_rows", 100, "table-1", when=now - 60),
                    event("l2", "a", "stored_rows", 300, "table-1", when=now - 10),
                    event("l3", "a", "stored_rows", 200, "table-1", when=now - 30),  # late
                    event("l4", "b", "stored_rows", 50, "table-9", when=now - 5),
                ]))
                with pytest.raises(grpc.RpcError) as info:
                    stub.RecordUsage(pb.RecordUsageRequest(organization_id="example", events=[
                        event("d5", "a", "active_sources")]))
                assert info.value.details().startswith("events[0].dimension")
                got = compute(stub, "example")
                assert got["active_sources"].value == 2, store
                assert breakdown(got["active_sources"], "workspace") == {"a": 1, "b": 2}
                assert got["stored_rows"].value == 350, store
                assert compute(stub, "example", "a")["stored_rows"].value == 300
            finally:
                server.stop()
