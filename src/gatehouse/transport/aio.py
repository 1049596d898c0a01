"""The aio transport: the public ``grpc.aio`` server behind the ``Transport`` protocol.

It serves every grpcio version gatehouse installs with, through public API
only, so it is where ``auto`` falls back when the core transport is not
known to work. It is slower per call than ``core`` (a task and several loop
turns per unary call) but behaves the same to a client:

- inline methods (Check, CheckBulk, RecordUsage, WriteRelationships) call the
  same byte handler first; on ``Defer`` the servicer coroutine runs; a
  ``Later`` is awaited in the call's task; ``Abort`` becomes the status;
- every method is registered with grpc as *request-streaming* and raw bytes
  in, so a unary method can count its request messages (none, or more than
  one, is INVALID_ARGUMENT as on core) and an undecodable request is
  INVALID_ARGUMENT rather than grpc's INTERNAL;
- servicers get a ``ServicerContext`` whose ``abort`` raises ``Abort``, so the
  final status of every call is known here for the ``AfterCall`` hooks.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import grpc.aio

from gatehouse.transport.base import (
    UNARY_MESSAGE_COUNT,
    Abort,
    AfterCall,
    BeforeCall,
    CallInfo,
    CallOutcome,
    Counters,
    Defer,
    HookFailed,
    InlineHandler,
    Later,
    Metadata,
    MethodHandler,
    TransportStats,
    client_subject,
    run_before,
    server_options,
)

if TYPE_CHECKING:
    _AioContext = grpc.aio.ServicerContext[Any, Any]
else:
    _AioContext = grpc.aio.ServicerContext

log = logging.getLogger("gatehouse.transport")

_END = object()
# grpc.aio reports "no deadline" as a remaining time this large.
_NO_DEADLINE = 1e9


class _Context:
    """The ``ServicerContext`` servicers see: grpc.aio's, with ``abort`` raising ``Abort``."""

    __slots__ = ("_code", "_context", "_details", "_info", "_serializer", "_trailing")

    def __init__(self, context: _AioContext, serializer: Callable[[Any], bytes] | None,
                 info: CallInfo | None = None) -> None:
        self._context = context
        self._info = info
        self._serializer = serializer
        self._code = grpc.StatusCode.OK
        self._details = ""
        self._trailing: tuple[tuple[str, Any], ...] = ()

    def time_remaining(self) -> float | None:
        remaining = self._context.time_remaining()
        if remaining is None or remaining >= _NO_DEADLINE:
            return None
        return max(0.0, float(remaining))

    def invocation_metadata(self) -> Metadata:
        return _metadata(self._context)

    def peer(self) -> str:
        return str(self._context.peer())

    def call_info(self) -> CallInfo | None:
        return self._info

    def cancelled(self) -> bool:
        return bool(self._context.cancelled())

    def done(self) -> bool:
        return bool(self._context.done())

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, Any]]) -> None:
        self._trailing = tuple(metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Sequence[tuple[str, Any]] = ()) -> NoReturn:
        raise Abort(code, details, trailing_metadata or self._trailing)

    async def write(self, message: Any) -> None:
        data = self._serializer(message) if self._serializer is not None else message
        await self._context.write(data)


def _metadata(context: _AioContext) -> Metadata:
    return tuple((key, value) for key, value in (context.invocation_metadata() or ()))


async def _exactly_one(requests: AsyncIterator[bytes]) -> bytes:
    first = await anext(requests, _END)
    if first is _END:
        raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{UNARY_MESSAGE_COUNT}; it sent none")
    if await anext(requests, _END) is not _END:
        raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                    f"{UNARY_MESSAGE_COUNT}; it sent more than one")
    assert isinstance(first, bytes)
    return first


def _decode(deserialize: Callable[[bytes], Any] | None, raw: bytes) -> Any:
    try:
        return deserialize(raw) if deserialize is not None else raw
    except Exception:
        raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                    "request: not a valid protobuf message") from None


async def _decoded(requests: AsyncIterator[bytes],
                   deserialize: Callable[[bytes], Any] | None) -> AsyncIterator[Any]:
    async for raw in requests:
        yield _decode(deserialize, raw)


class AioServer:
    """A gRPC server on ``grpc.aio`` with the same protocol, inline methods and hooks as core."""

    name = "aio"

    def __init__(self, options: Iterable[tuple[str, Any]] = ()) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("create the aio transport inside the event loop that will "
                               "run it") from None
        self._server = grpc.aio.server(options=server_options(options))
        self._handlers: dict[str, MethodHandler] = {}
        self._inline: dict[str, InlineHandler] = {}
        self._wrapped: dict[str, MethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self._before: list[BeforeCall] = []
        self._after: list[AfterCall] = []
        self._counters = Counters()
        self._started = False
        self._secure = False  # a TLS port: read each call's client certificate subject
        self._server.add_generic_rpc_handlers((_Router(self),))

    @property
    def stats(self) -> TransportStats:
        return self._counters.snapshot()

    # -- registration ------------------------------------------------------

    def add_registered_method_handlers(self, service: str,
                                       handlers: Mapping[str, MethodHandler]) -> None:
        for name, handler in handlers.items():
            method = f"/{service}/{name}"
            self._handlers[method] = handler
            self._wrapped[method] = self._wrap(method, handler)

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_inline(self, method: str, handler: InlineHandler) -> None:
        registered = self._handlers.get(method)
        if registered is None or registered.request_streaming or registered.response_streaming:
            raise ValueError(f"{method} must be a registered unary method")
        self._inline[method] = handler
        self._wrapped[method] = self._wrap(method, registered)

    def add_hooks(self, before: BeforeCall | None = None, after: AfterCall | None = None) -> None:
        if self._started:
            raise RuntimeError("add hooks before the transport starts")
        if before is not None:
            self._before.append(before)
        if after is not None:
            self._after.append(after)

    def add_insecure_port(self, address: str) -> int:
        try:
            return self._server.add_insecure_port(address)
        except RuntimeError:  # grpc.aio raises where core returns 0
            return 0

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        if self._started:
            raise RuntimeError("add ports before the transport starts")
        try:
            port = self._server.add_secure_port(address, credentials)
        except RuntimeError:
            return 0
        self._secure = True
        return port

    def find(self, method: str, details: grpc.HandlerCallDetails) -> MethodHandler:
        """The wrapped handler for ``method``: registered ones first, then the generic ones,
        else one answering UNIMPLEMENTED — through the hooks, as core does."""
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return self._wrap(method, handler)
        return self._wrap(method, _UNIMPLEMENTED)

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        self._started = True
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        if self._started:
            await self._server.stop(grace)

    # -- one call --------------------------------------------------------------

    def _wrap(self, method: str, handler: MethodHandler) -> MethodHandler:
        """A raw-bytes, request-streaming grpc handler running ``handler`` as core would."""
        inline = self._inline.get(method)
        unary_in = not handler.request_streaming
        deserialize = handler.request_deserializer
        serialize = handler.response_serializer
        if handler.response_streaming:
            behavior: Any = handler.unary_stream if unary_in else handler.stream_stream
        else:
            behavior = handler.unary_unary if unary_in else handler.stream_unary

        async def serve(requests: AsyncIterator[bytes], context: _AioContext) -> Any:
            start = time.monotonic()
            subject = client_subject(context.auth_context()) if self._secure else None
            info = CallInfo(method, _metadata(context), str(context.peer()), subject)
            ctx = _Context(context, serialize, info)
            code, details = grpc.StatusCode.OK, ""
            try:
                run_before(self._before, info)
                if unary_in:
                    raw = await _exactly_one(requests)
                    if inline is not None:
                        try:
                            answer = _inline(inline, raw, info, self._counters, method)
                        except Defer:
                            pass
                        else:
                            if isinstance(answer, Later):
                                return await _later(answer, context, self._counters, method)
                            return answer
                    request = _decode(deserialize, raw)
                else:
                    request = _decoded(requests, deserialize)
                result = behavior(request, ctx)
                if not handler.response_streaming:
                    response = await result
                    out = serialize(response) if serialize is not None else response
                elif inspect.isasyncgen(result):
                    async for message in result:
                        await ctx.write(message)
                    out = None
                else:  # a coroutine that sends with context.write
                    await result
                    out = None
                code, details = ctx._code, ctx._details
                if code is not grpc.StatusCode.OK:
                    context.set_code(code)
                    context.set_details(details)
                if ctx._trailing:
                    context.set_trailing_metadata(ctx._trailing)
                return out
            except Abort as exc:
                code, details = exc.code, exc.details
                await context.abort(code, details, exc.trailing_metadata or ctx._trailing)
            except HookFailed as exc:
                log.error("pre-call hook failed", exc_info=exc.__cause__,
                          extra={"method": method})
                self._counters.handler_failed()
                code, details = grpc.StatusCode.INTERNAL, f"unexpected {exc}"
                await context.abort(code, details)
            except asyncio.CancelledError:
                code = (grpc.StatusCode.DEADLINE_EXCEEDED if context.time_remaining() == 0
                        else grpc.StatusCode.CANCELLED)
                raise
            except grpc.aio.AbortError:
                raise  # context.abort above; the code is already set
            except Exception as exc:
                log.exception("handler failed", extra={"method": method})
                self._counters.handler_failed()
                code, details = grpc.StatusCode.UNKNOWN, f"unexpected {type(exc).__name__}"
                await context.abort(code, details)
            finally:
                if self._after:
                    self._ended(info, CallOutcome(code, details, time.monotonic() - start))

        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(serve)
        return grpc.stream_unary_rpc_method_handler(serve)

    def _ended(self, info: CallInfo, outcome: CallOutcome) -> None:
        for hook in self._after:
            try:
                hook(info, outcome)
            except Exception:
                log.exception("post-call hook failed", extra={"method": info.method})
                self._counters.hook_failed()


def _inline(fn: InlineHandler, raw: bytes, info: CallInfo, counters: Counters,
            method: str) -> bytes | Later:
    """Run an inline handler; a failure other than Abort/Defer is INTERNAL, as on core."""
    try:
        out = fn(raw, info)
        if not isinstance(out, bytes | Later):
            raise TypeError(f"an inline handler returned {type(out).__name__}, not bytes")
        return out
    except (Abort, Defer):
        raise
    except Exception as exc:
        log.exception("inline handler failed", extra={"method": method})
        counters.handler_failed()
        raise Abort(grpc.StatusCode.INTERNAL, f"unexpected {type(exc).__name__}") from None


async def _unimplemented(requests: AsyncIterator[Any], context: Any) -> NoReturn:
    raise Abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


_UNIMPLEMENTED: MethodHandler = grpc.stream_unary_rpc_method_handler(_unimplemented)


async def _later(later: Later, context: _AioContext, counters: Counters, method: str) -> bytes:
    """Await a ``Later``; a failure other than Abort is INTERNAL, as on core."""
    try:
        if later.answer is not None:
            return await later.answer(context.time_remaining)
        assert later.start is not None
        answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        try:
            later.start(context.time_remaining, functools.partial(_settle, answered))
        except Exception as exc:  # as answering with it: ignored once answered (as on core)
            if answered.done():
                log.error("a started Later raised after answering", exc_info=exc,
                          extra={"method": method})
            _settle(answered, exc)
        return await answered
    except Abort:
        raise
    except Exception as exc:
        log.exception("handler failed", extra={"method": method})
        counters.handler_failed()
        raise Abort(grpc.StatusCode.INTERNAL, f"unexpected {type(exc).__name__}") from None


def _settle(fut: asyncio.Future[bytes], result: bytes | BaseException) -> None:
    if fut.done():  # answered twice (a bug), or the call's task was cancelled
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


class _Router(grpc.GenericRpcHandler):
    """The one handler grpc.aio knows: it looks the method up in the transport's table."""

    def __init__(self, server: AioServer) -> None:
        self._server = server

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> MethodHandler | None:
        method = handler_call_details.method
        if isinstance(method, bytes):
            method = method.decode(errors="replace")
        return self._server.find(method, handler_call_details)


__all__ = ["AioServer"]
