"""What every gRPC transport offers the rest of gatehouse, and what it hands back.

A transport serves the generated ``add_*Servicer_to_server`` registrations,
may answer some unary methods *inline* (request bytes in, response bytes out,
no servicer context), and runs per-call hooks. ``core`` drives grpc core's
completion queue itself; ``aio`` is the public ``grpc.aio`` server. The api
layer only sees the names defined here, so either serves it unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import grpc

from gatehouse.limits import LIMITS

if TYPE_CHECKING:
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
else:
    MethodHandler = grpc.RpcMethodHandler

Metadata = tuple[tuple[str, Any], ...]
"""Invocation or trailing metadata: (key, value) pairs, values str (or bytes for -bin keys)."""

InlineHandler = Callable[[bytes, "CallInfo | None"], "bytes | Later"]
"""Request bytes (and the call, when hooks are registered) in, response bytes out,
without waiting (or a ``Later`` whose work needs the loop); may raise Abort or Defer."""

UNARY_MESSAGE_COUNT = "request: a unary method takes exactly one request message"
"""The INVALID_ARGUMENT details for a unary call that sent none, or more than one."""


class Abort(Exception):
    """End the call with this status (raised by inline handlers, hooks and ``context.abort``)."""

    def __init__(self, code: grpc.StatusCode, details: str = "",
                 trailing_metadata: Sequence[tuple[str, Any]] = ()) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing_metadata)


class Defer(Exception):
    """An inline handler cannot answer without waiting: run the async handler instead."""


TimeRemaining = Callable[[], "float | None"]
"""Seconds left before the call's deadline (None: it has none)."""


Answered = Callable[["bytes | BaseException"], None]
"""How a ``Later`` started with ``start`` hands over its result: the response bytes,
or the exception that ends the call (``Abort``: its status; anything else: INTERNAL)."""


@dataclass(frozen=True, slots=True)
class Later:
    """An inline handler's answer that needs the event loop (one store round trip, say).

    Either ``answer(time_remaining)``, a coroutine the transport runs on the
    loop as one task, returning the response bytes; or ``start(time_remaining,
    answered)``, called on the loop, which arranges for ``answered(bytes or
    exception)`` to be called once, on the loop, later or at once — no task
    at all, the cheapest way to wait for a store's group commit. An ``Abort``
    becomes the status, as from an inline handler; any other exception is
    INTERNAL.

    This is the short path of a write: no servicer context and, on the core
    transport, no separate batch watching for the client to go away (which
    costs an async call about a third of its server time). So a client that
    leaves meanwhile does not cancel the work: use it for short, bounded work
    whose outcome does not depend on the client staying.
    """

    answer: Callable[[TimeRemaining], Awaitable[bytes]] | None = None
    start: Callable[[TimeRemaining, Answered], None] | None = None

    def __post_init__(self) -> None:
        if (self.answer is None) == (self.start is None):
            raise TypeError("a Later takes exactly one of answer and start")


@dataclass(frozen=True, slots=True)
class CallInfo:
    """Who called what: what a hook sees of a call before its handler runs."""

    method: str
    """The full method path, ``/package.Service/Method``."""
    metadata: Metadata
    peer: str
    client_subject: str | None = None
    """The subject of the client's verified TLS certificate (mTLS), else None.

    As grpc reports it: RFC 4514 order, most specific attribute first, e.g.
    ``CN=billing-service,O=acme,C=DE`` (see ``client_subject`` below)."""
    notes: dict[str, Any] = field(default_factory=dict, compare=False)
    """What hooks and handlers tell each other about this call (e.g. the caller a
    pre-call hook authenticated, the decision a handler made for the audit hook).
    One call's notes are only touched by that call's hooks and handler, one at a time."""


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How a call ended: its final status and how long it took on the server."""

    code: grpc.StatusCode
    details: str
    duration: float
    """Seconds from the call's arrival to its final status (monotonic clock)."""


ACTIVATE = "activate"
"""The notes key of a callable the servicer's task calls before the handler runs.

Hooks on the core transport run on the poll thread, not in the task that
runs the servicer, so they cannot make anything current there themselves; a
hook leaves ``notes[ACTIVATE]`` and ``gatehouse.api.errors.translate_errors``
calls it inside the task (tracing makes the call's span current with it, so
the store calls the handler makes become its children). Each call runs in a
task of its own, so what it activates lasts exactly as long as the call.
"""

BeforeCall = Callable[[CallInfo], None]
"""Runs before the handler, inline methods included; raising ``Abort`` refuses the call.

On the core transport it runs on the poll thread, concurrently with the
event loop: it must be quick and thread-safe, and it must not block.
Any other exception refuses the call with INTERNAL (fail closed).
"""

AfterCall = Callable[[CallInfo, CallOutcome], None]
"""Runs once the call's final status is known. Exceptions are logged and counted, never sent."""


@dataclass(frozen=True, slots=True)
class TransportStats:
    """Counters a transport keeps about failures that never reached the servicers' code."""

    handler_failures: int = 0
    """Calls answered INTERNAL/UNKNOWN because a handler, hook or the transport itself raised."""
    hook_failures: int = 0
    """``AfterCall`` hooks that raised (the call itself was answered)."""


class Counters:
    """Thread-safe counters behind ``TransportStats`` (failures are rare: a lock is cheap)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handler_failures = 0
        self._hook_failures = 0

    def handler_failed(self) -> None:
        with self._lock:
            self._handler_failures += 1

    def hook_failed(self) -> None:
        with self._lock:
            self._hook_failures += 1

    def snapshot(self) -> TransportStats:
        with self._lock:
            return TransportStats(self._handler_failures, self._hook_failures)


class ServicerContext(Protocol):
    """What the servicers (ours, health, reflection) use of a call's context."""

    def time_remaining(self) -> float | None:
        """Seconds until the call's deadline, or None when the client set none."""

    def invocation_metadata(self) -> Metadata: ...

    def peer(self) -> str: ...

    def call_info(self) -> CallInfo | None:
        """The call as the hooks saw it (with their notes), or None when no hooks run."""

    def cancelled(self) -> bool: ...

    def done(self) -> bool: ...

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, Any]]) -> None: ...

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Sequence[tuple[str, Any]] = ()) -> NoReturn:
        """End the call with this status; raises ``Abort`` (never returns)."""

    async def write(self, message: Any) -> None:
        """Send one message of a streaming response."""


class Transport(Protocol):
    """A gRPC server gatehouse can serve from; an extension point (see ``core``, ``aio``).

    Construct it inside the event loop that will run it. The generated
    ``add_*Servicer_to_server`` functions register on it as on a grpc server.
    """

    name: str
    """``core`` or ``aio``: which transport this is (logged at start)."""

    @property
    def stats(self) -> TransportStats: ...

    def add_registered_method_handlers(self, service: str,
                                       handlers: Mapping[str, MethodHandler]) -> None: ...

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None: ...

    def add_inline(self, method: str, handler: InlineHandler) -> None:
        """Answer the registered unary ``method`` with ``handler`` (the servicer on ``Defer``)."""

    def add_hooks(self, before: BeforeCall | None = None, after: AfterCall | None = None) -> None:
        """Run ``before``/``after`` on every call (in the order added); add them before start."""

    def add_insecure_port(self, address: str) -> int:
        """Listen on ``address``; the port bound (0 when it could not be)."""

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        """Listen on ``address`` with TLS (see ``gatehouse.transport.tls``); the port bound, or 0.

        Once a secure port is added, each call's ``CallInfo.client_subject``
        carries the verified client certificate's subject (mTLS), see
        ``client_subject``.
        """

    async def start(self) -> None: ...

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, let running ones finish for ``grace`` seconds, then cancel them."""


def server_options(options: Iterable[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """The channel options a transport starts grpc with: the receive limit unless overridden.

    A request larger than ``LIMITS.message_bytes`` is refused RESOURCE_EXHAUSTED
    by grpc itself, before any handler (or hook) sees it.
    """
    opts = tuple(options)
    if not any(key == "grpc.max_receive_message_length" for key, _ in opts):
        opts += (("grpc.max_receive_message_length", LIMITS.message_bytes),)
    return opts


def run_before(hooks: Sequence[BeforeCall], info: CallInfo) -> None:
    """Run the pre-call hooks; ``Abort`` refuses, anything else refuses INTERNAL (fail closed)."""
    for hook in hooks:
        try:
            hook(info)
        except Abort:
            raise
        except Exception as exc:
            raise HookFailed(type(exc).__name__) from exc


def client_subject(auth_context: Mapping[str, Iterable[bytes]] | None) -> str | None:
    """The verified client certificate's subject from a call's auth context, else None.

    grpc puts ``x509_subject`` in the auth context of a TLS connection whose
    client presented a certificate; the server credentials gatehouse builds
    either require and verify one (mTLS) or never ask for one, so a subject
    here was vouched for by the client CA. The string is grpc's (OpenSSL's
    RFC 2253/4514 form: ``CN=billing-service,O=acme,C=DE``, most specific
    first, special characters escaped with a backslash). Anything unexpected
    (not TLS, no subject or several, not UTF-8) is None: no certificate
    identity rather than a wrong one.
    """
    if not auth_context:
        return None
    if list(auth_context.get("transport_security_type") or ()) != [b"ssl"]:
        return None
    values = list(auth_context.get("x509_subject") or ())
    if len(values) != 1 or not isinstance(values[0], bytes) or not values[0]:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        return None


class HookFailed(Exception):
    """A pre-call hook raised something other than Abort; the call is refused INTERNAL."""


__all__ = [
    "ACTIVATE",
    "UNARY_MESSAGE_COUNT",
    "Abort",
    "AfterCall",
    "Answered",
    "BeforeCall",
    "CallInfo",
    "CallOutcome",
    "Counters",
    "Defer",
    "HookFailed",
    "InlineHandler",
    "Later",
    "Metadata",
    "MethodHandler",
    "ServicerContext",
    "Transport",
    "TransportStats",
    "client_subject",
    "run_before",
    "server_options",
]
