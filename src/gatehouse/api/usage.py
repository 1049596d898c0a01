"""gatehouse.v1.UsageService: protobuf in, runtime calls, protobuf out."""

from __future__ import annotations

from collections.abc import Sequence

from gatehouse.api import convert
from gatehouse.api.errors import (
    answer_later,
    decode_request,
    inline_abort,
    respond,
    translate_errors,
    without_task,
)
from gatehouse.auth import tenants
from gatehouse.errors import GatehouseError, InvalidArgument
from gatehouse.runtime import EventInput, IndexFollower, UsageOperations
from gatehouse.transport import Answered, CallInfo, Later, ServicerContext
from gatehouse.usage.compute import MetricUsage
from gatehouse.usage.events import UsageEvent
from gatehouse.usage.limits import (
    AddMember,
    ConnectAccount,
    CreateWorkspace,
    Proposal,
    RecordAmount,
)
from gatehouse.v1 import usage_pb2 as pb
from gatehouse.v1 import usage_pb2_grpc as pb_grpc

Context = ServicerContext


_MSG_CACHE: dict[int, tuple[MetricUsage, pb.MetricUsage]] = {}


def _metric_msg(m: MetricUsage) -> pb.MetricUsage:
    """The message for ``m``; the runtime reuses unchanged results, and so do we."""
    hit = _MSG_CACHE.get(id(m))
    if hit is not None and hit[0] is m:
        return hit[1]
    msg = _build_metric_msg(m)
    if len(_MSG_CACHE) > 10_000:
        _MSG_CACHE.clear()
    _MSG_CACHE[id(m)] = (m, msg)
    return msg


def _build_metric_msg(m: MetricUsage) -> pb.MetricUsage:
    msg = pb.MetricUsage(name=m.metric.name, value=m.value, over=m.over, unit=m.metric.unit,
                         description=m.metric.description)
    if m.limit is not None:
        msg.limit = m.limit
    msg.by_workspace.update(m.breakdown.by_workspace)
    msg.by_source_type.update(m.breakdown.by_source_type)
    return msg


def _proposal(req: pb.CheckLimitRequest) -> Proposal:
    which = req.WhichOneof("change")
    if which == "create_workspace":
        return CreateWorkspace()
    if which == "add_member":
        return AddMember(req.add_member.workspace_id, req.add_member.email)
    if which == "connect_account":
        c = req.connect_account
        return ConnectAccount(c.workspace_id, c.source_type, c.credential_id, tuple(c.tenants))
    if which == "record":
        r = req.record
        return RecordAmount(r.metric, r.workspace_id, r.amount, r.dimension)
    raise InvalidArgument("change", "give one of create_workspace, add_member, "
                          "connect_account, record")


def _events(request: pb.RecordUsageRequest) -> list[EventInput]:
    return [
        EventInput(e.event_id, e.workspace_id, e.metric, e.amount, e.dimension,
                   convert.timestamp(e.event_time, f"events[{i}].event_time")
                   if e.HasField("event_time") else None)
        for i, e in enumerate(request.events)
    ]


def _record_response(events: Sequence[EventInput | UsageEvent],
                     duplicates: Sequence[bool]) -> pb.RecordUsageResponse:
    return pb.RecordUsageResponse(results=[
        pb.RecordUsageResult(event_id=e.event_id, duplicate=dup)
        for e, dup in zip(events, duplicates, strict=True)])


class UsageServicer(pb_grpc.UsageServiceServicer):  # type: ignore[misc]
    """A tenant-bound caller names only its own organizations (the workspaces named
    must be of that organization, which the operations check)."""

    def __init__(self, usage: UsageOperations, follower: IndexFollower) -> None:
        self.usage = usage
        self.follower = follower

    def _require_organization(self, info: CallInfo | None, org_id: str) -> None:
        organizations = tenants.organizations_of(info)
        if organizations is None:
            return
        view = self.follower.view()
        guard = tenants.guard(organizations, view.policy, view.index)
        if guard is not None:
            guard.require_organization(org_id, "organization_id")

    @translate_errors
    async def ComputeUsage(self, request: pb.ComputeUsageRequest,
                           context: Context) -> pb.ComputeUsageResponse:
        self._require_organization(context.call_info(), request.organization_id)
        await self.follower.ensure(convert.consistency(request.consistency),
                                   context.time_remaining())
        report = await self.usage.compute_usage(
            request.organization_id, request.workspace_id, list(request.metrics),
            request.period)
        resp = pb.ComputeUsageResponse(
            organization_id=request.organization_id, workspace_id=request.workspace_id,
            plan=report.plan.name if report.plan else "",
            plan_is_fallback=report.plan_is_fallback,
            features=sorted(report.plan.features) if report.plan else [],
            revision=str(report.revision), period=report.period)
        resp.metrics.extend(_metric_msg(m) for m in report.metrics)
        return resp

    @translate_errors
    async def RecordUsage(self, request: pb.RecordUsageRequest,
                          context: Context) -> pb.RecordUsageResponse:
        return await self._record(request, context.call_info())

    def record_inline(self, raw: bytes, info: CallInfo | None) -> Later:
        """RecordUsage through the transport's short path (a write: it always needs the
        loop, for the usage store); the same checks, answers and statuses. Without a
        task when nothing needs one (no tenant-bound caller, no trace)."""
        if without_task(info) and tenants.organizations_of(info) is None:
            return Later(start=lambda _remaining, answered: self._record_soon(
                raw, info, answered))
        return Later(lambda _remaining: answer_later(
            info, pb.RecordUsageRequest, raw, lambda req: self._record(req, info)))

    def _record_soon(self, raw: bytes, info: CallInfo | None, answered: Answered) -> None:
        request = decode_request(info, pb.RecordUsageRequest, raw)
        try:
            events = self.usage.checked_events(request.organization_id, _events(request))
        except GatehouseError as exc:
            raise inline_abort(exc) from None

        def recorded(result: list[bool] | BaseException) -> None:
            answered(respond(info, result, lambda duplicates: _record_response(
                events, duplicates)))

        self.usage.record_soon(events, recorded)

    async def _record(self, request: pb.RecordUsageRequest,
                      info: CallInfo | None) -> pb.RecordUsageResponse:
        self._require_organization(info, request.organization_id)
        events = _events(request)
        duplicates = await self.usage.record_usage(request.organization_id, events)
        return _record_response(events, duplicates)

    @translate_errors
    async def CheckLimit(self, request: pb.CheckLimitRequest,
                         context: Context) -> pb.CheckLimitResponse:
        proposal = _proposal(request)
        self._require_organization(context.call_info(), request.organization_id)
        await self.follower.ensure(convert.consistency(request.consistency),
                                   context.time_remaining())
        decision, plan, revision = await self.usage.check_limit(
            request.organization_id, proposal)
        resp = pb.CheckLimitResponse(allowed=decision.allowed, reason=decision.reason,
                                     plan=plan, revision=str(revision))
        for c in decision.checks:
            item = resp.checks.add(metric=c.metric.name, current=c.current,
                                   proposed=c.proposed, allowed=c.allowed)
            if c.limit is not None:
                item.limit = c.limit
        return resp
