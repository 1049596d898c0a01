"""The gRPC server: grpc core's completion queue driven from one thread of ours.

Why not ``grpc.aio.server``: on this kind of machine its per-call bookkeeping
(a task, futures and several event-loop turns per unary call) costs about
four times what a decision does, so a Check spent most of its server time in
the framework. Here one thread polls grpc core's completion queue and
answers the methods registered *inline* (Check, CheckBulk) right there: read
the request bytes, decide, send response and status in one batch — three
completion events and no event-loop turn per call.

Every other method (and an inline one that cannot answer at once, e.g. it
must wait for the index to catch up) runs as a task on the asyncio loop with
the ordinary servicer coroutine and a small ``ServicerContext``; the poll
thread hands its completions over in batches (one loop wake-up for all the
completions that arrived meanwhile). The
generated ``add_*Servicer_to_server`` functions register on this server as
they would on a grpc one.

Inline handlers run on the poll thread, concurrently with the loop thread:
whatever they read must be safe for that (the runtime guards its index with
a lock; see ``Runtime.check``).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from grpc._cython import cygrpc  # type: ignore[attr-defined]

log = logging.getLogger("gatehouse.transport")

if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _Handler = grpc.RpcMethodHandler
InlineHandler = Callable[[bytes], bytes]
"""Request bytes in, response bytes out, on the poll thread; may raise Abort or Defer."""


class Abort(Exception):
    """End the call with this status (raised by inline handlers and ``context.abort``)."""

    def __init__(self, code: grpc.StatusCode, details: str = "",
                 trailing_metadata: Sequence[tuple[str, Any]] = ()) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing_metadata)


class Defer(Exception):
    """An inline handler cannot answer without waiting: run the async handler instead."""


_OK = cygrpc.StatusCode.ok
_REQUEST = object()
_SHUTDOWN = object()
_RECV_INLINE = 1
_FINISHED = 2
_ASYNC = 3
_RECV_ASYNC = 4
_CLOSE = 5
# A deadline this far out means the client set none.
_NO_DEADLINE = 1e12


def _status_ops(code: Any, details: str, initial: bool, message: bytes | None = None,
                trailing: tuple[tuple[str, Any], ...] | None = None) -> tuple[Any, ...]:
    ops: list[Any] = []
    if initial:
        ops.append(cygrpc.SendInitialMetadataOperation(None, 0))
    if message is not None:
        ops.append(cygrpc.SendMessageOperation(message, 0))
    ops.append(cygrpc.SendStatusFromServerOperation(trailing or None, code, details.encode(), 0))
    return tuple(ops)


def _core_code(code: grpc.StatusCode) -> Any:
    return code.value[0]


@dataclass(frozen=True, slots=True)
class _CallDetails(grpc.HandlerCallDetails):
    method: str
    invocation_metadata: tuple[tuple[str, Any], ...]


class ServicerContext:
    """What the servicers (ours, health, reflection) use of grpc's context."""

    def __init__(self, server: CoreServer, call: Any, deadline: float,
                 metadata: tuple[tuple[str, Any], ...]) -> None:
        self._server = server
        self._call = call
        self._deadline = deadline
        self._metadata = metadata
        self._initial_sent = False
        self._code = grpc.StatusCode.OK
        self._details = ""
        self._cancelled = False
        self._done = False
        self._task: asyncio.Task[None] | None = None
        self._trailing: tuple[tuple[str, Any], ...] = ()
        self._serializer: Callable[[Any], bytes] | None = None

    def time_remaining(self) -> float | None:
        if self._deadline >= _NO_DEADLINE:
            return None
        return max(0.0, self._deadline - time.time())

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._metadata

    def peer(self) -> str:
        peer: bytes = self._call.peer()
        return peer.decode(errors="replace")

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._done

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
        """Send one message of a streaming response."""
        data = self._serializer(message) if self._serializer is not None else message
        ops: tuple[Any, ...] = (cygrpc.SendMessageOperation(data, 0),)
        if not self._initial_sent:
            ops = (cygrpc.SendInitialMetadataOperation(None, 0), *ops)
            self._initial_sent = True
        ev = await self._server._batch(self._call, ops)
        if not ev.success:
            raise asyncio.CancelledError("the call ended before the message was sent")


class CoreServer:
    """A gRPC server over grpc core; unary methods may be answered inline."""

    def __init__(self, options: Iterable[tuple[str, Any]] = (), pending_requests: int = 8) -> None:
        self._cq = cygrpc.CompletionQueue()
        self._server = cygrpc.Server(tuple(options), False)
        self._server.register_completion_queue(self._cq)
        self._handlers: dict[bytes, _Handler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self._inline: dict[bytes, InlineHandler] = {}
        self._pending_requests = pending_requests
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._shutdown_done: asyncio.Future[None] | None = None
        self._started = False
        # grpc core's server object must not be asked for a call while it is
        # being shut down from another thread (that crashes the process):
        # request_call, shutdown, cancel_all_calls and destroy take this lock.
        self._server_lock = threading.Lock()
        self._inbox: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = \
            collections.deque()
        self._inbox_scheduled = False

    # -- registration (the generated add_*_to_server functions call these) ---

    def add_registered_method_handlers(self, service: str,
                                       handlers: Mapping[str, _Handler]) -> None:
        for name, handler in handlers.items():
            self._handlers[f"/{service}/{name}".encode()] = handler

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_inline(self, method: str, handler: InlineHandler) -> None:
        """Answer unary ``method`` ("/pkg.Service/Method") on the poll thread."""
        registered = self._handlers.get(method.encode())
        if registered is None or registered.request_streaming or registered.response_streaming:
            raise ValueError(f"{method} must be a registered unary method")
        self._inline[method.encode()] = handler

    def add_insecure_port(self, address: str) -> int:
        port: int = self._server.add_http2_port(address.encode())
        return port

    # -- life cycle ------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._shutdown_done = self._loop.create_future()
        self._server.start()
        self._started = True
        for _ in range(self._pending_requests):
            self._server.request_call(self._cq, self._cq, _REQUEST)
        self._thread = threading.Thread(target=self._poll, name="grpc-core-poll", daemon=True)
        self._thread.start()

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, let running ones finish for ``grace`` seconds, then cancel them."""
        if not self._started or self._stopping:
            return
        assert self._shutdown_done is not None and self._thread is not None
        with self._server_lock:
            self._stopping = True
            self._server.shutdown(self._cq, _SHUTDOWN)
        try:
            await asyncio.wait_for(asyncio.shield(self._shutdown_done), grace)
        except TimeoutError:
            with self._server_lock:
                self._server.cancel_all_calls()
            for task in list(self._tasks):
                task.cancel()
            await self._shutdown_done
        await asyncio.to_thread(self._thread.join)

    # -- the poll thread ---------------------------------------------------

    def _poll(self) -> None:
        cq, loop = self._cq, self._loop
        assert loop is not None
        timeout_type = cygrpc.CompletionType.queue_timeout
        shutdown_type = cygrpc.CompletionType.queue_shutdown
        server, request, inline, handlers = self._server, _REQUEST, self._inline, self._handlers
        lock = self._server_lock
        handoff = self._handoff
        while True:
            ev = cq.poll(time.time() + 1.0)
            tag = ev.tag
            if tag is None:
                if ev.completion_type == timeout_type:
                    continue
                if ev.completion_type == shutdown_type:
                    return
                continue
            try:
                if tag is request:
                    with lock:  # keep the same number of calls requested from core
                        if not self._stopping:
                            server.request_call(cq, cq, request)
                    if not ev.success:
                        continue  # no call came with it (the server is shutting down)
                    method = ev.call_details.method
                    fn = inline.get(method)
                    if fn is not None:
                        ev.call.start_server_batch((cygrpc.ReceiveMessageOperation(0),),
                                                   (_RECV_INLINE, ev, fn))
                    elif (h := handlers.get(method)) is not None and not h.request_streaming:
                        # Read the one request here: the loop gets the call once, complete.
                        ev.call.start_server_batch((cygrpc.ReceiveMessageOperation(0),),
                                                   (_RECV_ASYNC, ev))
                    else:
                        handoff(self._spawn, ev, None)
                elif tag is _SHUTDOWN:
                    with lock:
                        server.destroy()
                    cq.shutdown()
                    loop.call_soon_threadsafe(_resolve, self._shutdown_done, None)
                else:
                    kind = tag[0]
                    if kind == _RECV_INLINE:
                        self._answer_inline(tag[1], tag[2], ev)
                    elif kind == _ASYNC:
                        handoff(_resolve, tag[1], ev)
                    elif kind == _RECV_ASYNC:
                        if ev.success:
                            raw = ev.batch_operations[0].message()
                            if raw is None:
                                tag[1].call.start_server_batch(_no_request_ops(), (_FINISHED,))
                            else:
                                handoff(self._spawn, tag[1], raw)
                    elif kind == _CLOSE:
                        ctx = tag[1]
                        ctx._done = True
                        if ev.batch_operations[0].cancelled():
                            ctx._cancelled = True
                            handoff(_cancel, ctx._task)
            except Exception:  # the poll thread must not die
                log.exception("error handling a completion")

    def _handoff(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop; one wake-up carries everything queued since the last."""
        self._inbox.append((fn, args))
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._inbox_scheduled = False  # first: what arrives while draining schedules again
        inbox = self._inbox
        while inbox:
            fn, args = inbox.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("error handing a completion to the loop")

    def _answer_inline(self, request_ev: Any, fn: InlineHandler, ev: Any) -> None:
        call = request_ev.call
        if not ev.success:
            return  # cancelled before the request arrived
        raw = ev.batch_operations[0].message()
        if raw is None:
            call.start_server_batch(_no_request_ops(), (_FINISHED,))
            return
        else:
            try:
                ops = _status_ops(_OK, "", True, fn(raw))
            except Abort as exc:
                ops = _status_ops(_core_code(exc.code), exc.details, True, None,
                                  exc.trailing_metadata)
            except Defer:
                assert self._loop is not None
                self._handoff(self._spawn, request_ev, raw)
                return
            except Exception as exc:
                log.exception("inline handler failed", extra={
                    "method": request_ev.call_details.method.decode()})
                ops = _status_ops(cygrpc.StatusCode.unknown, f"unexpected {type(exc).__name__}",
                                  True)
        call.start_server_batch((*ops, cygrpc.ReceiveCloseOnServerOperation(0)), (_FINISHED,))

    # -- the asyncio side --------------------------------------------------

    def _batch(self, call: Any, ops: tuple[Any, ...]) -> asyncio.Future[Any]:
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        err = call.start_server_batch(ops, (_ASYNC, fut))
        if err:
            fut.set_exception(asyncio.CancelledError(f"call error {err}"))
        return fut

    def _find(self, method: bytes, metadata: tuple[tuple[str, Any], ...]
              ) -> _Handler | None:
        handler = self._handlers.get(method)
        if handler is None:
            details = _CallDetails(method.decode(errors="replace"), metadata)
            for generic in self._generic:
                handler = generic.service(details)
                if handler is not None:
                    break
        return handler

    def _spawn(self, request_ev: Any, raw: bytes | None) -> None:
        task = asyncio.ensure_future(self._run(request_ev, raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, request_ev: Any, raw: bytes | None) -> None:
        call = request_ev.call
        metadata = tuple(request_ev.invocation_metadata or ())
        method = request_ev.call_details.method
        deadline = request_ev.call_details.deadline
        if not math.isfinite(deadline):
            deadline = _NO_DEADLINE
        handler = self._find(method, metadata)
        if handler is None:
            self._finish_now(call, (
                *_status_ops(cygrpc.StatusCode.unimplemented, "Method not found!", True),
                cygrpc.ReceiveCloseOnServerOperation(0)))
            return
        ctx = ServicerContext(self, call, deadline, metadata)
        ctx._task = asyncio.current_task()
        # Its completion is handled on the poll thread: a cancelled call (client
        # gone, deadline passed, server stopping) cancels this task.
        call.start_server_batch((cygrpc.ReceiveCloseOnServerOperation(0),), (_CLOSE, ctx))
        try:
            await self._dispatch(call, handler, ctx, raw)
        except asyncio.CancelledError:
            return  # the client went away or the server is stopping: nothing to send
        except Abort as exc:
            ctx._trailing = exc.trailing_metadata
            self._finish(call, ctx, _core_code(exc.code), exc.details)
        except Exception as exc:
            log.exception("handler failed", extra={"method": method.decode(errors="replace")})
            self._finish(call, ctx, cygrpc.StatusCode.unknown,
                               f"unexpected {type(exc).__name__}")

    def _finish(self, call: Any, ctx: ServicerContext, code: Any, details: str,
                      message: bytes | None = None) -> None:
        ops = _status_ops(code, details, not ctx._initial_sent, message, ctx._trailing)
        ctx._initial_sent = True
        self._finish_now(call, ops)

    @staticmethod
    def _finish_now(call: Any, ops: tuple[Any, ...]) -> None:
        """Send the last batch; nothing waits for it (the call is over either way)."""
        call.start_server_batch(ops, (_FINISHED,))

    async def _receive(self, call: Any) -> bytes | None:
        ev = await self._batch(call, (cygrpc.ReceiveMessageOperation(0),))
        if not ev.success:
            raise asyncio.CancelledError("the call ended")
        data: bytes | None = ev.batch_operations[0].message()
        return data

    async def _requests(self, call: Any, deserialize: Callable[[bytes], Any] | None
                        ) -> AsyncIterator[Any]:
        while True:
            raw = await self._receive(call)
            if raw is None:
                return
            yield deserialize(raw) if deserialize is not None else raw

    async def _dispatch(self, call: Any, handler: _Handler, ctx: ServicerContext,
                        raw: bytes | None) -> None:
        deserialize = handler.request_deserializer
        serialize = handler.response_serializer
        request: Any = None
        if not handler.request_streaming:
            if raw is None:
                raw = await self._receive(call)
            if raw is None:
                raise Abort(grpc.StatusCode.INTERNAL,
                            "a unary method needs exactly one request message")
            try:
                request = deserialize(raw) if deserialize is not None else raw
            except Exception:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                            "request: not a valid protobuf message") from None
        else:
            request = self._requests(call, deserialize)
        if not handler.response_streaming:
            fn: Any = handler.stream_unary if handler.request_streaming else handler.unary_unary
            response = await fn(request, ctx)
            data = serialize(response) if serialize is not None else response
            self._finish(call, ctx, _core_code(ctx._code), ctx._details, data)
            return
        fn = handler.stream_stream if handler.request_streaming else handler.unary_stream
        ctx._serializer = serialize
        result = fn(request, ctx)
        if inspect.isasyncgen(result):
            async for message in result:
                await ctx.write(message)
        else:  # a coroutine that sends with context.write
            await result
        self._finish(call, ctx, _core_code(ctx._code), ctx._details)


def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()


def _no_request_ops() -> tuple[Any, ...]:
    return (*_status_ops(cygrpc.StatusCode.internal,
                         "a unary method needs exactly one request message", True),
            cygrpc.ReceiveCloseOnServerOperation(0))


def _resolve(fut: asyncio.Future[Any] | None, value: Any) -> None:
    if fut is not None and not fut.done():
        fut.set_result(value)
