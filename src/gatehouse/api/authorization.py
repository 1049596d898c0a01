"""gatehouse.v1.AuthorizationService."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError

from gatehouse.api import convert
from gatehouse.api.errors import abort, inline_abort, to_rpc_status, undecodable
from gatehouse.errors import GatehouseError, InvalidArgument
from gatehouse.runtime import Consistency, ListInput, Runtime
from gatehouse.transport import Defer, ServicerContext
from gatehouse.v1 import authorization_pb2 as pb
from gatehouse.v1 import authorization_pb2_grpc as pb_grpc

MAX_BULK_ITEMS = 1000
LIST_CHUNK = 1000
# A page stops after this long (or just before the call's deadline) and says
# it is incomplete, with a cursor to continue.
LIST_TIME_BUDGET = 2.0


def _query_tag(req: pb.ListAccessibleRequest) -> str:
    raw = "\0".join((req.subject.type, req.subject.id, req.resource_type, req.action,
                     req.within.type, req.within.id))
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def _encode_list_cursor(revision: int, after: str, tag: str) -> str:
    raw = json.dumps([revision, after, tag], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_list_cursor(text: str, tag: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        revision, after, got = json.loads(raw)
        if not (isinstance(revision, int) and isinstance(after, str) and isinstance(got, str)):
            raise ValueError
    except (ValueError, TypeError):
        raise InvalidArgument("cursor", "is not a cursor this service returned") from None
    if got != tag:
        raise InvalidArgument("cursor", "belongs to another listing (subject, resource_type, "
                              "action and within must stay the same)")
    return revision, after


class AuthorizationServicer(pb_grpc.AuthorizationServiceServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    # Check and CheckBulk are answered inline on the transport's poll thread
    # (check_inline, check_bulk_inline) whenever the index is fresh enough; the
    # coroutines below serve the calls that must wait for it first.

    def _check(self, request: pb.CheckRequest) -> pb.CheckResponse:
        return convert.check_response(self.runtime.check(convert.check_input(request)))

    def _check_bulk(self, request: pb.CheckBulkRequest) -> pb.CheckBulkResponse:
        results, rev, version = self.runtime.check_many(
            [convert.check_input(i) for i in request.items])
        revision = str(rev)
        resp = pb.CheckBulkResponse(revision=revision, policy_version=version)
        add = resp.results.add
        allow, deny = pb.DECISION_ALLOW, pb.DECISION_DENY
        for result in results:
            item = add()
            if isinstance(result, GatehouseError):
                item.error.CopyFrom(to_rpc_status(result))
            elif result.explanation is not None:
                item.response.CopyFrom(convert.check_response(result))
            else:  # filled in place: no intermediate message per item
                r = item.response
                r.decision = allow if result.allowed else deny
                r.revision = revision
                r.policy_version = result.policy_version
        return resp

    @staticmethod
    def _bulk_size(request: pb.CheckBulkRequest) -> None:
        if len(request.items) > MAX_BULK_ITEMS:
            raise InvalidArgument(
                "items", f"{len(request.items)} items; at most {MAX_BULK_ITEMS} per call"
            )

    def check_inline(self, raw: bytes) -> bytes:
        return self._inline(pb.CheckRequest, raw, self._check)

    def check_bulk_inline(self, raw: bytes) -> bytes:
        return self._inline(pb.CheckBulkRequest, raw, self._check_bulk, self._bulk_size)

    def _inline(self, message: Any, raw: bytes, decide: Callable[[Any], Any],
                validate: Callable[[Any], None] | None = None) -> bytes:
        """Parse, decide from the index as it is, serialize; Defer if it must wait first."""
        try:
            request = message.FromString(raw)
            if validate is not None:
                validate(request)
            if not self.runtime.fresh_enough(convert.consistency(request.consistency)):
                raise Defer
            out: bytes = decide(request).SerializeToString()
            return out
        except GatehouseError as exc:
            raise inline_abort(exc) from None
        except DecodeError:
            raise undecodable() from None

    async def Check(
        self, request: pb.CheckRequest, context: ServicerContext
    ) -> pb.CheckResponse:
        try:
            consistency = convert.consistency(request.consistency)
            await self.runtime.ensure(consistency, context.time_remaining())
            return self._check(request)
        except GatehouseError as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises

    async def CheckBulk(
        self, request: pb.CheckBulkRequest, context: ServicerContext
    ) -> pb.CheckBulkResponse:
        try:
            self._bulk_size(request)
            consistency = convert.consistency(request.consistency)
            await self.runtime.ensure(consistency, context.time_remaining())
        except GatehouseError as exc:
            await abort(context, exc)
            raise
        return self._check_bulk(request)

    async def ListAccessible(
        self, request: pb.ListAccessibleRequest,
        context: ServicerContext,
    ) -> AsyncIterator[pb.ListAccessibleResponse]:
        try:
            tag = _query_tag(request)
            consistency = convert.consistency(request.consistency)
            after = None
            if request.cursor:
                revision, after = _decode_list_cursor(request.cursor, tag)
                if consistency.mode == "minimize_latency":
                    consistency = Consistency("at_least_as_fresh", revision)
            remaining = context.time_remaining()
            await self.runtime.ensure(consistency, remaining)
            budget = LIST_TIME_BUDGET
            remaining = context.time_remaining()
            if remaining is not None:
                budget = min(budget, max(0.0, remaining - 0.05))
            req = ListInput(
                request.subject.type, request.subject.id, request.resource_type,
                request.action, request.within.type, request.within.id, request.page_size,
                after, MessageToDict(request.context) if request.HasField("context") else None)
            out = self.runtime.list_accessible(req, time.monotonic() + budget)
        except GatehouseError as exc:
            await abort(context, exc)
            raise
        ids = out.ids
        chunks = [ids[i:i + LIST_CHUNK] for i in range(0, len(ids), LIST_CHUNK)] or [[]]
        for chunk in chunks[:-1]:
            yield pb.ListAccessibleResponse(resource_ids=chunk)
        yield pb.ListAccessibleResponse(
            resource_ids=chunks[-1],
            next_cursor=_encode_list_cursor(out.revision, out.after, tag)
            if out.after is not None else "",
            revision=str(out.revision), complete=out.complete,
            policy_version=out.policy_version)
