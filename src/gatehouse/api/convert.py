"""Protobuf <-> domain values for the shared messages.

Everything a caller controls is bounded here before the domain sees it:
Struct values (a request ``context``, object attributes) are converted by
hand rather than by ``MessageToDict`` so that size, depth and non-finite
numbers are refused with the field named.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf.struct_pb2 import ListValue, Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp

from gatehouse.errors import InvalidArgument, quote
from gatehouse.limits import LIMITS
from gatehouse.runtime import (
    FULLY_CONSISTENT,
    MINIMIZE_LATENCY,
    CheckInput,
    CheckOutput,
    Consistency,
)
from gatehouse.v1 import authorization_pb2 as pb

# Timestamps a request may carry: 0001-01-01 .. 9999-12-31, as protobuf defines them.
_MIN_SECONDS = -62135596800
_MAX_SECONDS = 253402300799


def consistency(msg: pb.Consistency, field: str = "consistency") -> Consistency:
    which = msg.WhichOneof("requirement")
    if which == "at_least_as_fresh":
        return Consistency.parse_at_least(msg.at_least_as_fresh, f"{field}.at_least_as_fresh")
    if which == "fully_consistent" and msg.fully_consistent:
        return FULLY_CONSISTENT
    return MINIMIZE_LATENCY


def struct(msg: Struct, field: str, max_bytes: int = LIMITS.context_bytes) -> dict[str, Any]:
    """A Struct as plain Python values, refused if too big, too deep or not finite."""
    size = msg.ByteSize()
    if size > max_bytes:
        raise InvalidArgument(field, f"is {size} bytes; at most {max_bytes}")
    return _struct(msg, field, 1)


def _struct(msg: Struct, field: str, depth: int) -> dict[str, Any]:
    if depth > LIMITS.context_depth:
        raise InvalidArgument(field, f"nested deeper than {LIMITS.context_depth} levels")
    return {k: _value(v, f"{field}.{_key(k)}", depth) for k, v in msg.fields.items()}


def _list(msg: ListValue, field: str, depth: int) -> list[Any]:
    if depth > LIMITS.context_depth:
        raise InvalidArgument(field, f"nested deeper than {LIMITS.context_depth} levels")
    return [_value(v, f"{field}[{i}]", depth) for i, v in enumerate(msg.values)]


def _value(v: Value, field: str, depth: int) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return v.string_value
    if kind == "number_value":
        n = v.number_value
        if not math.isfinite(n):
            raise InvalidArgument(field, f"{n!r} is not a finite number")
        return n
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return _struct(v.struct_value, field, depth + 1)
    if kind == "list_value":
        return _list(v.list_value, field, depth + 1)
    return None  # null_value, or no kind set


def _key(key: str) -> str:
    """A Struct key as a path segment: bare when an ASCII identifier, else quoted (so a
    look-alike or invisible character in a key is visible in the message)."""
    if key.isascii() and key.isidentifier() and len(key) <= LIMITS.quote_chars:
        return key
    return f"[{quote(key)}]"


def timestamp(msg: Timestamp, field: str) -> float:
    """Seconds since the epoch of a well-formed Timestamp."""
    if not 0 <= msg.nanos <= 999_999_999:
        raise InvalidArgument(f"{field}.nanos", f"{msg.nanos} is outside 0..999999999")
    if not _MIN_SECONDS <= msg.seconds <= _MAX_SECONDS:
        raise InvalidArgument(f"{field}.seconds", f"{msg.seconds} is outside the years 1-9999")
    return msg.seconds + msg.nanos / 1e9


def check_input(req: pb.CheckRequest, prefix: str = "") -> CheckInput:
    ctx: dict[str, Any] | None = None
    if req.HasField("context"):
        ctx = struct(req.context, prefix + "context")
    return CheckInput(
        subject_type=req.subject.type,
        subject_id=req.subject.id,
        action=req.action,
        resource_type=req.resource.type,
        resource_id=req.resource.id,
        context=ctx,
        explain=req.explain,
    )


def check_response(out: CheckOutput) -> pb.CheckResponse:
    resp = pb.CheckResponse(
        decision=pb.DECISION_ALLOW if out.allowed else pb.DECISION_DENY,
        revision=str(out.revision),
        policy_version=out.policy_version,
    )
    if out.explanation is not None:
        resp.explanation.summary = out.explanation.summary
        resp.explanation.trace.extend(out.explanation.trace)
    return resp
