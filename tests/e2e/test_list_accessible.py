"""ListAccessible over real gRPC against the sample data."""

from __future__ import annotations

import grpc
import pytest

from gatehouse.v1 import authorization_pb2 as pb
from gatehouse.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess


def ref(text: str) -> pb.ObjectReference:
    t, _, i = text.partition(":")
    return pb.ObjectReference(type=t, id=i)


@pytest.fixture(scope="module")
def stub(coupler_server: ServerProcess) -> pb_grpc.AuthorizationServiceStub:
    return pb_grpc.AuthorizationServiceStub(coupler_server.channel())


class TestListAccessible:
    def test_lists_what_the_subject_may_view(self, stub: pb_grpc.AuthorizationServiceStub
                                             ) -> None:
        """A user sees every flow in the workspaces where they hold a role, in id order."""
        msgs = list(stub.ListAccessible(pb.ListAccessibleRequest(
            subject=ref("user:uma"), resource_type="data_flow", action="view")))
        ids = [i for m in msgs for i in m.resource_ids]
        assert ids == ["acme-ads-daily", "acme-gwen-report", "acme-sales-pipeline",
                       "globex-finance"]
        assert msgs[-1].complete and not msgs[-1].next_cursor
        assert msgs[-1].revision.isdigit() and msgs[-1].policy_version.startswith("sha256:")

    def test_within_and_ownership(self, stub: pb_grpc.AuthorizationServiceStub) -> None:
        """`within` narrows to one workspace; a guest lists only what they own."""
        msgs = list(stub.ListAccessible(pb.ListAccessibleRequest(
            subject=ref("user:uma"), resource_type="data_flow", action="view",
            within=ref("workspace:globex"))))
        assert [i for m in msgs for i in m.resource_ids] == ["globex-finance"]
        msgs = list(stub.ListAccessible(pb.ListAccessibleRequest(
            subject=ref("user:gwen"), resource_type="data_flow", action="delete")))
        assert [i for m in msgs for i in m.resource_ids] == ["acme-gwen-report"]
        msgs = list(stub.ListAccessible(pb.ListAccessibleRequest(
            subject=ref("user:nobody"), resource_type="data_flow", action="view")))
        assert [i for m in msgs for i in m.resource_ids] == [] and msgs[-1].complete

    def test_pages_follow_the_cursor_to_completion(
        self, stub: pb_grpc.AuthorizationServiceStub
    ) -> None:
        """Small pages are marked incomplete with a cursor until the last one."""
        base = pb.ListAccessibleRequest(subject=ref("user:olivia"), resource_type="data_flow",
                                        action="delete", page_size=2)
        seen: list[str] = []
        req = base
        flags = []
        for _ in range(10):
            msgs = list(stub.ListAccessible(req))
            seen += [i for m in msgs for i in m.resource_ids]
            flags.append(msgs[-1].complete)
            if msgs[-1].complete:
                break
            req = pb.ListAccessibleRequest()
            req.CopyFrom(base)
            req.cursor = msgs[-1].next_cursor
        assert seen == ["acme-ads-daily", "acme-gwen-report", "acme-sales-pipeline",
                        "globex-finance"]
        assert flags == [False, True]

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"action": "fly"}, "action"),
            ({"resource_type": "spaceship"}, "resource_type:"),
            ({"resource_type": ""}, "resource_type:"),  # was "resource.type", no such field
            ({"within": ref("data_flow:acme-ads-daily"), "resource_type": "workspace"},
             "within.type"),
            ({"page_size": 20000}, "page_size"),
            ({"cursor": "garbage"}, "cursor"),
        ],
    )
    def test_bad_requests(self, stub: pb_grpc.AuthorizationServiceStub, change: dict[str, object],
                          field: str) -> None:
        """Malformed listings fail INVALID_ARGUMENT naming the field."""
        req = pb.ListAccessibleRequest(subject=ref("user:uma"), resource_type="data_flow",
                                       action="view")
        for key, value in change.items():
            if isinstance(value, pb.ObjectReference):
                getattr(req, key).CopyFrom(value)
            else:
                setattr(req, key, value)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ListAccessible(req))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(field), info.value.details()

    def test_cursor_is_bound_to_its_listing(self, stub: pb_grpc.AuthorizationServiceStub
                                            ) -> None:
        """A cursor reused for another subject is rejected rather than mixing listings."""
        first = list(stub.ListAccessible(pb.ListAccessibleRequest(
            subject=ref("user:olivia"), resource_type="data_flow", action="view",
            page_size=1)))
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ListAccessible(pb.ListAccessibleRequest(
                subject=ref("user:uma"), resource_type="data_flow", action="view",
                cursor=first[-1].next_cursor)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "another listing" in info.value.details()
