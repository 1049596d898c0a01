"""OpenTelemetry tracing (``--otlp-endpoint``): a span per call, the store calls inside it.

Only imported when tracing is asked for (it needs the ``tracing`` extra:
opentelemetry-sdk and the OTLP/gRPC exporter), so a server without the flag
neither imports OpenTelemetry nor runs any of this per call.

- A pre-call hook starts a SERVER span named ``pkg.Service/Method``, as
  the child of the caller's span when the call carries W3C trace context
  (``traceparent`` / ``tracestate`` metadata); the post-call hook sets the
  status code and ends it. Inline Checks on the core poll thread get their
  span the same way; health checks and reflection get none.
- The hook also leaves ``notes[ACTIVATE]``: ``translate_errors`` calls it in
  the servicer's task, making the span current there, so the traced stores
  (``TracedGraphStore``, ``TracedUsageStore``) open their CLIENT spans as its
  children. Store calls made outside any call (the follower tailing the
  changelog, a scrape asking the head revision) make no spans at all.
- Spans leave in batches (BatchSpanProcessor) over OTLP/gRPC from a thread
  of the SDK's; the standard ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_BSP_*``
  environment variables (headers, certificates, timeouts, batch delay) apply.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gatehouse.auth.caller import CALLER, Caller
from gatehouse.graph.changes import Change, Operation, WritePrecondition
from gatehouse.graph.model import Snapshot
from gatehouse.graph.store import GraphStore
from gatehouse.observe import check_otlp_endpoint
from gatehouse.observe.metrics import method_label
from gatehouse.policy.rules import WriteRules
from gatehouse.transport import ACTIVATE, CallInfo, CallOutcome, Transport
from gatehouse.usage.events import Counters, UsageEvent, UsageStore

SPAN = "span"
"""The notes key of a call's server span."""
SHUTDOWN_SECONDS = 5.0
"""How long stopping waits for the last spans to leave before giving up on them."""

_PROPAGATOR = TraceContextTextMapPropagator()
_CONTEXT_KEYS = frozenset(_PROPAGATOR.fields)  # traceparent, tracestate
_ROOT = otel_context.Context()
# Server spans are errors only for codes that say the server failed; a caller's
# mistake (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...) is not
# (OpenTelemetry's conventions for gRPC servers).
_SERVER_ERRORS = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})
# Probes (a load balancer asks every few seconds) and reflection are counted by the
# metrics but would only bury the calls worth a trace.
_UNTRACED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_NAME_CHARS = 120  # a client picks the method path: span names quote a prefix of it


def _carrier(metadata: Sequence[tuple[str, Any]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in metadata:
        if key in _CONTEXT_KEYS and key not in found and isinstance(value, str):
            found[key] = value
    return found


def _activate(span: Span) -> None:
    # No detach: the token would have to be reset in this same task, and the
    # call's task ends with the call (see ACTIVATE).
    otel_context.attach(trace.set_span_in_context(span))


class Tracing:
    """The tracer provider of one process, its call hooks and its store wrappers."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self.tracer: Tracer = provider.get_tracer("gatehouse")

    @classmethod
    def start(cls, endpoint: str) -> Tracing:
        """Export spans in batches to the OTLP/gRPC receiver at ``endpoint``."""
        from gatehouse import __version__

        attributes: dict[str, str] = {"service.version": __version__}
        if "OTEL_SERVICE_NAME" not in os.environ:  # the standard variable wins
            attributes["service.name"] = "gatehouse"
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=check_otlp_endpoint(endpoint))))
        return cls(provider)

    # -- calls ----------------------------------------------------------------

    def attach(self, transport: Transport) -> None:
        """Trace every call ``transport`` serves (add before other hooks: the span
        then covers a call their pre-call hook refuses too)."""
        transport.add_hooks(before=self.before, after=self.after)

    def before(self, info: CallInfo) -> None:
        if info.method.startswith(_UNTRACED):
            return
        carrier = _carrier(info.metadata)
        # Never the thread's current context: a call's parent is its caller or nothing.
        parent = _PROPAGATOR.extract(carrier) if carrier else _ROOT
        service, _, method = info.method[1:].partition("/")
        span = self.tracer.start_span(
            method_label(info.method)[:_NAME_CHARS], context=parent, kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service[:_NAME_CHARS],
                        "rpc.method": method[:_NAME_CHARS]})
        info.notes[SPAN] = span
        info.notes[ACTIVATE] = functools.partial(_activate, span)

    def after(self, info: CallInfo, outcome: CallOutcome) -> None:
        span = info.notes.get(SPAN)
        if not isinstance(span, Span):
            return  # an earlier pre-call hook refused the call before ours ran
        span.set_attribute("rpc.grpc.status_code", outcome.code.value[0])
        caller = info.notes.get(CALLER)
        if isinstance(caller, Caller):
            span.set_attribute("gatehouse.caller", caller.name)
        if outcome.code in _SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, outcome.details[:200]))
        span.end()

    # -- stores ---------------------------------------------------------------

    def stores(self, store: GraphStore, usage: UsageStore) -> tuple[GraphStore, UsageStore]:
        """The stores, wrapped so their calls during a traced call become child spans."""
        return TracedGraphStore(store, self.tracer), TracedUsageStore(usage, self.tracer,
                                                                      store.description)

    # -- life cycle -------------------------------------------------------------

    def shutdown(self) -> None:
        """Send what is still queued, for at most ``SHUTDOWN_SECONDS`` (a receiver that is
        gone must not hold the process up)."""
        done = threading.Thread(target=self._provider.shutdown, name="tracing-shutdown",
                                daemon=True)
        done.start()
        done.join(SHUTDOWN_SECONDS)


def _system(description: str) -> str:
    return description.split(" ", 1)[0] or "unknown"


@contextlib.contextmanager
def _child(tracer: Tracer, name: str, system: str,
           attributes: Mapping[str, Any] | None = None) -> Iterator[Span | None]:
    """A CLIENT span for a store call, only inside a traced call (else nothing)."""
    if not trace.get_current_span().get_span_context().is_valid:
        yield None
        return
    with tracer.start_as_current_span(f"store {name}", kind=SpanKind.CLIENT,
                                      attributes={"db.system": system, **(attributes or {})}
                                      ) as span:
        yield span


class TracedGraphStore:
    """A ``GraphStore`` whose calls inside a traced call are spans (the same protocol,
    wrapped around any backend)."""

    def __init__(self, inner: GraphStore, tracer: Tracer) -> None:
        self.inner = inner
        self._tracer = tracer
        self._system = _system(inner.description)

    @property
    def durable(self) -> bool:
        return self.inner.durable

    @property
    def description(self) -> str:
        return self.inner.description

    async def head_revision(self) -> int:
        with _child(self._tracer, "head_revision", self._system):
            return await self.inner.head_revision()

    async def head(self) -> tuple[str, int]:
        with _child(self._tracer, "head", self._system):
            return await self.inner.head()

    async def check_history(self, after: int, epoch: str) -> None:
        with _child(self._tracer, "check_history", self._system):
            await self.inner.check_history(after, epoch)

    async def snapshot(self) -> Snapshot:
        with _child(self._tracer, "snapshot", self._system):
            return await self.inner.snapshot()

    async def write(self, ops: Sequence[Operation],
                    preconditions: Sequence[WritePrecondition] = (),
                    rules: WriteRules | None = None) -> Change:
        with _child(self._tracer, "write", self._system,
                    {"gatehouse.operations": len(ops),
                     "gatehouse.preconditions": len(preconditions)}) as span:
            change = await self.inner.write(ops, preconditions, rules)
            if span is not None:
                span.set_attribute("gatehouse.revision", change.revision)
            return change

    def write_soon(self, ops: Sequence[Operation], preconditions: Sequence[WritePrecondition],
                   rules: WriteRules | None,
                   done: Callable[[Change | BaseException], None]) -> None:
        # No span: the short path runs outside the call's task. A traced call takes
        # the coroutine path (``write``) instead (gatehouse.api.errors.short_path).
        self.inner.write_soon(ops, preconditions, rules, done)

    def follow(self, after: int, epoch: str) -> AsyncIterator[Change]:
        return self.inner.follow(after, epoch)  # a long-lived tail: no span of its own

    async def close(self) -> None:
        await self.inner.close()


class TracedUsageStore:
    """A ``UsageStore`` whose calls inside a traced call are spans."""

    def __init__(self, inner: UsageStore, tracer: Tracer, description: str) -> None:
        self.inner = inner
        self._tracer = tracer
        self._system = _system(description)

    async def record(self, event: UsageEvent, window_seconds: int) -> bool:
        with _child(self._tracer, "usage.record", self._system,
                    {"gatehouse.metric": event.metric.name}):
            return await self.inner.record(event, window_seconds)

    def record_soon(self, event: UsageEvent, window_seconds: int,
                    done: Callable[[bool | BaseException], None]) -> None:
        self.inner.record_soon(event, window_seconds, done)  # no span: see write_soon

    async def counters(self, organization: str,
                       periods: Mapping[str, str]) -> dict[str, Counters]:
        with _child(self._tracer, "usage.counters", self._system):
            return await self.inner.counters(organization, periods)

    async def close(self) -> None:
        await self.inner.close()


__all__ = ["SPAN", "TracedGraphStore", "TracedUsageStore", "Tracing"]
