"""The core transport: grpc core's completion queue driven from one thread of ours.

Why not ``grpc.aio.server``: on this kind of machine its per-call bookkeeping
(a task, futures and several event-loop turns per unary call) costs about
four times what a decision does, so a Check spent most of its server time in
the framework. Here one thread polls grpc core's completion queue and
answers the methods registered *inline* (Check, CheckBulk) right there: read
the request bytes, check that no second message follows, decide, send
response and status in one batch — four completion events and no event-loop
turn per call.

An inline handler may instead return a ``Later`` (a write: it must wait for
the store): its work runs on the loop — as a task, or with ``Later.start``
as plain callbacks — and its answer goes back to the poll thread through an
outbox, so that grpc is called from one thread only on that path (calls from
the loop thread handed the interpreter lock back and forth once per answer).

Every other method (and an inline one that cannot answer at once, e.g. it
must wait for the index to catch up) runs as a task on the asyncio loop with
the ordinary servicer coroutine and a small ``ServicerContext``; the poll
thread hands its completions over in batches (one loop wake-up for all the
completions that arrived meanwhile). The generated ``add_*Servicer_to_server``
functions register on this server as they would on a grpc one.

Inline handlers and ``BeforeCall`` hooks run on the poll thread, concurrently
with the loop thread: whatever they read must be safe for that (the runtime
guards its index with a lock; see ``Runtime.check``).

This is the only module that imports grpc's private Cython layer
(``grpc._cython``); ``gatehouse.transport.choose`` uses it only for grpcio
versions it was tested with, and only after a start-up self-test.
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
from typing import Any, NoReturn

import grpc
from grpc._cython import cygrpc  # type: ignore[attr-defined]

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

log = logging.getLogger("gatehouse.transport")

_OK = cygrpc.StatusCode.ok
_REQUEST = object()
_SHUTDOWN = object()
# Tags of the batches started on a call are tuples (kind, request event, track, ...).
_RECV_INLINE = 1
_FINISHED = 2
_ASYNC = 3
_RECV_ASYNC = 4
_CLOSE = 5
_RECV_INLINE_END = 6
_RECV_ASYNC_END = 7
_PER_CALL = (_RECV_INLINE, _RECV_INLINE_END, _RECV_ASYNC, _RECV_ASYNC_END)
_OUTBOX_WAIT = 0.0002
"""Seconds the poll thread waits for a completion while answers may be left for it."""
# A deadline this far out means the client set none.
_NO_DEADLINE = 1e12
_NONE_SENT = f"{UNARY_MESSAGE_COUNT}; it sent none"
_MORE_SENT = f"{UNARY_MESSAGE_COUNT}; it sent more than one"


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


class _Track:
    """One call as the hooks see it; exists only while hooks are registered."""

    __slots__ = ("deadline", "info", "start")

    def __init__(self, request_ev: Any, secure: bool) -> None:
        self.start = time.monotonic()
        self.deadline: float = request_ev.call_details.deadline
        peer: bytes = request_ev.call.peer()
        self.info = CallInfo(request_ev.call_details.method.decode(errors="replace"),
                             tuple(request_ev.invocation_metadata or ()),
                             peer.decode(errors="replace"),
                             _subject(request_ev.call) if secure else None)

    def gone(self) -> grpc.StatusCode:
        """The code of a call that ended without our status: deadline passed, or cancelled."""
        if math.isfinite(self.deadline) and time.time() >= self.deadline:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED


_AUTH_CONTEXT: Callable[[Any], Any] | None = getattr(cygrpc, "auth_context", None)
"""grpc's own server reads a call's auth context with this; a grpcio without it gives the
core transport no client subjects (None: no certificate identity, never a wrong one)."""


def _subject(call: Any) -> str | None:
    """The verified client certificate's subject, from the call's auth context (grpc core's)."""
    auth = _AUTH_CONTEXT(call) if _AUTH_CONTEXT is not None else None
    if not auth:
        return None
    return client_subject({key.decode(errors="replace") if isinstance(key, bytes) else key: value
                           for key, value in auth.items()})


class _Context:
    """The ``ServicerContext`` of a call running on the loop."""

    def __init__(self, server: CoreServer, call: Any, deadline: float,
                 metadata: tuple[tuple[str, Any], ...], info: CallInfo | None = None) -> None:
        self._server = server
        self._info = info
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

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def peer(self) -> str:
        peer: bytes = self._call.peer()
        return peer.decode(errors="replace")

    def call_info(self) -> CallInfo | None:
        return self._info

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

    name = "core"

    def __init__(self, options: Iterable[tuple[str, Any]] = (), pending_requests: int = 8) -> None:
        self._cq = cygrpc.CompletionQueue()
        self._server = cygrpc.Server(server_options(options), False)
        self._server.register_completion_queue(self._cq)
        self._handlers: dict[bytes, MethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self._inline: dict[bytes, InlineHandler] = {}
        self._before: list[BeforeCall] = []
        self._after: list[AfterCall] = []
        self._counters = Counters()
        self._pending_requests = pending_requests
        self._secure = False  # a TLS port: read each call's client certificate subject
        self._credentials: list[grpc.ServerCredentials] = []  # grpc core calls into them
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
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
        # Answers of Laters, sent by the poll thread (grpc calls from the loop thread
        # would hand the interpreter lock back and forth with it once per answer).
        self._outbox: collections.deque[tuple[Any, tuple[Any, ...], _Track | None,
                                              grpc.StatusCode, str]] = collections.deque()
        self._laters = 0  # Laters handed to the loop and not yet sent (poll thread only)

    @property
    def stats(self) -> TransportStats:
        return self._counters.snapshot()

    # -- registration (the generated add_*_to_server functions call these) ---

    def add_registered_method_handlers(self, service: str,
                                       handlers: Mapping[str, MethodHandler]) -> None:
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

    def add_hooks(self, before: BeforeCall | None = None, after: AfterCall | None = None) -> None:
        if self._started:
            raise RuntimeError("add hooks before the transport starts")
        if before is not None:
            self._before.append(before)
        if after is not None:
            self._after.append(after)

    def add_insecure_port(self, address: str) -> int:
        port: int = self._server.add_http2_port(address.encode())
        return port

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        """Listen with TLS, as grpc's own server does: core gets the credentials' core object."""
        if self._started:
            raise RuntimeError("add ports before the transport starts")
        core_credentials = credentials._credentials  # type: ignore[attr-defined]
        port: int = self._server.add_http2_port(address.encode(), core_credentials)
        if port:
            self._secure = True
            self._credentials.append(credentials)
            if _AUTH_CONTEXT is None:
                log.warning("this grpcio gives the core transport no auth context: client "
                            "certificate subjects are not seen (--transport aio sees them)",
                            extra={"grpcio": grpc.__version__})
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
        before = tuple(self._before)
        hooked = bool(self._before or self._after)
        receive = cygrpc.ReceiveMessageOperation  # a new one per batch: it holds the message
        outbox = self._outbox
        while True:
            # While Laters are out, wake often enough to send their answers soon.
            ev = cq.poll(time.time() + (_OUTBOX_WAIT if self._laters else 1.0))
            if outbox:
                self._send_outbox()
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
                    track = None
                    if hooked:
                        track = _Track(ev, self._secure)
                        if before and not self._admit(ev, track, before):
                            continue
                    method = ev.call_details.method
                    fn = inline.get(method)
                    if fn is not None:
                        ev.call.start_server_batch((receive(0),), (_RECV_INLINE, ev, track, fn))
                    elif (h := handlers.get(method)) is not None and not h.request_streaming:
                        # Read the one request here: the loop gets the call once, complete.
                        ev.call.start_server_batch((receive(0),), (_RECV_ASYNC, ev, track))
                    else:
                        handoff(self._spawn, ev, None, track)
                elif tag is _SHUTDOWN:
                    with lock:
                        server.destroy()
                    cq.shutdown()
                    loop.call_soon_threadsafe(_resolve, self._shutdown_done, None)
                else:
                    kind = tag[0]
                    if kind == _ASYNC:
                        handoff(_resolve, tag[1], ev)
                    elif kind == _CLOSE:
                        ctx = tag[1]
                        ctx._done = True
                        if ev.batch_operations[0].cancelled():
                            ctx._cancelled = True
                            handoff(_cancel, ctx._task)
                    elif kind == _FINISHED:
                        pass
                    elif not ev.success:  # the call ended before its request was read
                        if tag[2] is not None:
                            self._ended(tag[2], tag[2].gone(), "")
                    elif kind in (_RECV_INLINE_END, _RECV_ASYNC_END):
                        if ev.batch_operations[0].message() is not None:
                            self._reply(tag[1].call, grpc.StatusCode.INVALID_ARGUMENT,
                                        _MORE_SENT, tag[2])
                        elif kind == _RECV_INLINE_END:
                            self._answer_inline(tag[1], tag[2], tag[3], tag[4])
                        else:
                            handoff(self._spawn, tag[1], tag[3], tag[2])
                    else:  # _RECV_INLINE, _RECV_ASYNC: the request; a second must not follow
                        raw = ev.batch_operations[0].message()
                        if raw is None:
                            self._reply(tag[1].call, grpc.StatusCode.INVALID_ARGUMENT,
                                        _NONE_SENT, tag[2])
                        elif kind == _RECV_INLINE:
                            tag[1].call.start_server_batch(
                                (receive(0),), (_RECV_INLINE_END, tag[1], tag[2], tag[3], raw))
                        else:
                            tag[1].call.start_server_batch(
                                (receive(0),), (_RECV_ASYNC_END, tag[1], tag[2], raw))
            except Exception:  # the poll thread must not die, and the call must get a status
                self._failed(tag, ev)

    def _admit(self, ev: Any, track: _Track, before: Sequence[BeforeCall]) -> bool:
        """Run the pre-call hooks; a refused call is answered here and False returned."""
        try:
            run_before(before, track.info)
            return True
        except Abort as exc:
            self._reply(ev.call, exc.code, exc.details, track, exc.trailing_metadata)
        except HookFailed as exc:
            log.error("pre-call hook failed", exc_info=exc.__cause__,
                      extra={"method": track.info.method})
            self._counters.handler_failed()
            self._reply(ev.call, grpc.StatusCode.INTERNAL, f"unexpected {exc}", track)
        return False

    def _failed(self, tag: Any, ev: Any) -> None:
        """Completion handling raised: answer the call INTERNAL rather than leave it hanging."""
        log.exception("error handling a completion")
        self._counters.handler_failed()
        call, track = None, None
        if tag is _REQUEST:
            call = ev.call if ev.success else None
        elif isinstance(tag, tuple) and tag[0] in _PER_CALL:
            call, track = tag[1].call, tag[2]
        if call is None:
            return
        try:
            self._reply(call, grpc.StatusCode.INTERNAL, "internal error", track)
        except Exception:
            log.exception("could not answer a failed call")

    def _reply(self, call: Any, code: grpc.StatusCode, details: str, track: _Track | None,
               trailing: tuple[tuple[str, Any], ...] = ()) -> None:
        """Answer a call that has sent nothing yet with a status only."""
        ops = _status_ops(_core_code(code), details, True, None, trailing)
        call.start_server_batch((*ops, cygrpc.ReceiveCloseOnServerOperation(0)), (_FINISHED,))
        if track is not None:
            self._ended(track, code, details)

    def _ended(self, track: _Track, code: grpc.StatusCode, details: str) -> None:
        outcome = CallOutcome(code, details, time.monotonic() - track.start)
        for hook in self._after:
            try:
                hook(track.info, outcome)
            except Exception:
                log.exception("post-call hook failed", extra={"method": track.info.method})
                self._counters.hook_failed()

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

    def _answer_inline(self, request_ev: Any, track: _Track | None, fn: InlineHandler,
                       raw: bytes) -> None:
        code, details = grpc.StatusCode.OK, ""
        try:
            out = fn(raw, track.info if track is not None else None)
        except Abort as exc:
            code, details = exc.code, exc.details
            ops = _status_ops(_core_code(code), details, True, None, exc.trailing_metadata)
        except Defer:
            self._handoff(self._spawn, request_ev, raw, track)
            return
        except Exception as exc:
            log.exception("inline handler failed", extra={
                "method": request_ev.call_details.method.decode(errors="replace")})
            self._counters.handler_failed()
            code, details = grpc.StatusCode.INTERNAL, f"unexpected {type(exc).__name__}"
            ops = _status_ops(_core_code(code), details, True)
        else:
            if isinstance(out, Later):
                self._laters += 1
                self._handoff(self._later, request_ev, track, out)
                return
            ops = _status_ops(_OK, "", True, out)
        request_ev.call.start_server_batch((*ops, cygrpc.ReceiveCloseOnServerOperation(0)),
                                           (_FINISHED,))
        if track is not None:
            self._ended(track, code, details)

    # -- Later: an inline call finished on the loop ----------------------------

    def _later(self, request_ev: Any, track: _Track | None, later: Later) -> None:
        deadline = float(request_ev.call_details.deadline)
        if not math.isfinite(deadline) or deadline >= _NO_DEADLINE:
            remaining: Callable[[], float | None] = _no_deadline
        else:
            def remaining() -> float | None:
                return max(0.0, deadline - time.time())
        if later.start is not None:
            sent = False

            def answered(result: bytes | BaseException) -> None:
                nonlocal sent
                if not sent:  # once: a second answer would be a bug, never a second status
                    sent = True
                    self._later_send(request_ev, track, result)

            try:
                later.start(remaining, answered)
            except Exception as exc:
                if sent:  # answered already: the answer stands; the bug is logged
                    log.error("a started Later raised after answering", exc_info=exc, extra={
                        "method": request_ev.call_details.method.decode(errors="replace")})
                answered(exc)
            return
        assert later.answer is not None
        task = asyncio.ensure_future(later.answer(remaining))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._later_done(request_ev, track, done))

    def _later_done(self, request_ev: Any, track: _Track | None,
                    task: asyncio.Future[bytes]) -> None:
        self._tasks.discard(task)
        if task.cancelled():  # the server is stopping
            self._later_send(request_ev, track, asyncio.CancelledError())
        else:
            self._later_send(request_ev, track, task.exception() or task.result())

    def _later_send(self, request_ev: Any, track: _Track | None,
                    result: bytes | BaseException) -> None:
        """Send what a ``Later`` answered: its bytes, or the status it ended with."""
        code, details = grpc.StatusCode.OK, ""
        trailing: tuple[tuple[str, Any], ...] = ()
        message: bytes | None = None
        if isinstance(result, bytes):
            message = result
        elif isinstance(result, asyncio.CancelledError):
            code, details = grpc.StatusCode.CANCELLED, "the server is stopping"
        elif isinstance(result, Abort):
            code, details, trailing = result.code, result.details, result.trailing_metadata
        else:
            log.error("handler failed", exc_info=result, extra={
                "method": request_ev.call_details.method.decode(errors="replace")})
            self._counters.handler_failed()
            code, details = grpc.StatusCode.INTERNAL, f"unexpected {type(result).__name__}"
        ops = _status_ops(_core_code(code), details, True, message, trailing)
        self._outbox.append((request_ev.call, (*ops, cygrpc.ReceiveCloseOnServerOperation(0)),
                             track, code, details))

    def _send_outbox(self) -> None:
        """Send the answers the loop left for the poll thread (poll thread only)."""
        outbox = self._outbox
        while outbox:
            call, ops, track, code, details = outbox.popleft()
            self._laters -= 1
            try:
                call.start_server_batch(ops, (_FINISHED,))
            except Exception:
                log.exception("could not send an answer")
            if track is not None:
                self._ended(track, code, details)

    # -- the asyncio side --------------------------------------------------

    def _batch(self, call: Any, ops: tuple[Any, ...]) -> asyncio.Future[Any]:
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        err = call.start_server_batch(ops, (_ASYNC, fut))
        if err:
            fut.set_exception(asyncio.CancelledError(f"call error {err}"))
        return fut

    def _find(self, method: bytes, metadata: tuple[tuple[str, Any], ...]
              ) -> MethodHandler | None:
        handler = self._handlers.get(method)
        if handler is None:
            details = _CallDetails(method.decode(errors="replace"), metadata)
            for generic in self._generic:
                handler = generic.service(details)
                if handler is not None:
                    break
        return handler

    def _spawn(self, request_ev: Any, raw: bytes | None, track: _Track | None) -> None:
        task = asyncio.ensure_future(self._run(request_ev, raw, track))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, request_ev: Any, raw: bytes | None, track: _Track | None) -> None:
        call = request_ev.call
        metadata = tuple(request_ev.invocation_metadata or ())
        method = request_ev.call_details.method
        deadline = request_ev.call_details.deadline
        if not math.isfinite(deadline):
            deadline = _NO_DEADLINE
        handler = self._find(method, metadata)
        if handler is None:
            self._reply(call, grpc.StatusCode.UNIMPLEMENTED, "Method not found!", track)
            return
        ctx = _Context(self, call, deadline, metadata,
                       track.info if track is not None else None)
        ctx._task = asyncio.current_task()
        # Its completion is handled on the poll thread: a cancelled call (client
        # gone, deadline passed, server stopping) cancels this task.
        call.start_server_batch((cygrpc.ReceiveCloseOnServerOperation(0),), (_CLOSE, ctx))
        code, details = grpc.StatusCode.OK, ""
        try:
            await self._dispatch(call, handler, ctx, raw)
            code, details = ctx._code, ctx._details
        except asyncio.CancelledError:
            # The client went away or the server is stopping: nothing to send.
            code = track.gone() if track is not None else grpc.StatusCode.CANCELLED
        except Abort as exc:
            code, details = exc.code, exc.details
            ctx._trailing = exc.trailing_metadata
            self._finish(call, ctx, _core_code(code), details)
        except Exception as exc:
            log.exception("handler failed", extra={"method": method.decode(errors="replace")})
            self._counters.handler_failed()
            code, details = grpc.StatusCode.UNKNOWN, f"unexpected {type(exc).__name__}"
            self._finish(call, ctx, _core_code(code), details)
        finally:
            if track is not None:
                self._ended(track, code, details)

    def _finish(self, call: Any, ctx: _Context, code: Any, details: str,
                message: bytes | None = None) -> None:
        """Send the last batch; nothing waits for it (the call is over either way)."""
        ops = _status_ops(code, details, not ctx._initial_sent, message, ctx._trailing)
        ctx._initial_sent = True
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

    async def _dispatch(self, call: Any, handler: MethodHandler, ctx: _Context,
                        raw: bytes | None) -> None:
        deserialize = handler.request_deserializer
        serialize = handler.response_serializer
        request: Any = None
        if not handler.request_streaming:
            if raw is None:  # a method found through a generic handler: read it here
                raw = await self._receive(call)
                if raw is None:
                    raise Abort(grpc.StatusCode.INVALID_ARGUMENT, _NONE_SENT)
                if await self._receive(call) is not None:
                    raise Abort(grpc.StatusCode.INVALID_ARGUMENT, _MORE_SENT)
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


def _no_deadline() -> float | None:
    return None


def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()


def _resolve(fut: asyncio.Future[Any] | None, value: Any) -> None:
    if fut is not None and not fut.done():
        fut.set_result(value)


__all__ = ["CoreServer"]
