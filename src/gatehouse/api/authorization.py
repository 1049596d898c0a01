"""gatehouse.v1.AuthorizationService."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.message import DecodeError

from gatehouse.api import convert, cursor
from gatehouse.api.errors import inline_abort, to_rpc_status, translate_errors, undecodable
from gatehouse.auth.tenants import organizations_of
from gatehouse.errors import GatehouseError, InvalidArgument
from gatehouse.limits import LIMITS
from gatehouse.runtime import CheckInput, Consistency, Decisions, IndexFollower, ListInput, Mode
from gatehouse.transport import CallInfo, Defer, ServicerContext
from gatehouse.transport.notes import note_request, note_response
from gatehouse.v1 import authorization_pb2 as pb
from gatehouse.v1 import authorization_pb2_grpc as pb_grpc

# Ids per streamed message of a ListAccessible page.
LIST_CHUNK = 1000


def _list_tag(req: pb.ListAccessibleRequest) -> str:
    return cursor.query_tag("list", req.subject.type, req.subject.id, req.resource_type,
                            req.action, req.within.type, req.within.id)


class AuthorizationServicer(pb_grpc.AuthorizationServiceServicer):  # type: ignore[misc]
    """Check and CheckBulk are answered inline on the transport's poll thread
    (``check_inline``, ``check_bulk_inline``) whenever the index is fresh
    enough; the coroutines serve the calls that must wait for it first."""

    def __init__(self, decisions: Decisions, follower: IndexFollower) -> None:
        self.decisions = decisions
        self.follower = follower

    def _check(self, request: pb.CheckRequest,
               organizations: frozenset[str] | None = None) -> pb.CheckResponse:
        return convert.check_response(
            self.decisions.check(convert.check_input(request), organizations))

    def _check_bulk(self, request: pb.CheckBulkRequest,
                    organizations: frozenset[str] | None = None) -> pb.CheckBulkResponse:
        items: list[CheckInput | GatehouseError] = []
        for i, one in enumerate(request.items):
            try:
                items.append(convert.check_input(one, f"items[{i}]."))
            except GatehouseError as exc:
                items.append(exc)
        results, rev, version = self.decisions.check_many(items, organizations)
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
        n = len(request.items)
        if n > LIMITS.bulk_items:
            raise InvalidArgument("items", f"{n} items; at most {LIMITS.bulk_items} per call")
        total = sum(item.context.ByteSize() for item in request.items
                    if item.HasField("context"))
        # Converting contexts happens on the poll thread: bounded per call, not only per item.
        if total > LIMITS.bulk_context_bytes:
            raise InvalidArgument("items", f"contexts total {total} bytes; at most "
                                  f"{LIMITS.bulk_context_bytes} per call")

    def check_inline(self, raw: bytes, info: CallInfo | None) -> bytes:
        return self._inline(pb.CheckRequest, raw, info, self._check)

    def check_bulk_inline(self, raw: bytes, info: CallInfo | None) -> bytes:
        return self._inline(pb.CheckBulkRequest, raw, info, self._check_bulk, self._bulk_size)

    def _inline(self, message: Any, raw: bytes, info: CallInfo | None,
                decide: Callable[[Any, frozenset[str] | None], Any],
                validate: Callable[[Any], None] | None = None) -> bytes:
        """Parse, decide from the index as it is, serialize; Defer if it must wait first."""
        try:
            request = message.FromString(raw)
            note_request(info, request)
            if validate is not None:
                validate(request)
            if not self.follower.fresh_enough(convert.consistency(request.consistency)):
                raise Defer
            response = decide(request, organizations_of(info))
            note_response(info, response)
            out: bytes = response.SerializeToString()
            return out
        except GatehouseError as exc:
            raise inline_abort(exc) from None
        except DecodeError:
            raise undecodable() from None

    @translate_errors
    async def Check(self, request: pb.CheckRequest,
                    context: ServicerContext) -> pb.CheckResponse:
        await self.follower.ensure(convert.consistency(request.consistency),
                                   context.time_remaining())
        return self._check(request, organizations_of(context.call_info()))

    @translate_errors
    async def CheckBulk(self, request: pb.CheckBulkRequest,
                        context: ServicerContext) -> pb.CheckBulkResponse:
        self._bulk_size(request)
        await self.follower.ensure(convert.consistency(request.consistency),
                                   context.time_remaining())
        return self._check_bulk(request, organizations_of(context.call_info()))

    @translate_errors
    async def ListAccessible(self, request: pb.ListAccessibleRequest,
                             context: ServicerContext,
                             ) -> AsyncIterator[pb.ListAccessibleResponse]:
        tag = _list_tag(request)
        consistency = convert.consistency(request.consistency)
        after = None
        if request.cursor:
            revision, (after,) = cursor.decode(request.cursor, tag, 1)
            if consistency.mode is Mode.MINIMIZE_LATENCY:
                consistency = Consistency.at_least(revision, "cursor")
        await self.follower.ensure(consistency, context.time_remaining())
        budget = LIMITS.list_time_budget_seconds
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, max(0.0, remaining - 0.05))
        ctx = convert.struct(request.context, "context") if request.HasField("context") else None
        req = ListInput(
            request.subject.type, request.subject.id, request.resource_type,
            request.action, request.within.type, request.within.id, request.page_size,
            after, ctx)
        out = self.decisions.list_accessible(req, time.monotonic() + budget,
                                             organizations_of(context.call_info()))
        ids = out.ids
        chunks = [ids[i:i + LIST_CHUNK] for i in range(0, len(ids), LIST_CHUNK)] or [[]]
        for chunk in chunks[:-1]:
            yield pb.ListAccessibleResponse(resource_ids=chunk)
        yield pb.ListAccessibleResponse(
            resource_ids=chunks[-1],
            next_cursor=cursor.encode(out.revision, (out.after,), tag)
            if out.after is not None else "",
            revision=str(out.revision), complete=out.complete,
            policy_version=out.policy_version)
