"""Hostile input at the gRPC edge: each finding of the review, over real gRPC on
both stores. Expected everywhere: INVALID_ARGUMENT naming the field (per item
in CheckBulk), bounded work, nothing written, and the server answering on."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from gatehouse.v1 import usage_pb2 as upb
from gatehouse.v1 import usage_pb2_grpc as upb_grpc
from tests.conftest import ServerProcess, start_on_store
from tests.e2e.test_graph_service import ref, relationship, update

DATA = "tests/testdata/usage/billing.data.yaml"
# superscript two, Arabic-Indic three, fullwidth three, ...
NON_ASCII_DIGITS = ["\u00b2", "\u0663", "\uff13", "1\u00b2", "\u0663\u0663",
                    "+1", " 1", "1 ", "-1", "1e3", "0x1",
                    "18446744073709551616", "1" * 21]


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    proc = start_on_store(request, tmp_path_factory, request.param, "--policy",
                          "policies/coupler", "--data", DATA)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def authz(server: ServerProcess) -> apb_grpc.AuthorizationServiceStub:
    return apb_grpc.AuthorizationServiceStub(server.channel())


@pytest.fixture(scope="module")
def graph(server: ServerProcess) -> gpb_grpc.GraphServiceStub:
    return gpb_grpc.GraphServiceStub(server.channel())


@pytest.fixture(scope="module")
def usage(server: ServerProcess) -> upb_grpc.UsageServiceStub:
    return upb_grpc.UsageServiceStub(server.channel())


def check_req(**kw: object) -> apb.CheckRequest:
    req = apb.CheckRequest(subject=ref("user:user1"), action="view",
                           resource=ref("workspace:a"))
    for k, v in kw.items():
        setattr(req, k, v)
    return req


def refused(call: object, *args: object, **kw: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, timeout=10, **kw)  # type: ignore[operator]
        if hasattr(result, "__iter__") and not isinstance(result, bytes):
            list(result)
    return info.value


def head(graph: gpb_grpc.GraphServiceStub) -> str:
    """The revision a fully consistent read answers at."""
    last = list(graph.ReadRelationships(gpb.ReadRelationshipsRequest(
        filter=gpb.RelationshipFilter(resource_type="organization"), page_size=1,
        consistency=apb.Consistency(fully_consistent=True)), timeout=10))[-1]
    return last.revision


def nested_struct(depth: int) -> Struct:
    inner = Struct()
    inner.fields["leaf"].number_value = 1
    for _ in range(depth - 1):
        outer = Struct()
        outer.fields["k"].struct_value.CopyFrom(inner)
        inner = outer
    return inner


class TestRevisions:
    @pytest.mark.parametrize("text", NON_ASCII_DIGITS)
    def test_check_refuses_a_revision_that_is_not_ascii_digits(
            self, authz: apb_grpc.AuthorizationServiceStub, text: str) -> None:
        """Superscript, Arabic-Indic, fullwidth digits, signs, spaces, overflow: not revisions."""
        req = check_req()
        req.consistency.at_least_as_fresh = text
        err = refused(authz.Check, req)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("consistency.at_least_as_fresh:")

    def test_bulk_and_reads_refuse_them_too(self, authz: apb_grpc.AuthorizationServiceStub,
                                            graph: gpb_grpc.GraphServiceStub) -> None:
        """Every place a revision is read applies the same strict parse."""
        bulk = apb.CheckBulkRequest(items=[check_req()])
        bulk.consistency.at_least_as_fresh = "\u00b2"
        assert refused(authz.CheckBulk, bulk).code() == grpc.StatusCode.INVALID_ARGUMENT
        read = gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
            resource_type="workspace"))
        read.consistency.at_least_as_fresh = "\u0663"
        assert refused(graph.ReadRelationships, read).code() == \
            grpc.StatusCode.INVALID_ARGUMENT
        err = refused(graph.Watch, gpb.WatchRequest(after_revision="\uff13"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("after_revision:")

    def test_the_largest_uint64_is_a_revision(self,
                                              authz: apb_grpc.AuthorizationServiceStub) -> None:
        """2^64-1 parses, and (never issued) is refused at once: FAILED_PRECONDITION."""
        req = check_req()
        req.consistency.at_least_as_fresh = str(2**64 - 1)
        err = refused(authz.Check, req)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.details().startswith("consistency.at_least_as_fresh: revision "
                                        f"{2**64 - 1} is ahead of the store")


class TestContext:
    @pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
    def test_non_finite_numbers_in_a_context_are_refused(
            self, authz: apb_grpc.AuthorizationServiceStub, number: float) -> None:
        """NaN and Infinity are not numbers a condition can compare: the field is named."""
        req = check_req()
        req.context.fields["score"].number_value = number
        err = refused(authz.Check, req)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("context.score:")

    def test_one_bad_item_does_not_fail_a_bulk_call(
            self, authz: apb_grpc.AuthorizationServiceStub) -> None:
        """Only the item with NaN gets an error status; its neighbours are decided."""
        bad = check_req()
        bad.context.fields["x"].list_value.values.add().number_value = float("nan")
        resp = authz.CheckBulk(apb.CheckBulkRequest(items=[check_req(), bad, check_req()]),
                               timeout=10)
        assert [r.WhichOneof("result") for r in resp.results] == \
            ["response", "error", "response"]
        assert resp.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert resp.results[1].error.message.startswith("items[1].context.x[0]:")
        assert resp.results[0].response.decision == apb.DECISION_ALLOW

    def test_an_oversized_context_is_refused_even_if_no_rule_reads_it(
            self, authz: apb_grpc.AuthorizationServiceStub) -> None:
        """A context over the size cap is refused before any decision, naming the cap."""
        req = check_req()
        req.context.fields["blob"].string_value = "x" * (64 << 10)
        err = refused(authz.Check, req)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("context:") and "at most" in err.details()

    def test_a_too_deep_context_is_refused(self,
                                           authz: apb_grpc.AuthorizationServiceStub) -> None:
        """Nesting past the depth cap is refused; just inside it is decided."""
        req = check_req()
        req.context.CopyFrom(nested_struct(20))
        err = refused(authz.Check, req)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "nested deeper than" in err.details()
        ok = check_req()
        ok.context.CopyFrom(nested_struct(8))
        assert authz.Check(ok, timeout=10).decision == apb.DECISION_ALLOW

    def test_bulk_contexts_are_capped_in_total(
            self, authz: apb_grpc.AuthorizationServiceStub) -> None:
        """Many items each under the per-item cap still cannot add up past the call's cap."""
        items = []
        for _ in range(40):
            item = check_req()
            item.context.fields["blob"].string_value = "y" * (15 << 10)
            items.append(item)
        err = refused(authz.CheckBulk, apb.CheckBulkRequest(items=items))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("items: contexts total")

    def test_non_finite_attributes_are_refused_and_nothing_is_written(
            self, graph: gpb_grpc.GraphServiceStub) -> None:
        """WriteObjects with NaN in an attribute names it and leaves the revision alone."""
        before = head(graph)
        attrs = Struct()
        attrs.fields["name"].number_value = float("inf")
        err = refused(graph.WriteObjects, gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
            operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref("workspace:a"),
            attributes=attrs)]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("updates[0].attributes.name:")
        assert head(graph) == before


class TestCursors:
    @pytest.mark.parametrize("raw", [b"[" * 100_000, b"{" * 5000, b"\xff\xfe", b"",
                                     b"c1\x1fxx\x1f1\x1fa"])
    def test_forged_cursors_are_invalid_argument(
            self, authz: apb_grpc.AuthorizationServiceStub, graph: gpb_grpc.GraphServiceStub,
            raw: bytes) -> None:
        """Deep nesting, bad encodings and wrong tags are refused, never UNKNOWN."""
        text = base64.urlsafe_b64encode(raw).decode().rstrip("=") or "!"
        err = refused(authz.ListAccessible, apb.ListAccessibleRequest(
            subject=ref("user:user1"), resource_type="data_flow", action="view", cursor=text))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("cursor:")
        err = refused(graph.ReadRelationships, gpb.ReadRelationshipsRequest(
            filter=gpb.RelationshipFilter(resource_type="workspace"), cursor=text))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("cursor:")

    def test_a_read_cursor_is_bound_to_its_filter(self,
                                                  graph: gpb_grpc.GraphServiceStub) -> None:
        """A ReadRelationships cursor replayed with another filter is refused, not answered."""
        first = list(graph.ReadRelationships(gpb.ReadRelationshipsRequest(
            filter=gpb.RelationshipFilter(resource_type="workspace"), page_size=1), timeout=10))
        cursor = first[-1].next_cursor
        assert cursor and not first[-1].complete
        err = refused(graph.ReadRelationships, gpb.ReadRelationshipsRequest(
            filter=gpb.RelationshipFilter(resource_type="data_flow"), cursor=cursor))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "another listing" in err.details()
        more = list(graph.ReadRelationships(gpb.ReadRelationshipsRequest(
            filter=gpb.RelationshipFilter(resource_type="workspace"), cursor=cursor,
            page_size=1), timeout=10))
        assert more[0].relationship != first[0].relationship


class TestReadFilter:
    @pytest.mark.parametrize(("flt", "field"), [
        (gpb.RelationshipFilter(resource_type="workspace", relation="no_such"),
         "filter.relation"),
        (gpb.RelationshipFilter(resource_type="workspace", relation="ad\x00min"),
         "filter.relation"),
        (gpb.RelationshipFilter(resource_type="workspace", subject_type="spaceship"),
         "filter.subject_type"),
        (gpb.RelationshipFilter(resource_type="workspace", resource_id="a\x00b"),
         "filter.resource_id"),
    ])
    def test_filters_naming_nothing_the_policy_declares_are_refused(
            self, graph: gpb_grpc.GraphServiceStub, flt: gpb.RelationshipFilter,
            field: str) -> None:
        """An unknown relation, a NUL byte or an unknown subject type is an error, not 0 rows."""
        err = refused(graph.ReadRelationships, gpb.ReadRelationshipsRequest(filter=flt))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith(field + ":")


class TestBoundedMessages:
    def test_a_huge_invalid_id_is_quoted_by_a_short_prefix(
            self, authz: apb_grpc.AuthorizationServiceStub) -> None:
        """A 12,000-character bad id comes back as a short prefix, so grpc-message stays small."""
        req = check_req()
        req.resource.id = "!" + "x" * 12_000
        err = refused(authz.Check, req)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("resource.id:")
        assert len(err.details()) < 400

    def test_compute_usage_refuses_repeated_and_too_many_metric_names(
            self, usage: upb_grpc.UsageServiceStub) -> None:
        """Duplicates are named; a list past the cap is refused before any work."""
        err = refused(usage.ComputeUsage, upb.ComputeUsageRequest(
            organization_id="example", metrics=["users", "workspaces", "users"]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("metrics[2]:")
        err = refused(usage.ComputeUsage, upb.ComputeUsageRequest(
            organization_id="example", metrics=["users"] * 200))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("metrics:")
        # 600,000 names do not even reach the service: past the message size cap.
        err = refused(usage.ComputeUsage, upb.ComputeUsageRequest(
            organization_id="example", metrics=["users"] * 600_000))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


class TestUsageEvents:
    def test_an_unknown_workspace_is_named_with_its_event_index(
            self, usage: upb_grpc.UsageServiceStub) -> None:
        """NOT_FOUND says which event's workspace is not the organization's."""
        events = [upb.UsageEvent(event_id=f"e-{uuid.uuid4()}", workspace_id="a",
                                 metric="llm_credits", amount=1),
                  upb.UsageEvent(event_id=f"e-{uuid.uuid4()}", workspace_id="marketing",
                                 metric="llm_credits", amount=1)]
        err = refused(usage.RecordUsage, upb.RecordUsageRequest(organization_id="example",
                                                                events=events))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert err.details().startswith("events[1].workspace_id:")

    @pytest.mark.parametrize("period", ["\uff12\uff10\uff12\uff16-11", "2026-\uff111",
                                        "2026-1\u0661"])
    def test_a_period_in_non_ascii_digits_is_refused(
            self, usage: upb_grpc.UsageServiceStub, period: str) -> None:
        """Fullwidth or Arabic-Indic digits in a period are not a month."""
        err = refused(usage.ComputeUsage, upb.ComputeUsageRequest(organization_id="example",
                                                                  period=period))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("period:")

    @pytest.mark.parametrize("amount", [1e308, 1e13, float("inf"), -1.0])
    def test_amounts_past_the_bound_are_refused(self, usage: upb_grpc.UsageServiceStub,
                                                amount: float) -> None:
        """An amount past the documented bound never reaches a counter (no infinity stored)."""
        err = refused(usage.RecordUsage, upb.RecordUsageRequest(
            organization_id="example", events=[upb.UsageEvent(
                event_id=f"e-{uuid.uuid4()}", workspace_id="a", metric="llm_credits",
                amount=amount)]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("events[0].amount:")

    @pytest.mark.parametrize(("seconds", "nanos", "field"), [
        (1_700_000_000, -1, "events[0].event_time.nanos"),
        (1_700_000_000, 1_000_000_000, "events[0].event_time.nanos"),
        (2**62, 0, "events[0].event_time.seconds"),
    ])
    def test_malformed_timestamps_are_refused(self, usage: upb_grpc.UsageServiceStub,
                                              seconds: int, nanos: int, field: str) -> None:
        """Negative or overflowing nanos and out-of-range seconds are not a time."""
        event = upb.UsageEvent(event_id=f"e-{uuid.uuid4()}", workspace_id="a",
                               metric="llm_credits", amount=1)
        event.event_time.seconds = seconds
        event.event_time.nanos = nanos
        err = refused(usage.RecordUsage, upb.RecordUsageRequest(organization_id="example",
                                                                events=[event]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith(field + ":")


class TestBatches:
    def test_the_same_create_twice_in_one_batch_is_refused(
            self, graph: gpb_grpc.GraphServiceStub) -> None:
        """Two CREATEs of one relationship name the repeat and write nothing."""
        before = head(graph)
        text = f"workspace:a#guest@user:dup-{uuid.uuid4().hex[:8]}"
        create = gpb.RelationshipUpdate.OPERATION_CREATE
        err = refused(graph.WriteRelationships, gpb.WriteRelationshipsRequest(
            updates=[update(text, create), update(text, create)]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("updates[1]:")
        assert head(graph) == before

    def test_touch_and_delete_of_one_relationship_in_one_batch_is_refused(
            self, graph: gpb_grpc.GraphServiceStub) -> None:
        """A batch whose outcome would depend on the order of its updates is refused."""
        text = f"workspace:a#guest@user:td-{uuid.uuid4().hex[:8]}"
        err = refused(graph.WriteRelationships, gpb.WriteRelationshipsRequest(updates=[
            update(text), update(text, gpb.RelationshipUpdate.OPERATION_DELETE)]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "updates[0]" in err.details()


class TestWatch:
    def test_zero_replays_from_the_start_and_a_revision_streams_what_follows(
            self, graph: gpb_grpc.GraphServiceStub) -> None:
        """"0" replays the retained changelog from revision 1; N streams what follows N."""
        subject = f"user:w-{uuid.uuid4().hex[:8]}"
        live = graph.Watch(gpb.WatchRequest(after_revision=head(graph)), timeout=20)
        replay = graph.Watch(gpb.WatchRequest(after_revision="0"), timeout=20)
        first_replayed = next(replay)
        assert first_replayed.revision == "1"
        replay.cancel()
        resp = graph.WriteRelationships(gpb.WriteRelationshipsRequest(
            updates=[update(f"workspace:a#guest@{subject}")]), timeout=10)
        got = next(live)
        live.cancel()
        assert got.revision == resp.revision
        assert got.relationship_updates[0].relationship == relationship(
            f"workspace:a#guest@{subject}")


@pytest.fixture(scope="module")
def redis_graph(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_on_store(request, tmp_path_factory, "redis", "--policy",
                          "policies/coupler", "--data", DATA)
    yield proc
    proc.stop()


class TestWatchStreams:
    def test_many_watch_streams_never_starve_writes(self, redis_graph: ServerProcess) -> None:
        """200 open Watch streams on Redis: every write succeeds and every stream sees it;
        past the documented limit a stream is refused RESOURCE_EXHAUSTED."""
        graph = gpb_grpc.GraphServiceStub(redis_graph.channel())
        start = head(graph)  # streams replay from here, however late they subscribe
        streams = [graph.Watch(gpb.WatchRequest(after_revision=start), timeout=60)
                   for _ in range(200)]
        extra = [graph.Watch(gpb.WatchRequest(after_revision=start), timeout=60)
                 for _ in range(60)]
        revisions = []
        for i in range(10):
            resp = graph.WriteRelationships(gpb.WriteRelationshipsRequest(
                updates=[update(f"workspace:a#guest@user:many-{i}")]), timeout=10)
            revisions.append(resp.revision)
        seen = [[next(s).revision for _ in range(10)] for s in streams[:200]]
        assert all(s == revisions for s in seen)
        codes = []
        for s in extra:
            try:
                next(s)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 4
        for s in streams + extra:
            s.cancel()
