"""Which transport serves: ``core`` where it is known to work, ``aio`` everywhere else.

The core transport drives grpc core through grpcio's private Cython layer,
which grpcio may change in any release. ``auto`` therefore uses it only when
the installed grpcio is inside the range its tests ran on (``CORE_TESTED``,
the same range pyproject.toml allows) *and* a start-up self-test passes: one
inline, one deferred and one streaming call over loopback, bounded in time.
Otherwise it serves from the public ``grpc.aio`` server, and the log says
which transport serves and why.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import grpc

from gatehouse.errors import quote
from gatehouse.transport.base import Defer, ServicerContext, Transport

log = logging.getLogger("gatehouse.transport")

Choice = Literal["auto", "core", "aio"]
CHOICES: tuple[Choice, ...] = ("auto", "core", "aio")

CORE_TESTED: tuple[tuple[int, int], tuple[int, int]] = ((1, 66), (1, 85))
"""The grpcio minor versions (first, last) the core transport's tests pass on.

Keep in step with the grpcio bounds in pyproject.toml; ``make test-grpc-range``
runs the transport and end-to-end tests at both ends.
"""

SELF_TEST_SECONDS = 5.0
_SERVICE = "gatehouse.selftest.SelfTest"

TransportFactory = Callable[[Iterable[tuple[str, Any]]], Transport]


def grpc_version_tuple(version: str) -> tuple[int, int] | None:
    """(major, minor) of a grpcio version string, or None when it is not one."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def core_supports(version: str) -> str | None:
    """Why the core transport must not run on this grpcio version, or None when it may."""
    parsed = grpc_version_tuple(version)
    (lo_major, lo_minor), (hi_major, hi_minor) = CORE_TESTED
    tested = f"{lo_major}.{lo_minor} to {hi_major}.{hi_minor}.x"
    if parsed is None:
        return f"grpcio version {quote(version)} is not one the core transport knows"
    if not CORE_TESTED[0] <= parsed <= CORE_TESTED[1]:
        return f"grpcio {version} is outside the range the core transport was tested with " \
               f"({tested})"
    return None


def _core_factory() -> TransportFactory:
    from gatehouse.transport.core import CoreServer

    return CoreServer


def _aio_factory() -> TransportFactory:
    from gatehouse.transport.aio import AioServer

    return AioServer


async def open_transport(choice: str = "auto", options: Iterable[tuple[str, Any]] = (), *,
                         grpc_version: str | None = None,
                         core_factory: TransportFactory | None = None,
                         self_test_seconds: float = SELF_TEST_SECONDS) -> Transport:
    """The transport to serve from, created in the running loop; logs which and why.

    ``grpc_version`` and ``core_factory`` default to the installed grpcio and
    the real core transport; tests pass others to see ``auto`` fall back.
    """
    opts = tuple(options)
    version = grpc.__version__ if grpc_version is None else grpc_version
    if choice not in CHOICES:
        raise ValueError(f"transport must be one of {', '.join(CHOICES)}, not {quote(choice)}")
    if choice == "core":
        kind, reason = "core", "asked for (--transport core)"
    elif choice == "aio":
        kind, reason = "aio", "asked for (--transport aio)"
    else:
        kind, reason = await _auto(version, core_factory, self_test_seconds)
    factory = (core_factory or _core_factory()) if kind == "core" else _aio_factory()
    transport = factory(opts)
    log.info(f"serving gRPC with the {kind} transport: {reason}",
             extra={"transport": kind, "reason": reason, "grpcio": version})
    return transport


async def _auto(version: str, core_factory: TransportFactory | None,
                self_test_seconds: float) -> tuple[str, str]:
    unsupported = core_supports(version)
    if unsupported is not None:
        return "aio", unsupported
    try:
        factory = core_factory or _core_factory()
    except (ImportError, AttributeError) as exc:  # grpcio's private layer changed shape
        return "aio", f"the core transport cannot load on grpcio {version}: " \
                      f"{type(exc).__name__}: {quote(str(exc))}"
    problem = await self_test(factory, self_test_seconds)
    if problem is not None:
        return "aio", f"the core transport's self-test failed on grpcio {version}: {problem}"
    return "core", f"grpcio {version} is in the tested range and the self-test passed"


# -- the self-test ---------------------------------------------------------------


def _inline(raw: bytes, info: object) -> bytes:
    if raw == b"defer":
        raise Defer
    return b"inline:" + raw


async def _deferred(request: bytes, context: ServicerContext) -> bytes:
    return b"deferred:" + request


async def _stream(request: bytes, context: ServicerContext) -> Any:
    for part in request.split(b","):
        yield part


def _calls(address: str, seconds: float) -> None:
    """The client half, on a thread: one inline, one deferred and one streaming call."""
    with grpc.insecure_channel(address) as channel:
        unary: Any = channel.unary_unary(f"/{_SERVICE}/Inline")
        _expect("inline call", unary(b"ping", timeout=seconds), b"inline:ping")
        _expect("deferred call", unary(b"defer", timeout=seconds), b"deferred:defer")
        stream: Any = channel.unary_stream(f"/{_SERVICE}/Stream")
        _expect("streaming call", list(stream(b"a,b", timeout=seconds)), [b"a", b"b"])


def _expect(what: str, got: object, want: object) -> None:
    if got != want:
        raise RuntimeError(f"{what} answered {quote(repr(got))}, not {want!r}")


async def self_test(factory: TransportFactory, seconds: float = SELF_TEST_SECONDS,
                    options: Sequence[tuple[str, Any]] = ()) -> str | None:
    """Serve a toy service on an ephemeral loopback port and call it; None when it works.

    Bounded by ``seconds`` in all; what went wrong otherwise, as a short reason.
    """
    try:
        server = factory(options)
        server.add_registered_method_handlers(_SERVICE, {
            "Inline": grpc.unary_unary_rpc_method_handler(_deferred),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        })
        server.add_inline(f"/{_SERVICE}/Inline", _inline)
        port = server.add_insecure_port("127.0.0.1:0")
        if port == 0:
            return "could not listen on 127.0.0.1"
    except Exception as exc:
        return f"{type(exc).__name__}: {quote(str(exc))}"
    try:
        await server.start()
        await asyncio.wait_for(asyncio.to_thread(_calls, f"127.0.0.1:{port}", seconds), seconds)
    except TimeoutError:
        return f"no answer within {seconds:g} s"
    except grpc.RpcError as exc:
        code, details = getattr(exc, "code", None), getattr(exc, "details", None)
        if callable(code) and callable(details):
            return f"{code()}: {quote(details() or '')}"
        return f"RpcError: {quote(str(exc))}"
    except Exception as exc:
        return f"{type(exc).__name__}: {quote(str(exc))}"
    finally:
        await server.stop(0)
    return None


__all__ = ["CHOICES", "CORE_TESTED", "Choice", "core_supports", "open_transport", "self_test"]
