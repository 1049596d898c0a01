"""The one place where domain errors become gRPC status codes."""

from __future__ import annotations

import grpc
from google.rpc import code_pb2, status_pb2

from gatehouse.errors import (
    Aborted,
    FailedPrecondition,
    GatehouseError,
    InvalidArgument,
    NotFound,
    PolicyError,
    Unavailable,
)
from gatehouse.transport import Abort, ServicerContext

_CODES: tuple[tuple[type[GatehouseError], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Aborted, grpc.StatusCode.ABORTED),
    (PolicyError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_code(exc: BaseException) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def to_rpc_status(exc: GatehouseError) -> status_pb2.Status:
    """A google.rpc.Status for per-item errors (CheckBulk)."""
    code = status_code(exc)
    return status_pb2.Status(code=code.value[0], message=str(exc))


def inline_abort(exc: GatehouseError) -> Abort:
    """The same status, for handlers answering on the transport's poll thread."""
    return Abort(status_code(exc), str(exc))


def undecodable() -> Abort:
    return Abort(grpc.StatusCode.INVALID_ARGUMENT, "request: not a valid protobuf message")


async def abort(context: ServicerContext, exc: GatehouseError) -> None:
    await context.abort(status_code(exc), str(exc))


__all__ = ["abort", "code_pb2", "inline_abort", "status_code", "to_rpc_status", "undecodable"]
