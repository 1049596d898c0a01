"""Protobuf <-> domain values for the shared messages."""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict

from gatehouse.runtime import CheckInput, CheckOutput, Consistency
from gatehouse.v1 import authorization_pb2 as pb


def consistency(msg: pb.Consistency, field: str = "consistency") -> Consistency:
    which = msg.WhichOneof("requirement")
    if which == "at_least_as_fresh":
        return Consistency.at_least(msg.at_least_as_fresh, f"{field}.at_least_as_fresh")
    if which == "fully_consistent" and msg.fully_consistent:
        return Consistency("fully_consistent")
    return Consistency()


def check_input(req: pb.CheckRequest) -> CheckInput:
    ctx: dict[str, Any] | None = None
    if req.HasField("context"):
        ctx = MessageToDict(req.context)
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
