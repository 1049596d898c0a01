"""The exceptions a call can raise: one per gRPC status a caller may handle.

Every error the server answers becomes one of these, carrying the status
code, the server's message (it names the field, rule or limit) and the
method that failed::

    GatehouseError                     any failed call
    ├── InvalidArgument                INVALID_ARGUMENT, OUT_OF_RANGE: bad input (field first)
    ├── NotFound                       NOT_FOUND
    ├── AlreadyExists                  ALREADY_EXISTS: e.g. a slug or id taken
    ├── PermissionDenied               PERMISSION_DENIED: the key's scope or tenant, or
    │                                  a tenancy actor the policy refuses
    ├── Unauthenticated                UNAUTHENTICATED: missing or unknown API key
    ├── FailedPrecondition             FAILED_PRECONDITION: a rule, limit or constraint
    ├── Aborted                        ABORTED: a write raced; nothing was written
    ├── ResourceExhausted              RESOURCE_EXHAUSTED: rate or size limit
    │                                  (``retry_after`` when the server says)
    ├── Unavailable                    UNAVAILABLE: server or its store unreachable
    ├── DeadlineExceeded               DEADLINE_EXCEEDED: the call's timeout passed
    ├── Cancelled                      CANCELLED
    ├── Unimplemented                  UNIMPLEMENTED: a server without this method
    └── Internal                       INTERNAL, UNKNOWN, DATA_LOSS
"""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class GatehouseError(Exception):
    """A call failed with a gRPC status; ``details`` is the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str = "") -> None:
        super().__init__(f"{code.name}: {details}" + (f" ({method})" if method else ""))
        self.code = code
        self.details = details
        self.method = method

    def __reduce__(self) -> tuple[object, ...]:
        # Rebuild from the fields, so errors cross process boundaries (pickle).
        return (type(self), (self.code, self.details, self.method))


class InvalidArgument(GatehouseError, ValueError):
    """The request is malformed; the message names the field first.

    Also raised before sending, for arguments the client can tell are wrong
    (a reference that is not ``type:id``, a revision that is not a number).
    """


class NotFound(GatehouseError):
    """The object the request names does not exist."""


class AlreadyExists(GatehouseError):
    """The id or slug to create is taken."""


class PermissionDenied(GatehouseError):
    """The caller's key, or the tenancy actor, may not do this."""


class Unauthenticated(GatehouseError):
    """No API key, or one the server does not know."""


class FailedPrecondition(GatehouseError):
    """A policy rule, plan limit, constraint or precondition says no."""


class Aborted(GatehouseError):
    """The write raced with another; nothing was written and it may be retried."""


class ResourceExhausted(GatehouseError):
    """A rate or size limit; ``retry_after`` (seconds) when the server names one."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(code, details, method)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.code, self.details, self.method, self.retry_after))


class Unavailable(GatehouseError):
    """The server, or the store behind it, could not be reached."""


class DeadlineExceeded(GatehouseError):
    """The call's timeout passed before an answer (retries included)."""


class Cancelled(GatehouseError):
    """The call was cancelled."""


class Unimplemented(GatehouseError):
    """The server does not serve this method (an older server?)."""


class Internal(GatehouseError):
    """The server failed unexpectedly; its log says why."""


_BY_CODE: dict[grpc.StatusCode, type[GatehouseError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNKNOWN: Internal,
    grpc.StatusCode.DATA_LOSS: Internal,
}

_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def code_of(number: int) -> grpc.StatusCode:
    """The StatusCode for a numeric code (UNKNOWN for numbers gRPC does not define)."""
    return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def invalid(details: str) -> InvalidArgument:
    """A request the client refuses to send."""
    return InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, details)


def error_for(code: grpc.StatusCode, details: str, method: str = "",
              retry_after: float | None = None) -> GatehouseError:
    """The exception for a status (OK is no error: it maps to Internal, never success)."""
    cls = _BY_CODE.get(code, GatehouseError)
    if cls is ResourceExhausted:
        return ResourceExhausted(code, details, method, retry_after)
    return cls(code, details, method)


def _retry_after(trailers: object) -> float | None:
    """The server's RetryInfo (in the status details) or ``retry-after`` trailer, in seconds."""
    try:  # a tuple of pairs (sync calls) or grpc.aio.Metadata (asyncio calls)
        pairs = [(str(k), v) for k, v in trailers]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    for key, value in pairs:
        if key == "retry-after" and isinstance(value, str):
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                return None
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


def from_rpc_error(exc: grpc.RpcError, method: str) -> GatehouseError:
    """Map a grpc.RpcError (sync or aio) to this hierarchy."""
    code_fn = getattr(exc, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_fn = getattr(exc, "details", None)
    details = details_fn() if callable(details_fn) else str(exc)
    trailers_fn = getattr(exc, "trailing_metadata", None)
    trailers = trailers_fn() if callable(trailers_fn) else None
    retry_after = _retry_after(trailers) if code is grpc.StatusCode.RESOURCE_EXHAUSTED else None
    return error_for(code, str(details or ""), method, retry_after)


__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GatehouseError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "code_of",
    "error_for",
    "from_rpc_error",
    "invalid",
]
