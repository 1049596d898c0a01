"""The one place where domain errors become gRPC status codes.

Servicer methods are wrapped by ``translate_errors``: a ``GatehouseError``
raised anywhere below ends the call with the status its class maps to, and
nothing else (an unexpected exception is the transport's INTERNAL).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from gatehouse.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    GatehouseError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PolicyError,
    ResourceExhausted,
    Unavailable,
)
from gatehouse.graph.store import ChangelogGap
from gatehouse.transport import ACTIVATE, Abort, CallInfo, ServicerContext
from gatehouse.transport.notes import note_request, note_response

_CODES: tuple[tuple[type[GatehouseError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Aborted, grpc.StatusCode.ABORTED),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (PolicyError, grpc.StatusCode.FAILED_PRECONDITION),
    (Internal, grpc.StatusCode.INTERNAL),
)

# grpc-message travels as HTTP/2 trailing metadata; keep it well inside the
# clients' default metadata limit whatever a message quotes.
MAX_DETAILS = 1024


def status_code(exc: BaseException) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def details(exc: BaseException) -> str:
    text = str(exc)
    if len(text) > MAX_DETAILS:
        text = text[:MAX_DETAILS - 20] + "... (message cut)"
    return text


def to_rpc_status(exc: GatehouseError) -> status_pb2.Status:
    """A google.rpc.Status for per-item errors (CheckBulk)."""
    return status_pb2.Status(code=status_code(exc).value[0], message=details(exc))


def inline_abort(exc: GatehouseError) -> Abort:
    """The same status, for handlers answering on the transport's poll thread."""
    return Abort(status_code(exc), details(exc))


def undecodable() -> Abort:
    return Abort(grpc.StatusCode.INVALID_ARGUMENT, "request: not a valid protobuf message")


async def answer_later(info: CallInfo | None, message: Any, raw: bytes,
                       run: Callable[[Any], Awaitable[Any]]) -> bytes:
    """Decode ``raw`` as ``message``, run it and encode the response, with the statuses
    and hook notes ``translate_errors`` gives a servicer method: the body of a
    ``Later`` (a call answered through the transport's short path)."""
    request = decode_request(info, message, raw)
    _activate(info)
    try:
        response = await run(request)
    except (GatehouseError, ChangelogGap) as exc:
        err = _domain(exc)
        assert err is not None
        raise inline_abort(err) from None
    note_response(info, response)
    out: bytes = response.SerializeToString()
    return out


def decode_request(info: CallInfo | None, message: Any, raw: bytes) -> Any:
    """``raw`` as a ``message`` (noted for the hooks), or Abort INVALID_ARGUMENT."""
    try:
        request = message.FromString(raw)
    except DecodeError:
        raise undecodable() from None
    note_request(info, request)
    return request


def without_task(info: CallInfo | None) -> bool:
    """Whether a call may take the short path without a task of its own (``Later.start``):
    only when no hook left anything to make current in a task (tracing does: a
    traced call keeps its coroutine, so that its store calls are its spans' children)."""
    return info is None or ACTIVATE not in info.notes


def respond(info: CallInfo | None, result: Any,
            build: Callable[[Any], Any]) -> bytes | BaseException:
    """What a short-path call answers for a store's ``result``: ``build(result)`` encoded
    (and noted for the hooks), or the status of the error it is, as ``answer_later``
    would give it (a domain error: its status; anything else: INTERNAL)."""
    if isinstance(result, BaseException):
        err = _domain(result) if isinstance(result, Exception) else None
        return inline_abort(err) if err is not None else result
    try:
        response = build(result)
        note_response(info, response)
        out: bytes = response.SerializeToString()
    except Exception as exc:
        return exc
    return out


def _domain(exc: Exception) -> GatehouseError | None:
    if isinstance(exc, GatehouseError):
        return exc
    if isinstance(exc, ChangelogGap):
        return FailedPrecondition(
            "changelog", f"cannot resume: {exc}; read the graph again and watch from its "
            "revision")
    return None


def _activate(info: CallInfo | None) -> None:
    """Make what the hooks prepared for this call current in its task (``ACTIVATE``)."""
    if info is not None:
        activate = info.notes.get(ACTIVATE)
        if activate is not None:
            activate()


Req = TypeVar("Req")
Self = TypeVar("Self")


def translate_errors(
    method: Callable[[Self, Req, ServicerContext], Any],
) -> Callable[[Self, Req, ServicerContext], Any]:
    """Wrap a servicer method (coroutine or async generator) so that domain
    errors end the call with their status, and the request and response are
    noted for the post-call hooks (``gatehouse.transport.notes``), with the call's
    context (its trace span, when tracing) current while it runs."""
    if inspect.isasyncgenfunction(method):
        gen = method

        @functools.wraps(method)
        async def stream(self: Self, request: Req,
                         context: ServicerContext) -> AsyncIterator[Any]:
            info = context.call_info()
            note_request(info, request)
            _activate(info)
            try:
                async for item in gen(self, request, context):
                    note_response(info, item)
                    yield item
            except (GatehouseError, ChangelogGap) as exc:
                err = _domain(exc)
                assert err is not None
                await context.abort(status_code(err), details(err))

        return stream

    unary: Callable[[Self, Req, ServicerContext], Awaitable[Any]] = method

    @functools.wraps(method)
    async def call(self: Self, request: Req, context: ServicerContext) -> Any:
        info = context.call_info()
        note_request(info, request)
        _activate(info)
        try:
            response = await unary(self, request, context)
            note_response(info, response)
            return response
        except (GatehouseError, ChangelogGap) as exc:
            err = _domain(exc)
            assert err is not None
            await context.abort(status_code(err), details(err))

    return call


__all__ = ["answer_later", "decode_request", "details", "inline_abort", "respond",
           "status_code", "to_rpc_status", "translate_errors", "undecodable", "without_task"]
