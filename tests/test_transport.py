"""The core-driven gRPC server with toy handlers, over real loopback gRPC.

The handlers take and return raw bytes (no serializers), so these tests are
about the transport alone: inline answers, deferral, every streaming shape,
errors, deadlines, cancellation and shutdown.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from gatehouse.transport import Abort, CoreServer, Defer, ServicerContext
from tests.conftest import free_port

SERVICE = "toy.Toy"


class Toy:
    def __init__(self) -> None:
        self.stream_closed = threading.Event()
        self.deadlines: list[float | None] = []

    def inline(self, raw: bytes) -> bytes:
        if raw == b"abort":
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION, "rule 'x' says no")
        if raw == b"defer":
            raise Defer
        if raw == b"boom":
            raise RuntimeError("bug")
        return b"inline:" + raw

    async def unary(self, request: bytes, context: ServicerContext) -> bytes:
        self.deadlines.append(context.time_remaining())
        if request == b"abort":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        if request == b"abort-md":
            await context.abort(grpc.StatusCode.ABORTED, "raced",
                                (("x-retry-after", "1"),))
        if request == b"boom":
            raise RuntimeError("bug")
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


@pytest.fixture()
def served() -> Iterator[tuple[str, Toy, CoreServer, asyncio.AbstractEventLoop]]:
    toy = Toy()
    server = CoreServer()
    server.add_registered_method_handlers(SERVICE, {
        "Inline": grpc.unary_unary_rpc_method_handler(toy.unary),
        "Unary": grpc.unary_unary_rpc_method_handler(toy.unary),
        "Count": grpc.unary_stream_rpc_method_handler(toy.count),
        "Forever": grpc.unary_stream_rpc_method_handler(toy.forever),
        "Writes": grpc.unary_stream_rpc_method_handler(toy.writes),
        "Echo": grpc.stream_stream_rpc_method_handler(toy.echo),
        "Join": grpc.stream_unary_rpc_method_handler(toy.join),
    })
    server.add_inline(f"/{SERVICE}/Inline", toy.inline)
    address = f"127.0.0.1:{server.add_insecure_port(f'127.0.0.1:{free_port()}')}"
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield address, toy, server, loop
    asyncio.run_coroutine_threadsafe(server.stop(0.5), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture()
def channel(served: tuple[str, Any, Any, Any]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served[0]) as ch:
        yield ch


def call(channel: grpc.Channel, method: str, data: bytes, **kw: Any) -> Any:
    return channel.unary_unary(f"/{SERVICE}/{method}")(data, timeout=kw.pop("timeout", 5), **kw)


def code_of(fn: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details() or ""


class TestInline:
    def test_answers_on_the_poll_thread(self, channel: grpc.Channel) -> None:
        assert call(channel, "Inline", b"hi") == b"inline:hi"

    def test_abort_is_the_status_asked_for(self, channel: grpc.Channel) -> None:
        assert code_of(lambda: call(channel, "Inline", b"abort")) == (
            grpc.StatusCode.FAILED_PRECONDITION, "rule 'x' says no")

    def test_defer_runs_the_async_handler_with_the_same_request(
            self, channel: grpc.Channel) -> None:
        out = call(channel, "Inline", b"defer", metadata=(("x-tag", "t1"),))
        assert out == b"async:defer:t1"

    def test_a_failing_handler_is_unknown_and_the_server_goes_on(
            self, channel: grpc.Channel) -> None:
        code, details = code_of(lambda: call(channel, "Inline", b"boom"))
        assert code == grpc.StatusCode.UNKNOWN and "RuntimeError" in details
        assert call(channel, "Inline", b"again") == b"inline:again"

    def test_many_concurrent_calls(self, channel: grpc.Channel) -> None:
        futures = [channel.unary_unary(f"/{SERVICE}/Inline").future(str(i).encode(), timeout=10)
                   for i in range(500)]
        assert [f.result() for f in futures] == [b"inline:%d" % i for i in range(500)]


class TestAsync:
    def test_unary_with_metadata_and_deadline(self, served: Any, channel: grpc.Channel) -> None:
        assert call(channel, "Unary", b"x", metadata=(("x-tag", "m"),), timeout=3) == b"async:x:m"
        toy: Toy = served[1]
        remaining = toy.deadlines[-1]
        assert remaining is not None and 1.0 < remaining <= 3.5  # clocks may differ by ms

    def test_no_deadline_means_none(self, served: Any, channel: grpc.Channel) -> None:
        channel.unary_unary(f"/{SERVICE}/Unary")(b"y")
        assert served[1].deadlines[-1] is None

    def test_abort_and_failure(self, channel: grpc.Channel) -> None:
        assert code_of(lambda: call(channel, "Unary", b"abort")) == (
            grpc.StatusCode.NOT_FOUND, "no such thing")
        code, details = code_of(lambda: call(channel, "Unary", b"boom"))
        assert code == grpc.StatusCode.UNKNOWN and "RuntimeError" in details

    def test_abort_carries_trailing_metadata(self, channel: grpc.Channel) -> None:
        with pytest.raises(grpc.RpcError) as err:
            call(channel, "Unary", b"abort-md")
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert ("x-retry-after", "1") in tuple(err.value.trailing_metadata() or ())

    def test_deadline_ends_a_slow_call(self, channel: grpc.Channel) -> None:
        t0 = time.monotonic()
        code, _ = code_of(lambda: call(channel, "Unary", b"sleep", timeout=0.3))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 5
        assert call(channel, "Unary", b"z") == b"async:z:"

    def test_server_stream(self, channel: grpc.Channel) -> None:
        stream = channel.unary_stream(f"/{SERVICE}/Count")
        assert list(stream(b"5", timeout=5)) == [b"0", b"1", b"2", b"3", b"4"]
        assert list(stream(b"0", timeout=5)) == []

    def test_server_stream_abort_after_messages(self, channel: grpc.Channel) -> None:
        got: list[bytes] = []
        stream = channel.unary_stream(f"/{SERVICE}/Count")(b"3", timeout=5)
        code, details = code_of(lambda: got.extend(stream))
        assert got == [b"0", b"1", b"2"]
        assert (code, details) == (grpc.StatusCode.OUT_OF_RANGE, "stopped after 3")

    def test_stream_written_through_the_context(self, channel: grpc.Channel) -> None:
        stream = channel.unary_stream(f"/{SERVICE}/Writes")
        assert list(stream(b"a,b,c", timeout=5)) == [b"a", b"b", b"c"]

    def test_bidirectional_and_client_streams(self, channel: grpc.Channel) -> None:
        echo = channel.stream_stream(f"/{SERVICE}/Echo")
        assert list(echo(iter([b"a", b"bc"]), timeout=5)) == [b"A", b"BC"]
        join = channel.stream_unary(f"/{SERVICE}/Join")
        assert join(iter([b"1", b"2", b"3"]), timeout=5) == b"1+2+3"

    def test_client_cancel_ends_the_handler(self, served: Any, channel: grpc.Channel) -> None:
        stream = channel.unary_stream(f"/{SERVICE}/Forever")(b"", timeout=30)
        assert next(stream) == b"first"
        stream.cancel()
        assert served[1].stream_closed.wait(5)

    def test_unknown_method_is_unimplemented(self, channel: grpc.Channel) -> None:
        code, _ = code_of(lambda: channel.unary_unary("/toy.Toy/Nope")(b"", timeout=5))
        assert code == grpc.StatusCode.UNIMPLEMENTED


def test_stop_cancels_open_streams_after_the_grace(served: Any) -> None:
    address, toy, server, loop = served
    with grpc.insecure_channel(address) as ch:
        stream = ch.unary_stream(f"/{SERVICE}/Forever")(b"", timeout=30)
        assert next(stream) == b"first"
        t0 = time.monotonic()
        asyncio.run_coroutine_threadsafe(server.stop(0.5), loop).result(10)
        assert 0.4 < time.monotonic() - t0 < 5
        assert toy.stream_closed.wait(5)
        with pytest.raises(grpc.RpcError):
            next(stream)


def test_inline_must_name_a_registered_unary_method() -> None:
    server = CoreServer()
    with pytest.raises(ValueError, match="registered unary"):
        server.add_inline("/toy.Toy/Missing", lambda raw: raw)
