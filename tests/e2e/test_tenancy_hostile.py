"""Hostile input on every TenancyService method, over real gRPC: empty requests and
every string field filled with a hostile value answer a precise status (never
UNKNOWN or INTERNAL, never a hang), and nothing is written."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.message import Message

from gatehouse.v1 import tenancy_pb2 as pb
from tests.conftest import ServerProcess, start_on_store
from tests.e2e.test_hostile_inputs import head
from tests.e2e.test_tenancy import Client

SERVICE = pb.DESCRIPTOR.services_by_name["TenancyService"]
HOSTILE = {
    "superscript digits": "\u00b2\u00b3",
    "fullwidth": "\uff11\uff12\uff13",
    "huge": "x" * 200_000,
    "control": "a\x00b\x1fc",
    "separators": "acme:evil#owner@user:me",
    "unicode": "\u0130stanbul-\u00e9\u00e8",
}
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.ALREADY_EXISTS}
READS = {"CheckSlug", "ListInvitations", "ListAccessLinks", "ResolveSignup"}


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    proc = start_on_store(request, tmp_path_factory, request.param, "--policy",
                          "policies/coupler", "--data", "examples/coupler.data.yaml")
    yield proc
    proc.stop()


def fill(msg: Message, value: str) -> None:
    """Set every string field of ``msg`` (and of the messages inside it) to ``value``."""
    for field in msg.DESCRIPTOR.fields:
        repeated = (field.is_repeated if hasattr(field, "is_repeated")
                    else field.label == field.LABEL_REPEATED)
        if repeated:
            continue
        if field.type == field.TYPE_STRING:
            setattr(msg, field.name, value)
        elif field.type == field.TYPE_MESSAGE and field.message_type.full_name.startswith(
                "gatehouse."):
            fill(getattr(msg, field.name), value)


def call(server: ServerProcess, method: str, request: Message) -> grpc.RpcError | None:
    channel = server.channel()
    stub = channel.unary_unary(
        f"/{SERVICE.full_name}/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=lambda b: b)
    try:
        stub(request, timeout=20)
    except grpc.RpcError as exc:
        return exc
    return None


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
class TestHostileTenancyInput:
    def test_an_empty_request_is_refused_precisely(self, server: ServerProcess,
                                                   method: str) -> None:
        """A request with no fields names what is missing; nothing is written."""
        before = head(Client(server).graph)
        request = getattr(pb, SERVICE.methods_by_name[method].input_type.name)()
        err = call(server, method, request)
        if method in READS and err is None:
            return
        assert err is not None and err.code() in REFUSALS, (method, err)
        assert len(err.details()) < 1100
        assert head(Client(server).graph) == before

    @pytest.mark.parametrize("kind", sorted(HOSTILE))
    def test_hostile_strings_are_refused_precisely(self, server: ServerProcess, method: str,
                                                   kind: str) -> None:
        """Every string field hostile: a precise refusal quoting a short prefix, no write."""
        before = head(Client(server).graph)
        request = getattr(pb, SERVICE.methods_by_name[method].input_type.name)()
        fill(request, HOSTILE[kind])
        err = call(server, method, request)
        if method in READS and err is None:
            return
        assert err is not None and err.code() in REFUSALS, (method, kind, err)
        assert len(err.details()) < 1100
        assert head(Client(server).graph) == before
