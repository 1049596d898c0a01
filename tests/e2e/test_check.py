"""Check and CheckBulk over real gRPC against `gatehouse serve` with the sample data."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import code_pb2

from gatehouse.v1 import authorization_pb2 as pb
from gatehouse.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess


def req(subject: str, action: str, resource: str, **kw: object) -> pb.CheckRequest:
    s_type, _, s_id = subject.partition(":")
    r_type, _, r_id = resource.partition(":")
    return pb.CheckRequest(
        subject=pb.ObjectReference(type=s_type, id=s_id),
        action=action,
        resource=pb.ObjectReference(type=r_type, id=r_id),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def stub(coupler_server: ServerProcess) -> pb_grpc.AuthorizationServiceStub:
    return pb_grpc.AuthorizationServiceStub(coupler_server.channel())


class TestCheck:
    @pytest.mark.parametrize(
        ("subject", "action", "resource", "allowed"),
        [
            ("user:uma", "edit", "data_flow:acme-sales-pipeline", True),
            ("user:uma", "delete", "data_flow:acme-sales-pipeline", False),
            ("user:ben", "delete", "data_flow:acme-sales-pipeline", True),
            ("user:olivia", "delete", "data_flow:acme-sales-pipeline", True),
            ("user:gwen", "view", "data_flow:acme-sales-pipeline", False),
            ("user:gwen", "delete", "data_flow:acme-gwen-report", True),
            ("user:adam", "use", "connection:acme-hubspot", True),
            ("user:adam", "reconnect", "connection:acme-hubspot", False),
            ("user:olivia", "reconnect", "connection:acme-hubspot", True),
            ("user:gwen", "use", "connection:acme-hubspot", False),
            ("user:carla", "view", "data_flow:acme-sales-pipeline", False),
            ("user:olivia", "view", "ai_chat:acme-chat-uma", False),
            ("user:uma", "view", "ai_chat:acme-chat-uma", True),
            ("user:olivia", "create_workspace", "organization:northwind", True),
            ("user:adam", "create_workspace", "organization:northwind", False),
        ],
    )
    def test_decisions_follow_the_coupler_role_table(
        self, stub: pb_grpc.AuthorizationServiceStub, subject: str, action: str, resource: str,
        allowed: bool,
    ) -> None:
        """Each decision over the wire matches the seed's role table for the sample agency."""
        resp = stub.Check(req(subject, action, resource))
        want = pb.DECISION_ALLOW if allowed else pb.DECISION_DENY
        assert resp.decision == want

    def test_answer_carries_revision_and_policy_version(
        self, stub: pb_grpc.AuthorizationServiceStub
    ) -> None:
        """Every answer names the graph revision and the policy content hash it used."""
        resp = stub.Check(req("user:uma", "view", "workspace:acme"))
        assert resp.revision.isdigit() and int(resp.revision) >= 1
        assert resp.policy_version.startswith("sha256:")
        assert not resp.HasField("explanation")

    def test_explain_says_which_rule_decided(self, stub: pb_grpc.AuthorizationServiceStub) -> None:
        """With explain, the answer names the deciding rule's file and line and lists the trace."""
        resp = stub.Check(req("user:uma", "edit", "data_flow:acme-sales-pipeline", explain=True))
        assert resp.decision == pb.DECISION_ALLOW
        assert "policies/coupler/policy.yaml:" in resp.explanation.summary
        assert any("workspace.user on workspace:acme" in line for line in resp.explanation.trace)
        denied = stub.Check(req("user:uma", "delete", "data_flow:acme-sales-pipeline",
                                explain=True))
        assert denied.decision == pb.DECISION_DENY
        assert any("condition `owner` is false" in line for line in denied.explanation.trace)

    def test_unknown_object_is_a_normal_deny(self, stub: pb_grpc.AuthorizationServiceStub) -> None:
        """Ids the graph does not hold are denied, not errors."""
        assert stub.Check(req("user:nobody", "view", "workspace:acme")).decision == pb.DECISION_DENY
        resp = stub.Check(req("user:olivia", "view", "data_flow:no-such-flow"))
        assert resp.decision == pb.DECISION_DENY

    def test_context_reaches_conditions_without_error(
        self, stub: pb_grpc.AuthorizationServiceStub
    ) -> None:
        """A request context is accepted and does not change a role-only decision."""
        ctx = struct_pb2.Struct()
        ctx.update({"ip": "10.0.0.1", "mfa": True})
        resp = stub.Check(req("user:uma", "edit", "data_flow:acme-sales-pipeline", context=ctx))
        assert resp.decision == pb.DECISION_ALLOW

    @pytest.mark.parametrize(
        ("request_", "field"),
        [
            (req("user:uma", "fly", "data_flow:acme-sales-pipeline"), "action"),
            (req("user:uma", "", "data_flow:acme-sales-pipeline"), "action"),
            (req("user:uma", "view", "spaceship:x"), "resource.type"),
            (req("user:uma", "view", ":x"), "resource.type"),
            (req("user:uma", "view", "data_flow:"), "resource.id"),
            (req("user:uma", "view", "data_flow:bad id"), "resource.id"),
            (req("workspace:acme", "view", "data_flow:f"), "subject.type"),
            (req(":uma", "view", "data_flow:f"), "subject.type"),
            (req("user:", "view", "data_flow:f"), "subject.id"),
            (req("user:a#b", "view", "data_flow:f"), "subject.id"),
        ],
    )
    def test_malformed_requests_are_invalid_argument_naming_the_field(
        self, stub: pb_grpc.AuthorizationServiceStub, request_: pb.CheckRequest, field: str
    ) -> None:
        """Unknown types and actions and malformed ids fail INVALID_ARGUMENT with the field."""
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(request_)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(field + ":")

    def test_bad_revision_token_is_invalid_argument(
        self, stub: pb_grpc.AuthorizationServiceStub
    ) -> None:
        """A consistency token that is not a decimal uint64 is rejected with its field."""
        bad = req("user:uma", "view", "workspace:acme",
                  consistency=pb.Consistency(at_least_as_fresh="12abc"))
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "consistency.at_least_as_fresh" in info.value.details()

    def test_consistency_modes_answer_when_the_index_is_fresh(
        self, stub: pb_grpc.AuthorizationServiceStub
    ) -> None:
        """Fully consistent and at-least-as-fresh reads answer once the index has the revision."""
        head = stub.Check(req("user:uma", "view", "workspace:acme")).revision
        for consistency in (pb.Consistency(fully_consistent=True),
                            pb.Consistency(at_least_as_fresh=head)):
            resp = stub.Check(req("user:uma", "view", "workspace:acme", consistency=consistency))
            assert resp.decision == pb.DECISION_ALLOW
            assert int(resp.revision) >= int(head)

    def test_future_revision_is_unavailable_never_allow(
        self, stub: pb_grpc.AuthorizationServiceStub
    ) -> None:
        """A revision the store never issued is refused at once (FAILED_PRECONDITION
        naming the field), well inside a generous deadline; never an answer."""
        future = req("user:olivia", "view", "workspace:acme",
                     consistency=pb.Consistency(at_least_as_fresh="999999"))
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(future, timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details().startswith(
            "consistency.at_least_as_fresh: revision 999999 is ahead of the store")


class TestCheckBulk:
    def test_answers_in_order_with_per_item_errors(
        self, stub: pb_grpc.AuthorizationServiceStub
    ) -> None:
        """Items are answered in request order; a malformed item gets its own status."""
        items = [
            req("user:uma", "edit", "data_flow:acme-sales-pipeline"),
            req("user:uma", "delete", "data_flow:acme-sales-pipeline"),
            req("user:uma", "fly", "data_flow:acme-sales-pipeline"),
            req("user:olivia", "view", "organization:northwind"),
        ]
        resp = stub.CheckBulk(pb.CheckBulkRequest(items=items))
        assert len(resp.results) == 4
        assert resp.results[0].response.decision == pb.DECISION_ALLOW
        assert resp.results[1].response.decision == pb.DECISION_DENY
        assert resp.results[2].WhichOneof("result") == "error"
        assert resp.results[2].error.code == code_pb2.INVALID_ARGUMENT
        assert resp.results[2].error.message.startswith("items[2].action:")
        assert resp.results[3].response.decision == pb.DECISION_ALLOW
        assert resp.revision == resp.results[0].response.revision
        assert resp.policy_version.startswith("sha256:")

    def test_matches_single_checks(self, stub: pb_grpc.AuthorizationServiceStub) -> None:
        """CheckBulk decides every item exactly as Check does."""
        subjects = ["olivia", "adam", "uma", "ben", "gwen", "carla", "nobody"]
        resources = ["data_flow:acme-sales-pipeline", "data_flow:acme-gwen-report",
                     "data_flow:globex-finance"]
        items = [req(f"user:{s}", a, r) for s in subjects for r in resources
                 for a in ("view", "run", "edit", "delete")]
        bulk = stub.CheckBulk(pb.CheckBulkRequest(items=items))
        singles = [stub.Check(i).decision for i in items]
        assert [r.response.decision for r in bulk.results] == singles
        assert pb.DECISION_ALLOW in singles and pb.DECISION_DENY in singles

    def test_too_many_items_is_invalid_argument(
        self, stub: pb_grpc.AuthorizationServiceStub
    ) -> None:
        """More than the documented maximum of 1,000 items fails the call, naming items."""
        item = req("user:uma", "view", "workspace:acme")
        with pytest.raises(grpc.RpcError) as info:
            stub.CheckBulk(pb.CheckBulkRequest(items=[item] * 1001))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("items:")
        ok = stub.CheckBulk(pb.CheckBulkRequest(items=[item] * 1000))
        assert len(ok.results) == 1000


class TestWireLimits:
    def test_a_5_mib_check_is_refused_and_the_server_keeps_answering(
        self, coupler_server: ServerProcess, stub: pb_grpc.AuthorizationServiceStub
    ) -> None:
        """A Check larger than LIMITS.message_bytes is RESOURCE_EXHAUSTED; the next is answered."""
        big = req("user:uma", "view", "workspace:acme",
                  context=struct_pb2.Struct(fields={"pad": struct_pb2.Value(
                      string_value="x" * (5 << 20))}))
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(big, timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Check(req("user:uma", "view", "workspace:acme")).decision == \
            pb.DECISION_ALLOW

    @pytest.mark.parametrize("messages", [0, 2])
    def test_a_check_with_zero_or_two_request_messages_is_invalid_argument(
        self, coupler_server: ServerProcess, messages: int
    ) -> None:
        """Check framed as a stream of none or two messages is INVALID_ARGUMENT, not INTERNAL."""
        one = req("user:uma", "view", "workspace:acme").SerializeToString()
        raw = coupler_server.channel().stream_unary(
            "/gatehouse.v1.AuthorizationService/Check")
        with pytest.raises(grpc.RpcError) as info:
            raw(iter([one] * messages), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(
            "request: a unary method takes exactly one request message")
