"""OpenTelemetry tracing (``--otlp-endpoint``): real servers export to a small OTLP/gRPC
receiver run by the test, and the spans that arrive are checked."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as pb
from gatehouse.v1 import graph_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, start_on_store, start_server
from tests.e2e.test_graph_service import ref, update

trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="tracing tests need the tracing extra (make test installs it)")
trace_service_grpc = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc")
trace_pb = pytest.importorskip("opentelemetry.proto.trace.v1.trace_pb2")

CHECK = "gatehouse.v1.AuthorizationService/Check"
WRITE = "gatehouse.v1.GraphService/WriteRelationships"


class Span(NamedTuple):
    service: str
    span: Any  # opentelemetry.proto.trace.v1.trace_pb2.Span

    def attribute(self, key: str) -> Any:
        for kv in self.span.attributes:
            if kv.key == key:
                value = kv.value
                return getattr(value, value.WhichOneof("value"))
        return None


class Receiver(trace_service_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP/gRPC trace receiver keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.changed = threading.Condition()

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.changed:
            for resource_spans in request.resource_spans:
                service = next((kv.value.string_value for kv in
                                resource_spans.resource.attributes
                                if kv.key == "service.name"), "")
                for scope in resource_spans.scope_spans:
                    self.spans.extend(Span(service, s) for s in scope.spans)
            self.changed.notify_all()
        return trace_service.ExportTraceServiceResponse()

    def wait_for(self, match: Callable[[Span], bool], what: str, timeout: float = 20) -> Span:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = [s for s in self.spans if match(s)]
                if found:
                    return found[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = sorted({s.span.name for s in self.spans})
                    pytest.fail(f"no span for {what} arrived; got {names}")
                self.changed.wait(remaining)


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    found = Receiver()
    trace_service_grpc.add_TraceServiceServicer_to_server(found, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield found, f"http://127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture(scope="module", params=["core", "aio"])
def traced(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           receiver: tuple[Receiver, str]) -> Iterator[ServerProcess]:
    """A server on Redis sending its spans to ``receiver`` every 100 ms."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        server = start_on_store(request, tmp_path_factory, "redis", "--transport",
                                request.param, "--otlp-endpoint", receiver[1], "--policy",
                                "policies/coupler", "--data", "examples/coupler.data.yaml")
    yield server
    server.stop()


def caller_context() -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """A trace id and span id of a calling service, and the metadata that carries them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, (("traceparent", f"00-{trace_id}-{span_id}-01"),
                               ("tracestate", "caller=abc"))


def server_span(name: str, trace_id: str) -> Callable[[Span], bool]:
    return lambda s: s.span.name == name and s.span.trace_id.hex() == trace_id


class TestSpans:
    def test_a_check_joins_the_callers_trace(self, traced: ServerProcess,
                                             receiver: tuple[Receiver, str]) -> None:
        """A Check carrying traceparent makes a SERVER span in the caller's trace, the
        caller's span as its parent, with the status code and the service name."""
        trace_id, parent, metadata = caller_context()
        authz = apb_grpc.AuthorizationServiceStub(traced.channel())
        resp = authz.Check(apb.CheckRequest(subject=ref("user:uma"), action="edit",
                                            resource=ref("data_flow:acme-sales-pipeline")),
                           metadata=metadata, timeout=10)
        assert resp.decision == apb.DECISION_ALLOW
        got = receiver[0].wait_for(server_span(CHECK, trace_id), "the Check")
        assert got.span.parent_span_id.hex() == parent
        assert got.span.kind == trace_pb.Span.SPAN_KIND_SERVER
        assert got.span.trace_state == "caller=abc"
        assert got.attribute("rpc.system") == "grpc"
        assert got.attribute("rpc.service") == "gatehouse.v1.AuthorizationService"
        assert got.attribute("rpc.method") == "Check"
        assert got.attribute("rpc.grpc.status_code") == 0
        assert got.service == "gatehouse"
        assert got.span.end_time_unix_nano >= got.span.start_time_unix_nano > 0

    def test_a_write_has_its_store_call_as_a_child_span(
            self, traced: ServerProcess, receiver: tuple[Receiver, str]) -> None:
        """The Redis write a WriteRelationships makes is a CLIENT span under the call's span,
        naming the store and the revision it committed."""
        trace_id, parent, metadata = caller_context()
        graph = pb_grpc.GraphServiceStub(traced.channel())
        written = graph.WriteRelationships(pb.WriteRelationshipsRequest(
            updates=[update(f"workspace:initech#guest@user:t{uuid.uuid4().hex[:8]}")]),
            metadata=metadata, timeout=10)
        call = receiver[0].wait_for(server_span(WRITE, trace_id), "the write")
        assert call.span.parent_span_id.hex() == parent
        store = receiver[0].wait_for(
            lambda s: s.span.trace_id.hex() == trace_id
            and s.span.parent_span_id == call.span.span_id, "the store call")
        assert store.span.name == "store write"
        assert store.span.kind == trace_pb.Span.SPAN_KIND_CLIENT
        assert store.attribute("db.system") == "redis"
        assert store.attribute("gatehouse.operations") == 1
        assert store.attribute("gatehouse.revision") == int(written.revision)
        assert call.span.start_time_unix_nano <= store.span.start_time_unix_nano
        assert store.span.end_time_unix_nano <= call.span.end_time_unix_nano

    def test_refused_and_context_free_calls(self, traced: ServerProcess,
                                            receiver: tuple[Receiver, str]) -> None:
        """A refused call's span carries its code without being a server error; a call with
        no (or garbled) trace context starts a trace of its own and is answered as usual;
        health checks make no spans."""
        trace_id, _, metadata = caller_context()
        authz = apb_grpc.AuthorizationServiceStub(traced.channel())
        with pytest.raises(grpc.RpcError) as info:
            authz.Check(apb.CheckRequest(subject=ref("user:uma"), action="edit",
                                         resource=ref("nocolon")),
                        metadata=metadata, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        refused = receiver[0].wait_for(server_span(CHECK, trace_id), "the refused Check")
        assert refused.attribute("rpc.grpc.status_code") == \
            grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert refused.span.status.code != trace_pb.Status.STATUS_CODE_ERROR
        health_pb2_grpc.HealthStub(traced.channel()).Check(  # ends before the Checks below
            health_pb2.HealthCheckRequest(service=""), timeout=10)
        before = {s.span.span_id for s in receiver[0].spans}
        for metadata in ((), (("traceparent", "00-not-a-trace-01"),)):
            assert authz.Check(apb.CheckRequest(
                subject=ref("user:uma"), action="edit",
                resource=ref("data_flow:acme-sales-pipeline")),
                metadata=metadata, timeout=10).decision == apb.DECISION_ALLOW
        for _ in range(2):
            fresh = receiver[0].wait_for(
                lambda s: s.span.name == CHECK and s.span.span_id not in before
                and not s.span.parent_span_id, "a root Check span")
            before.add(fresh.span.span_id)
            assert len(fresh.span.trace_id) == 16 and any(fresh.span.trace_id)
        assert not [s for s in receiver[0].spans if s.span.name.startswith("grpc.health")]

    def test_store_calls_outside_calls_make_no_spans(
            self, traced: ServerProcess, receiver: tuple[Receiver, str]) -> None:
        """The follower tailing Redis and other background store reads export nothing:
        every store span has a call's span as its parent."""
        authz = apb_grpc.AuthorizationServiceStub(traced.channel())
        trace_id, _, metadata = caller_context()
        authz.Check(apb.CheckRequest(subject=ref("user:uma"), action="edit",
                                     resource=ref("data_flow:acme-sales-pipeline"),
                                     consistency=apb.Consistency(fully_consistent=True)),
                    metadata=metadata, timeout=10)
        call = receiver[0].wait_for(server_span(CHECK, trace_id), "the consistent Check")
        head = receiver[0].wait_for(
            lambda s: s.span.parent_span_id == call.span.span_id, "its head read")
        assert head.span.name == "store head"
        stored = [s for s in receiver[0].spans if s.span.name.startswith("store ")]
        assert stored and all(s.span.parent_span_id for s in stored)


class TestWithoutTracing:
    def test_a_server_without_the_flag_never_imports_opentelemetry(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without --otlp-endpoint no OpenTelemetry module is loaded (Python's import log of
        the whole server run names none); with it, they are."""
        monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
        monkeypatch.delenv("GATEHOUSE_OTLP_ENDPOINT", raising=False)
        plain = start_server(tmp_path, "--metrics-listen", "127.0.0.1:0")
        plain.stop()
        assert "gatehouse.server" in plain.logs()
        assert "opentelemetry" not in plain.logs()
        traced = start_server(tmp_path, "--otlp-endpoint", "http://127.0.0.1:9")
        traced.stop()
        assert "opentelemetry.sdk.trace" in traced.logs()
