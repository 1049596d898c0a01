"""Both gRPC transports with toy handlers, over real loopback gRPC.

The handlers take and return raw bytes (no serializers), so these tests are
about the transports alone: inline answers, deferral, every streaming shape,
errors, deadlines, cancellation, shutdown, message counts and sizes, hooks,
and which transport ``auto`` picks. Every case runs on ``core`` and ``aio``
unless its name says it is about one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from gatehouse.limits import LIMITS
from gatehouse.transport import (
    CORE_TESTED,
    Abort,
    CallInfo,
    CallOutcome,
    Defer,
    Later,
    ServicerContext,
    Transport,
    open_transport,
)
from gatehouse.transport.aio import AioServer
from gatehouse.transport.base import UNARY_MESSAGE_COUNT, Answered
from gatehouse.transport.choose import core_supports, self_test
from gatehouse.transport.core import CoreServer

SERVICE = "toy.Toy"
TRANSPORTS = ("core", "aio")
T = TypeVar("T")


class Toy:
    def __init__(self) -> None:
        self.stream_closed = threading.Event()
        self.deadlines: list[float | None] = []
        self.reached: list[bytes] = []  # every request a handler (inline or async) saw
        self.late_answers = threading.Event()  # a Later's extra answers were all given

    def inline(self, raw: bytes, info: CallInfo | None) -> bytes | Later:
        self.reached.append(raw[:16])
        if raw == b"notes":
            return b"inline:" + str(info.notes.get("caller") if info else None).encode()
        if raw == b"abort":
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION, "rule 'x' says no")
        if raw == b"defer":
            raise Defer
        if raw == b"boom":
            raise RuntimeError("bug")
        if raw == b"not-bytes":
            return "a str"  # type: ignore[return-value]
        if raw.startswith(b"later"):
            return Later(lambda remaining: self.later(raw, info, remaining))
        if raw.startswith(b"start"):
            return Later(start=lambda remaining, answered: self.start(raw, info, remaining,
                                                                      answered))
        if len(raw) > 64:
            return b"inline:%d bytes" % len(raw)
        return b"inline:" + raw

    async def later(self, raw: bytes, info: CallInfo | None,
                    remaining: Callable[[], float | None]) -> bytes:
        """The loop half of an inline answer (a write waiting for its store, say)."""
        await asyncio.sleep(0.01)
        if raw == b"later-abort":
            raise Abort(grpc.StatusCode.ABORTED, "raced")
        if raw == b"later-boom":
            raise RuntimeError("bug")
        left = remaining()
        caller = info.notes.get("caller") if info else None
        return b"later:%s:%s:%s" % (raw, str(caller).encode(),
                                    b"none" if left is None else b"some")

    def start(self, raw: bytes, info: CallInfo | None, remaining: Callable[[], float | None],
              answered: Answered) -> None:
        """The task-free loop half of an inline answer: it hands its result to ``answered``
        (at once, or from a later loop callback, as a store's group commit does)."""
        loop = asyncio.get_running_loop()  # start is called on the loop
        left = remaining()
        caller = info.notes.get("caller") if info else None
        ok = b"start:%s:%s:%s" % (raw, str(caller).encode(),
                                  b"none" if left is None else b"some")
        aborted = Abort(grpc.StatusCode.ABORTED, "raced", (("x-retry-after", "1"),))
        if raw == b"start-soon":
            loop.call_soon(answered, ok)
        elif raw == b"start-later":
            loop.call_later(0.02, answered, ok)
        elif raw.startswith(b"start-n"):  # answers out of the order the calls came in
            loop.call_later((int(raw[7:]) % 7) * 0.003, answered, ok)
        elif raw == b"start-abort":
            answered(aborted)
        elif raw == b"start-abort-later":
            loop.call_later(0.01, answered, aborted)
        elif raw == b"start-raises-abort":
            raise aborted
        elif raw == b"start-boom":
            loop.call_soon(answered, RuntimeError("bug"))
        elif raw == b"start-raises":
            raise RuntimeError("bug")
        elif raw == b"start-twice":
            answered(ok)
            answered(b"second")
            loop.call_soon(answered, RuntimeError("a late failure"))
            loop.call_later(0.05, answered, b"third")
            loop.call_later(0.05, self.late_answers.set)
        elif raw == b"start-answers-then-raises":
            answered(ok)
            raise RuntimeError("a bug after the answer")
        else:
            answered(ok)

    async def unary(self, request: bytes, context: ServicerContext) -> bytes:
        self.reached.append(request[:16])
        self.deadlines.append(context.time_remaining())
        if request == b"abort":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        if request == b"abort-md":
            await context.abort(grpc.StatusCode.ABORTED, "raced",
                                (("x-retry-after", "1"),))
        if request == b"boom":
            raise RuntimeError("bug")
        if request == b"notes":
            info = context.call_info()
            return b"async:" + str(info.notes.get("caller") if info else None).encode()
        if request == b"sleep":
            # A handler that outlasts the caller's deadline is what the test needs.
            await asyncio.sleep(30)
        meta = dict(context.invocation_metadata())
        return b"async:" + request + b":" + str(meta.get("x-tag", "")).encode()

    async def count(self, request: bytes, context: ServicerContext) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode()
        if request == b"3":
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, "stopped after 3")

    async def forever(self, request: bytes, context: ServicerContext) -> AsyncIterator[bytes]:
        try:
            yield b"first"
            # A stream that never ends on its own: the test cancels it.
            await asyncio.sleep(3600)
        finally:
            self.stream_closed.set()

    async def writes(self, request: bytes, context: ServicerContext) -> None:
        for part in request.split(b","):
            await context.write(part)

    async def echo(self, requests: AsyncIterator[bytes], context: ServicerContext
                   ) -> AsyncIterator[bytes]:
        async for r in requests:
            yield r.upper()

    async def join(self, requests: AsyncIterator[bytes], context: ServicerContext) -> bytes:
        return b"+".join([r async for r in requests])


@dataclass
class Hooks:
    """Recording hooks; ``refuse`` holds the methods the pre-call hook refuses."""

    seen: list[CallInfo] = field(default_factory=list)
    ended: list[tuple[CallInfo, CallOutcome]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def before(self, info: CallInfo) -> None:
        self.seen.append(info)
        info.notes["caller"] = dict(info.metadata).get("x-caller")
        if info.method in self.refuse:
            if dict(info.metadata).get("authorization") == "explode":
                raise KeyError("a bug in the hook")
            raise Abort(grpc.StatusCode.UNAUTHENTICATED, "no key")

    def after(self, info: CallInfo, outcome: CallOutcome) -> None:
        if info.metadata and dict(info.metadata).get("x-tag") == "after-explodes":
            raise ValueError("a bug in the post-call hook")
        with self.changed:
            self.ended.append((info, outcome))
            self.changed.notify_all()

    def wait_ended(self, method: str, count: int = 1) -> list[CallOutcome]:
        """The outcomes of ``count`` calls to ``method`` (hooks may run after the answer)."""
        def outcomes() -> list[CallOutcome]:
            return [o for i, o in self.ended if i.method == method]

        with self.changed:
            assert self.changed.wait_for(lambda: len(outcomes()) >= count, timeout=10)
            return outcomes()


@dataclass
class Served:
    address: str
    toy: Toy
    server: Transport
    loop: asyncio.AbstractEventLoop
    hooks: Hooks

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)


def make_transport(kind: str, options: Iterable[tuple[str, Any]] = ()) -> Transport:
    return CoreServer(options) if kind == "core" else AioServer(options)


def register(server: Transport, toy: Toy) -> None:
    server.add_registered_method_handlers(SERVICE, {
        "Inline": grpc.unary_unary_rpc_method_handler(toy.unary),
        "Unary": grpc.unary_unary_rpc_method_handler(toy.unary),
        "Count": grpc.unary_stream_rpc_method_handler(toy.count),
        "Forever": grpc.unary_stream_rpc_method_handler(toy.forever),
        "Writes": grpc.unary_stream_rpc_method_handler(toy.writes),
        "Echo": grpc.stream_stream_rpc_method_handler(toy.echo),
        "Join": grpc.stream_unary_rpc_method_handler(toy.join),
    })
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("toy.Generic", {
        "Unary": grpc.unary_unary_rpc_method_handler(toy.unary),
    }),))
    server.add_inline(f"/{SERVICE}/Inline", toy.inline)


@contextlib.contextmanager
def serving(kind: str, hooks: Hooks | None = None,
            options: Iterable[tuple[str, Any]] = ()) -> Iterator[Served]:
    """A toy server on ``kind``, built and run on its own event-loop thread."""
    toy, recorder = Toy(), hooks or Hooks()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def build() -> tuple[Transport, int]:
        server = make_transport(kind, options)  # inside the loop, as aio requires
        register(server, toy)
        if hooks is not None:
            server.add_hooks(hooks.before, hooks.after)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(build(), loop).result(10)
    served = Served(f"127.0.0.1:{port}", toy, server, loop, recorder)
    try:
        yield served
    finally:
        served.run(server.stop(0.5))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(params=TRANSPORTS)
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    with serving(request.param) as s:
        yield s


@pytest.fixture(params=TRANSPORTS)
def hooked(request: pytest.FixtureRequest) -> Iterator[Served]:
    with serving(request.param, Hooks()) as s:
        yield s


@pytest.fixture()
def channel(served: Served) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.address) as ch:
        yield ch


def call(channel: grpc.Channel, method: str, data: bytes, **kw: Any) -> Any:
    return channel.unary_unary(f"/{SERVICE}/{method}")(data, timeout=kw.pop("timeout", 5), **kw)


def code_of(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details() or ""


class TestInline:
    def test_answers_without_the_servicer(self, served: Served, channel: grpc.Channel) -> None:
        """An inline method is answered by the byte handler alone."""
        assert call(channel, "Inline", b"hi") == b"inline:hi"
        assert served.toy.reached == [b"hi"]

    def test_abort_is_the_status_asked_for(self, channel: grpc.Channel) -> None:
        """Abort raised by an inline handler becomes exactly that status and message."""
        assert code_of(lambda: call(channel, "Inline", b"abort")) == (
            grpc.StatusCode.FAILED_PRECONDITION, "rule 'x' says no")

    def test_defer_runs_the_async_handler_with_the_same_request(
            self, channel: grpc.Channel) -> None:
        """Defer hands the same request bytes and metadata to the servicer coroutine."""
        out = call(channel, "Inline", b"defer", metadata=(("x-tag", "t1"),))
        assert out == b"async:defer:t1"

    def test_a_failing_handler_is_internal_counted_and_the_server_goes_on(
            self, served: Served, channel: grpc.Channel) -> None:
        """An inline handler raising a bug answers INTERNAL, counts a failure, serves on."""
        assert served.server.stats.handler_failures == 0
        code, details = code_of(lambda: call(channel, "Inline", b"boom"))
        assert code == grpc.StatusCode.INTERNAL and "RuntimeError" in details
        assert served.server.stats.handler_failures == 1
        assert call(channel, "Inline", b"again") == b"inline:again"

    def test_a_failure_after_the_handler_still_answers_the_call(
            self, served: Served, channel: grpc.Channel) -> None:
        """A handler result the transport cannot send answers INTERNAL instead of hanging."""
        code, _ = code_of(lambda: call(channel, "Inline", b"not-bytes", timeout=30))
        assert code == grpc.StatusCode.INTERNAL  # not DEADLINE_EXCEEDED after 30 s
        assert served.server.stats.handler_failures == 1
        assert call(channel, "Inline", b"again") == b"inline:again"

    def test_many_concurrent_calls(self, channel: grpc.Channel) -> None:
        """Five hundred concurrent inline calls each get their own answer."""
        futures = [channel.unary_unary(f"/{SERVICE}/Inline").future(str(i).encode(), timeout=20)
                   for i in range(500)]
        assert [f.result() for f in futures] == [b"inline:%d" % i for i in range(500)]

    def test_later_is_answered_from_the_loop(self, served: Served,
                                             channel: grpc.Channel) -> None:
        """A Later's bytes are the answer; it sees the deadline the call has (or none)."""
        assert call(channel, "Inline", b"later") == b"later:later:None:some"
        no_deadline = channel.unary_unary(f"/{SERVICE}/Inline")(b"later")
        assert no_deadline == b"later:later:None:none"
        assert served.toy.reached == [b"later", b"later"]

    def test_later_abort_and_failure(self, served: Served, channel: grpc.Channel) -> None:
        """Abort from a Later is the status; a bug in one is INTERNAL, counted, and the
        server goes on."""
        assert code_of(lambda: call(channel, "Inline", b"later-abort")) == (
            grpc.StatusCode.ABORTED, "raced")
        code, details = code_of(lambda: call(channel, "Inline", b"later-boom"))
        assert code == grpc.StatusCode.INTERNAL and "RuntimeError" in details
        assert served.server.stats.handler_failures == 1
        assert call(channel, "Inline", b"later") == b"later:later:None:some"

    def test_many_concurrent_laters(self, channel: grpc.Channel) -> None:
        """Three hundred Laters in flight at once each get their own answer."""
        futures = [channel.unary_unary(f"/{SERVICE}/Inline").future(b"later%d" % i, timeout=20)
                   for i in range(300)]
        assert [f.result() for f in futures] == [
            b"later:later%d:None:some" % i for i in range(300)]

    def test_later_start_answers_with_the_bytes_it_is_handed(
            self, served: Served, channel: grpc.Channel) -> None:
        """The bytes a started Later hands to ``answered`` (at once, inside ``start``) are
        the response; ``start`` sees the deadline the call has (or none)."""
        assert call(channel, "Inline", b"start") == b"start:start:None:some"
        no_deadline = channel.unary_unary(f"/{SERVICE}/Inline")(b"start")
        assert no_deadline == b"start:start:None:none"
        assert served.toy.reached == [b"start", b"start"]
        assert served.server.stats.handler_failures == 0

    def test_later_start_may_answer_from_a_later_loop_callback(
            self, channel: grpc.Channel) -> None:
        """``answered`` called after ``start`` returned, from a call_soon or call_later
        callback (as a store's group commit answers), answers the call."""
        assert call(channel, "Inline", b"start-soon") == b"start:start-soon:None:some"
        assert call(channel, "Inline", b"start-later") == b"start:start-later:None:some"

    def test_later_start_abort_is_the_status_with_its_details(
            self, channel: grpc.Channel) -> None:
        """An Abort handed to ``answered`` (at once or later) or raised by ``start`` is the
        call's status, with its details and trailing metadata."""
        for raw in (b"start-abort", b"start-abort-later", b"start-raises-abort"):
            with pytest.raises(grpc.RpcError) as err:
                call(channel, "Inline", raw)
            assert (err.value.code(), err.value.details()) == (
                grpc.StatusCode.ABORTED, "raced"), raw
            assert ("x-retry-after", "1") in tuple(err.value.trailing_metadata() or ()), raw

    def test_later_start_failure_is_internal_counted_and_the_server_goes_on(
            self, served: Served, channel: grpc.Channel) -> None:
        """A non-Abort exception handed to ``answered``, or raised by ``start``, answers
        INTERNAL naming its type, counts a handler failure, and the server serves on."""
        for count, raw in enumerate((b"start-boom", b"start-raises"), 1):
            code, details = code_of(lambda r=raw: call(channel, "Inline", r))  # type: ignore[misc]
            assert code == grpc.StatusCode.INTERNAL and "RuntimeError" in details, raw
            assert served.server.stats.handler_failures == count
        assert call(channel, "Inline", b"start") == b"start:start:None:some"
        assert call(channel, "Inline", b"later") == b"later:later:None:some"

    def test_later_start_answered_twice_answers_once(
            self, served: Served, channel: grpc.Channel) -> None:
        """Only the first ``answered`` counts: a second one (bytes at once, an exception
        soon after, bytes after the call ended) neither sends another answer nor counts a
        failure, and the server serves on."""
        assert call(channel, "Inline", b"start-twice") == b"start:start-twice:None:some"
        assert served.toy.late_answers.wait(5)
        assert call(channel, "Inline", b"start") == b"start:start:None:some"
        assert call(channel, "Inline", b"start-soon") == b"start:start-soon:None:some"
        assert served.server.stats.handler_failures == 0

    def test_later_start_that_raises_after_answering_keeps_its_answer(
            self, served: Served, channel: grpc.Channel) -> None:
        """``start`` raising after it answered is a second answer, ignored: the client gets
        the bytes it was answered with (a committed write is not reported failed)."""
        assert call(channel, "Inline", b"start-answers-then-raises") == \
            b"start:start-answers-then-raises:None:some"
        assert call(channel, "Inline", b"start") == b"start:start:None:some"

    def test_many_concurrent_started_laters(self, channel: grpc.Channel) -> None:
        """Three hundred started Laters in flight at once, answered from loop callbacks in
        another order than they came in, each get their own answer."""
        futures = [channel.unary_unary(f"/{SERVICE}/Inline").future(b"start-n%d" % i,
                                                                    timeout=20)
                   for i in range(300)]
        assert [f.result() for f in futures] == [
            b"start:start-n%d:None:some" % i for i in range(300)]

    def test_a_later_takes_exactly_one_of_answer_and_start(self) -> None:
        """Later() and Later(answer=..., start=...) are refused with TypeError."""
        async def answer(remaining: Callable[[], float | None]) -> bytes:
            return b""

        def start(remaining: Callable[[], float | None], answered: Answered) -> None:
            answered(b"")

        with pytest.raises(TypeError, match="exactly one of answer and start"):
            Later()
        with pytest.raises(TypeError, match="exactly one of answer and start"):
            Later(answer=answer, start=start)
        assert Later(answer=answer).start is None and Later(start=start).answer is None

    def test_inline_must_name_a_registered_unary_method(self, served: Served) -> None:
        """add_inline refuses a method that is not registered, or not unary."""
        with pytest.raises(ValueError, match="registered unary"):
            served.server.add_inline("/toy.Toy/Missing", lambda raw, info: raw)
        with pytest.raises(ValueError, match="registered unary"):
            served.server.add_inline(f"/{SERVICE}/Count", lambda raw, info: raw)


class TestAsync:
    def test_unary_with_metadata_and_deadline(self, served: Served,
                                              channel: grpc.Channel) -> None:
        """The servicer sees the caller's metadata and the time left before its deadline."""
        assert call(channel, "Unary", b"x", metadata=(("x-tag", "m"),), timeout=3) == b"async:x:m"
        remaining = served.toy.deadlines[-1]
        assert remaining is not None and 1.0 < remaining <= 3.5  # clocks may differ by ms

    def test_no_deadline_means_none(self, served: Served, channel: grpc.Channel) -> None:
        """A call without a deadline reports None as its time remaining."""
        channel.unary_unary(f"/{SERVICE}/Unary")(b"y")
        assert served.toy.deadlines[-1] is None

    def test_abort_and_failure(self, served: Served, channel: grpc.Channel) -> None:
        """context.abort is the status asked for; a bug is UNKNOWN and counted."""
        assert code_of(lambda: call(channel, "Unary", b"abort")) == (
            grpc.StatusCode.NOT_FOUND, "no such thing")
        code, details = code_of(lambda: call(channel, "Unary", b"boom"))
        assert code == grpc.StatusCode.UNKNOWN and "RuntimeError" in details
        assert served.server.stats.handler_failures == 1

    def test_abort_carries_trailing_metadata(self, channel: grpc.Channel) -> None:
        """Trailing metadata given to abort reaches the client."""
        with pytest.raises(grpc.RpcError) as err:
            call(channel, "Unary", b"abort-md")
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert ("x-retry-after", "1") in tuple(err.value.trailing_metadata() or ())

    def test_deadline_ends_a_slow_call(self, channel: grpc.Channel) -> None:
        """A handler still running at the deadline is ended and the server serves on."""
        code, _ = code_of(lambda: call(channel, "Unary", b"sleep", timeout=0.3))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert call(channel, "Unary", b"z") == b"async:z:"

    def test_server_stream(self, channel: grpc.Channel) -> None:
        """An async-generator handler streams its messages in order, or none."""
        stream = channel.unary_stream(f"/{SERVICE}/Count")
        assert list(stream(b"5", timeout=5)) == [b"0", b"1", b"2", b"3", b"4"]
        assert list(stream(b"0", timeout=5)) == []

    def test_server_stream_abort_after_messages(self, channel: grpc.Channel) -> None:
        """A stream that aborts after some messages delivers them, then the status."""
        got: list[bytes] = []
        stream = channel.unary_stream(f"/{SERVICE}/Count")(b"3", timeout=5)
        code, details = code_of(lambda: got.extend(stream))
        assert got == [b"0", b"1", b"2"]
        assert (code, details) == (grpc.StatusCode.OUT_OF_RANGE, "stopped after 3")

    def test_stream_written_through_the_context(self, channel: grpc.Channel) -> None:
        """A coroutine handler streams with context.write."""
        stream = channel.unary_stream(f"/{SERVICE}/Writes")
        assert list(stream(b"a,b,c", timeout=5)) == [b"a", b"b", b"c"]

    def test_bidirectional_and_client_streams(self, channel: grpc.Channel) -> None:
        """Request-streaming handlers get every message the client sent."""
        echo = channel.stream_stream(f"/{SERVICE}/Echo")
        assert list(echo(iter([b"a", b"bc"]), timeout=5)) == [b"A", b"BC"]
        join = channel.stream_unary(f"/{SERVICE}/Join")
        assert join(iter([b"1", b"2", b"3"]), timeout=5) == b"1+2+3"

    def test_client_cancel_ends_the_handler(self, served: Served, channel: grpc.Channel) -> None:
        """A client cancelling a stream cancels the handler behind it."""
        stream = channel.unary_stream(f"/{SERVICE}/Forever")(b"", timeout=30)
        assert next(stream) == b"first"
        stream.cancel()
        assert served.toy.stream_closed.wait(5)

    def test_unknown_method_is_unimplemented(self, channel: grpc.Channel) -> None:
        """A method nobody registered is UNIMPLEMENTED."""
        code, _ = code_of(lambda: channel.unary_unary("/toy.Toy/Nope")(b"", timeout=5))
        assert code == grpc.StatusCode.UNIMPLEMENTED

    def test_generic_handlers_serve(self, channel: grpc.Channel) -> None:
        """Methods registered through a generic handler (as reflection is) are served."""
        assert channel.unary_unary("/toy.Generic/Unary")(b"g", timeout=5) == b"async:g:"


UNARY_PATHS = (f"/{SERVICE}/Inline", f"/{SERVICE}/Unary", "/toy.Generic/Unary")


class TestRequestCount:
    @pytest.mark.parametrize("method", UNARY_PATHS)
    def test_no_request_message_is_invalid_argument(
            self, served: Served, channel: grpc.Channel, method: str) -> None:
        """A unary method called with no request message is INVALID_ARGUMENT, never run."""
        code, details = code_of(lambda: channel.stream_unary(method)(iter(()), timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith(UNARY_MESSAGE_COUNT) and "none" in details
        assert served.toy.reached == []

    @pytest.mark.parametrize("method", UNARY_PATHS)
    def test_two_request_messages_are_invalid_argument(
            self, served: Served, channel: grpc.Channel, method: str) -> None:
        """A unary method sent two request messages is INVALID_ARGUMENT, not half-answered."""
        code, details = code_of(
            lambda: channel.stream_unary(method)(iter((b"one", b"two")), timeout=5))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith(UNARY_MESSAGE_COUNT) and "more than one" in details
        assert b"two" not in served.toy.reached
        assert call(channel, "Inline", b"after") == b"inline:after"

    def test_one_message_through_a_stream_call_is_answered(self, channel: grpc.Channel) -> None:
        """Exactly one message is a valid unary call, however the client framed it."""
        assert channel.stream_unary(f"/{SERVICE}/Inline")(iter((b"one",)), timeout=5) == \
            b"inline:one"


class TestMessageSize:
    def test_a_request_over_the_limit_is_refused_before_the_handler(
            self, served: Served, channel: grpc.Channel) -> None:
        """A 5 MiB request is RESOURCE_EXHAUSTED from grpc; the handler never sees it."""
        assert LIMITS.message_bytes < 5 << 20
        code, _ = code_of(lambda: call(channel, "Inline", b"x" * (5 << 20), timeout=30))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert served.toy.reached == []
        assert call(channel, "Inline", b"still") == b"inline:still"

    def test_a_request_just_under_the_limit_is_served(self, channel: grpc.Channel) -> None:
        """The receive limit is LIMITS.message_bytes, not grpc's default or a larger one."""
        size = LIMITS.message_bytes - 64  # room for the protobuf/gRPC framing
        assert call(channel, "Inline", b"x" * size, timeout=30) == b"inline:%d bytes" % size


class TestHooks:
    def test_after_hook_sees_method_status_and_duration(self, hooked: Served) -> None:
        """The post-call hook gets method, metadata, peer, final code and a duration."""
        with grpc.insecure_channel(hooked.address) as ch:
            assert call(ch, "Inline", b"ok", metadata=(("x-tag", "h"),)) == b"inline:ok"
            code_of(lambda: call(ch, "Inline", b"abort"))
            assert call(ch, "Inline", b"defer") == b"async:defer:"
            code_of(lambda: call(ch, "Unary", b"abort"))
            assert list(ch.unary_stream(f"/{SERVICE}/Count")(b"2", timeout=5)) == [b"0", b"1"]
        inline = hooked.hooks.wait_ended(f"/{SERVICE}/Inline", 3)
        assert [o.code for o in inline] == [grpc.StatusCode.OK,
                                            grpc.StatusCode.FAILED_PRECONDITION,
                                            grpc.StatusCode.OK]
        assert inline[1].details == "rule 'x' says no"
        assert all(0 <= o.duration < 30 for o in inline)
        unary = hooked.hooks.wait_ended(f"/{SERVICE}/Unary")
        assert [(o.code, o.details) for o in unary] == [(grpc.StatusCode.NOT_FOUND,
                                                         "no such thing")]
        assert [o.code for o in hooked.hooks.wait_ended(f"/{SERVICE}/Count")] == [
            grpc.StatusCode.OK]
        first = next(i for i, _ in hooked.hooks.ended if i.method == f"/{SERVICE}/Inline")
        assert ("x-tag", "h") in first.metadata
        assert "127.0.0.1" in first.peer

    def test_hooks_see_laters_like_any_call(self, hooked: Served) -> None:
        """A Later reads the notes of the pre-call hook, and the post-call hook gets its
        final status."""
        with grpc.insecure_channel(hooked.address) as ch:
            assert call(ch, "Inline", b"later", metadata=(("x-caller", "k1"),)) == \
                b"later:later:k1:some"
            code_of(lambda: call(ch, "Inline", b"later-abort"))
        ended = hooked.hooks.wait_ended(f"/{SERVICE}/Inline", 2)
        assert [(o.code, o.details) for o in ended] == [(grpc.StatusCode.OK, ""),
                                                        (grpc.StatusCode.ABORTED, "raced")]

    def test_hooks_see_started_laters_like_any_call(self, hooked: Served) -> None:
        """A started Later reads the pre-call hook's notes, and the post-call hook gets its
        final status once ``answered`` was called (OK, an Abort's status, INTERNAL)."""
        with grpc.insecure_channel(hooked.address) as ch:
            assert call(ch, "Inline", b"start-later", metadata=(("x-caller", "k2"),)) == \
                b"start:start-later:k2:some"
            code_of(lambda: call(ch, "Inline", b"start-abort-later"))
            code_of(lambda: call(ch, "Inline", b"start-boom"))
        ended = hooked.hooks.wait_ended(f"/{SERVICE}/Inline", 3)
        assert [(o.code, o.details) for o in ended] == [
            (grpc.StatusCode.OK, ""), (grpc.StatusCode.ABORTED, "raced"),
            (grpc.StatusCode.INTERNAL, "unexpected RuntimeError")]

    def test_before_hook_refuses_unauthenticated_before_any_handler(
            self, hooked: Served) -> None:
        """A pre-call hook's Abort is the answer, for inline and async methods alike."""
        hooked.hooks.refuse = {f"/{SERVICE}/Inline", f"/{SERVICE}/Unary"}
        with grpc.insecure_channel(hooked.address) as ch:
            for method in ("Inline", "Unary"):
                assert code_of(lambda m=method: call(ch, m, b"defer")) == (  # type: ignore[misc]
                    grpc.StatusCode.UNAUTHENTICATED, "no key")
            assert list(ch.unary_stream(f"/{SERVICE}/Count")(b"1", timeout=5)) == [b"0"]
        assert hooked.toy.reached == []
        assert [o.code for o in hooked.hooks.wait_ended(f"/{SERVICE}/Inline")] == [
            grpc.StatusCode.UNAUTHENTICATED]

    def test_before_hook_sees_metadata_of_inline_calls(self, hooked: Served) -> None:
        """Inline methods give the pre-call hook the caller's metadata (what auth needs)."""
        with grpc.insecure_channel(hooked.address) as ch:
            call(ch, "Inline", b"m", metadata=(("authorization", "Bearer k1"),))
        assert ("authorization", "Bearer k1") in hooked.hooks.seen[-1].metadata
        assert hooked.hooks.seen[-1].method == f"/{SERVICE}/Inline"

    def test_notes_of_the_before_hook_reach_the_handlers(self, hooked: Served) -> None:
        """What the pre-call hook notes (e.g. the authenticated caller) reaches inline and
        async handlers of that same call, and the post-call hook."""
        with grpc.insecure_channel(hooked.address) as ch:
            got_inline = call(ch, "Inline", b"notes", metadata=(("x-caller", "svc-a"),))
            got_async = call(ch, "Unary", b"notes", metadata=(("x-caller", "svc-b"),))
        assert got_inline == b"inline:svc-a"
        assert got_async == b"async:svc-b"
        ended = hooked.hooks.wait_ended(f"/{SERVICE}/Unary")
        assert ended and any(i.notes.get("caller") == "svc-b" for i, _ in hooked.hooks.ended)

    def test_a_failing_before_hook_refuses_the_call(self, hooked: Served) -> None:
        """A pre-call hook raising a bug fails closed: INTERNAL, counted, handler not run."""
        hooked.hooks.refuse = {f"/{SERVICE}/Inline"}
        with grpc.insecure_channel(hooked.address) as ch:
            code, _ = code_of(lambda: call(ch, "Inline", b"x",
                                           metadata=(("authorization", "explode"),)))
        assert code == grpc.StatusCode.INTERNAL
        assert hooked.toy.reached == []
        assert hooked.server.stats.handler_failures == 1

    def test_a_failing_after_hook_is_counted_and_the_answer_stands(
            self, hooked: Served) -> None:
        """A post-call hook raising changes nothing for the client; it is counted."""
        with grpc.insecure_channel(hooked.address) as ch:
            assert call(ch, "Inline", b"a", metadata=(("x-tag", "after-explodes"),)) == \
                b"inline:a"
            call(ch, "Unary", b"sync")  # ends after the first call's hook has run (core)
        hooked.hooks.wait_ended(f"/{SERVICE}/Unary")
        assert hooked.server.stats.hook_failures == 1

    def test_a_method_nobody_serves_reaches_the_hooks(self, hooked: Served) -> None:
        """A call to an unknown method goes through the hooks like any other (metrics count
        it), and is UNIMPLEMENTED."""
        with grpc.insecure_channel(hooked.address) as ch:
            code, _ = code_of(lambda: ch.unary_unary("/toy.Toy/Nope")(b"", timeout=5))
        assert code == grpc.StatusCode.UNIMPLEMENTED
        assert [o.code for o in hooked.hooks.wait_ended("/toy.Toy/Nope")] == [
            grpc.StatusCode.UNIMPLEMENTED]

    def test_hooks_are_added_before_start(self, hooked: Served) -> None:
        """Adding a hook to a running transport is refused rather than half-applied."""
        with pytest.raises(RuntimeError, match="before the transport starts"):
            hooked.server.add_hooks(after=lambda info, outcome: None)


def test_stop_cancels_open_streams_after_the_grace(served: Served) -> None:
    """Stop lets a running stream go on for the grace period, then cancels it."""
    with grpc.insecure_channel(served.address) as ch:
        stream = ch.unary_stream(f"/{SERVICE}/Forever")(b"", timeout=30)
        assert next(stream) == b"first"
        served.run(served.server.stop(0.5))
        assert served.toy.stream_closed.wait(5)
        with pytest.raises(grpc.RpcError):
            next(stream)


def test_aio_is_created_inside_its_loop() -> None:
    """The aio transport refuses to be built outside a running loop (grpc.aio binds to it)."""
    with pytest.raises(RuntimeError, match="inside the event loop"):
        AioServer()


class TestChoose:
    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(coro)

    async def opened(self, choice: str, **kw: Any) -> Transport:
        transport = await open_transport(choice, **kw)
        await transport.stop(0)
        return transport

    @pytest.mark.parametrize(("choice", "cls"), [("core", CoreServer), ("aio", AioServer)])
    def test_forcing_a_transport_uses_it_and_says_so(
            self, choice: str, cls: type, caplog: pytest.LogCaptureFixture) -> None:
        """--transport core|aio serves from that transport, logged as asked for."""
        caplog.set_level(logging.INFO, "gatehouse.transport")
        transport = self.run(self.opened(choice, grpc_version="0.1.0"))
        assert isinstance(transport, cls) and transport.name == choice
        record = caplog.records[-1]
        assert getattr(record, "transport", None) == choice
        assert "asked for" in record.getMessage()

    def test_auto_uses_core_on_a_tested_grpcio_whose_self_test_passes(
            self, caplog: pytest.LogCaptureFixture) -> None:
        """auto picks core when grpcio is in the tested range and the self-test passes."""
        caplog.set_level(logging.INFO, "gatehouse.transport")
        assert core_supports(grpc.__version__) is None, "run with a grpcio in the tested range"
        transport = self.run(self.opened("auto"))
        assert isinstance(transport, CoreServer)
        assert "self-test passed" in caplog.records[-1].getMessage()

    @pytest.mark.parametrize("version", ["1.60.0", f"{CORE_TESTED[1][0]}.{CORE_TESTED[1][1] + 1}.0",
                                         "2.0.0", "dev"])
    def test_auto_falls_back_to_aio_outside_the_tested_range(
            self, version: str, caplog: pytest.LogCaptureFixture) -> None:
        """auto serves from aio on a grpcio core was not tested with, and logs why."""
        caplog.set_level(logging.INFO, "gatehouse.transport")
        transport = self.run(self.opened("auto", grpc_version=version))
        assert isinstance(transport, AioServer)
        record = caplog.records[-1]
        assert getattr(record, "transport", None) == "aio"
        assert getattr(record, "grpcio", None) == version
        assert "aio transport" in record.getMessage()
        assert ("outside the range" in record.getMessage()
                or "not one the core transport knows" in record.getMessage())

    def test_auto_falls_back_to_aio_when_the_self_test_fails(
            self, caplog: pytest.LogCaptureFixture) -> None:
        """A core transport that never answers fails its self-test; auto serves from aio."""
        caplog.set_level(logging.INFO, "gatehouse.transport")
        # A real core server that asks grpc core for no calls: nothing is ever answered.
        deaf = lambda options: CoreServer(options, pending_requests=0)  # noqa: E731
        transport = self.run(self.opened("auto", core_factory=deaf, self_test_seconds=1))
        assert isinstance(transport, AioServer)
        assert "self-test failed" in caplog.records[-1].getMessage()

    @pytest.mark.parametrize("kind", TRANSPORTS)
    def test_self_test_passes_on_both_transports(self, kind: str) -> None:
        """The start-up self-test (inline, deferred, streaming call) passes on a sound transport."""
        factory = CoreServer if kind == "core" else AioServer
        assert self.run(self_test(factory, 5)) is None

    def test_an_unknown_choice_is_refused(self) -> None:
        """A transport name other than auto, core or aio is an error, not a silent default."""
        with pytest.raises(ValueError, match="auto, core, aio"):
            self.run(open_transport("fast"))


class TestPackage:
    def test_only_the_core_module_touches_grpcs_private_layer(self) -> None:
        """grpc._cython is imported by transport/core.py and by no other gatehouse module."""
        src = Path(__file__).resolve().parent.parent / "src" / "gatehouse"
        users = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                       if "v1" not in p.parts and "grpc._cython" in p.read_text())
        assert users == ["transport/core.py"]

    def test_importing_the_package_leaves_core_unloaded(self) -> None:
        """The api's imports (Abort, Defer, ServicerContext) never load the private layer."""
        code = ("import sys; from gatehouse.transport import Abort, Defer, ServicerContext; "
                "import gatehouse.transport as t; assert all(hasattr(t, n) for n in t.__all__); "
                "print('gatehouse.transport.core' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, check=True)
        assert out.stdout.strip() == "False"
