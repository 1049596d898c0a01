"""What an audit line says, made from a call's noted request and response.

Each line is built field by field from allow-lists, never by dumping a
message: a Check's ``context``, object attributes, usage event dimensions,
invitation and access-link tokens are never read. Strings copied from a
request are cut to ``TEXT_CHARS`` (a failed call may carry a huge one), and
``json.dumps`` escapes control characters, so no request can forge a line.
docs/audit.md shows the format.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from gatehouse.errors import InvalidArgument
from gatehouse.tenancy import tokens
from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import tenancy_pb2

FIRST = 5
"""A write's line lists its first few relationships or objects (and counts them all)."""
TEXT_CHARS = 300
"""Longest string copied into a line (an id, an action); longer ones are cut."""
ERROR_CHARS = 200
"""Longest error message copied into a line."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One audited call as the hook saw it; the writer thread makes the line(s)."""

    kind: str
    arrived: float
    """Wall-clock seconds when the call arrived."""
    method: str
    peer: str
    key: str
    request: Any
    response: Any
    code: grpc.StatusCode
    details: str
    duration: float


# -- which calls are audited ----------------------------------------------------------

CHECK, BULK, LIST, WRITE, TENANCY = "check", "bulk", "list", "write", "tenancy"
_AUTHZ = "/gatehouse.v1.AuthorizationService/"
KINDS: dict[str, str] = {
    f"{_AUTHZ}Check": CHECK,
    f"{_AUTHZ}CheckBulk": BULK,
    f"{_AUTHZ}ListAccessible": LIST,
    "/gatehouse.v1.GraphService/WriteRelationships": WRITE,
    "/gatehouse.v1.GraphService/DeleteRelationships": WRITE,
    "/gatehouse.v1.GraphService/WriteObjects": WRITE,
    "/gatehouse.v1.UsageService/RecordUsage": WRITE,
}
_TENANCY = tenancy_pb2.DESCRIPTOR.services_by_name["TenancyService"]
KINDS.update({f"/{_TENANCY.full_name}/{m.name}": TENANCY for m in _TENANCY.methods})
"""Every method with audit lines, and how its line is made. Reads of the graph
(ReadRelationships, ReadObject, Watch) and usage reads are not audited."""

_OK = grpc.StatusCode.OK
_ALLOWED = apb.DECISION_ALLOW


# -- the lines ------------------------------------------------------------------------

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_REL_OPS = {gpb.RelationshipUpdate.OPERATION_TOUCH: "touch",
            gpb.RelationshipUpdate.OPERATION_CREATE: "create",
            gpb.RelationshipUpdate.OPERATION_DELETE: "delete"}
_OBJ_OPS = {gpb.ObjectUpdate.OPERATION_PUT: "put", gpb.ObjectUpdate.OPERATION_DELETE: "delete"}


def render_lines(entry: Entry) -> list[str]:
    """The JSON lines (newline-terminated, ASCII) for one audited call."""
    return [json.dumps(line, separators=(",", ":")) + "\n" for line in _LINES[entry.kind](entry)]


def _cut(text: str, limit: int = TEXT_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def _ref(msg: Any) -> str:
    return _cut(f"{msg.type}:{msg.id}") if msg.type or msg.id else ""


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _base(entry: Entry, kind: str) -> dict[str, Any]:
    line: dict[str, Any] = {
        "time": _rfc3339(entry.arrived), "kind": kind, "method": entry.method,
        "key": entry.key, "peer": entry.peer, "status": entry.code.name,
        "duration_ms": round(entry.duration * 1000, 3),
    }
    # An UNAUTHENTICATED message is about credentials: it stays out of the log.
    if entry.code is not _OK and entry.code is not grpc.StatusCode.UNAUTHENTICATED:
        line["error"] = _cut(entry.details, ERROR_CHARS)
    return line


def _checked(line: dict[str, Any], req: Any) -> dict[str, Any]:
    line["subject"] = _ref(req.subject)
    line["action"] = _cut(req.action)
    line["resource"] = _ref(req.resource)
    return line


def _check_lines(entry: Entry) -> list[dict[str, Any]]:
    line = _base(entry, "check")
    if entry.request is not None:
        _checked(line, entry.request)
    resp = entry.response
    if entry.code is _OK and resp is not None:
        line["decision"] = "allow" if resp.decision == _ALLOWED else "deny"
        line["policy_version"] = resp.policy_version
        line["revision"] = resp.revision
    else:
        line["decision"] = "error"
    return [line]


def _bulk_lines(entry: Entry) -> list[dict[str, Any]]:
    req, resp = entry.request, entry.response
    if entry.code is not _OK or resp is None or req is None:
        # The call failed as a whole: one line, however many items it named.
        line = _base(entry, "check")
        line["items"] = len(req.items) if req is not None else 0
        line["decision"] = "error"
        return [line]
    out = []
    n = len(resp.results)
    for i, (item, result) in enumerate(zip(req.items, resp.results, strict=False)):
        line = _checked(_base(entry, "check"), item)
        line["item"] = i
        line["items"] = n
        if result.HasField("error"):
            line["decision"] = "error"
            line["status"] = _CODE_NAMES.get(result.error.code, str(result.error.code))
            line["error"] = _cut(result.error.message, ERROR_CHARS)
        else:
            line["decision"] = "allow" if result.response.decision == _ALLOWED else "deny"
            line["policy_version"] = result.response.policy_version or resp.policy_version
            line["revision"] = resp.revision
        out.append(line)
    return out


def _list_lines(entry: Entry) -> list[dict[str, Any]]:
    line = _base(entry, "list")
    req, resp = entry.request, entry.response
    if req is not None:
        line["subject"] = _ref(req.subject)
        line["action"] = _cut(req.action)
        line["resource"] = _cut(req.resource_type)
        if req.HasField("within"):
            line["within"] = _ref(req.within)
    if entry.code is _OK and resp is not None:
        line["decision"] = "list"
        line["complete"] = resp.complete
        line["policy_version"] = resp.policy_version
        line["revision"] = resp.revision
    else:
        line["decision"] = "error"
    return [line]


def _relationship(rel: Any) -> str:
    return _cut(f"{rel.resource.type}:{rel.resource.id}#{rel.relation}"
                f"@{rel.subject.type}:{rel.subject.id}")


def _write_lines(entry: Entry) -> list[dict[str, Any]]:
    operation = entry.method.rsplit("/", 1)[-1]
    line = _base(entry, "write")
    line["operation"] = operation
    req, resp = entry.request, entry.response
    if req is not None:
        if operation == "WriteRelationships":
            line["count"] = len(req.updates)
            line["touched"] = [f"{_REL_OPS.get(u.operation, 'unspecified')} "
                               f"{_relationship(u.relationship)}" for u in req.updates[:FIRST]]
            line["preconditions"] = len(req.preconditions)
        elif operation == "DeleteRelationships":
            f = req.filter
            line["filter"] = {k: _cut(v) for k, v in (
                ("resource_type", f.resource_type), ("resource_id", f.resource_id),
                ("relation", f.relation), ("subject_type", f.subject_type),
                ("subject_id", f.subject_id)) if v}
            line["preconditions"] = len(req.preconditions)
        elif operation == "WriteObjects":
            # Object attributes are data the caller owns: named, never copied.
            line["count"] = len(req.updates)
            line["touched"] = [f"{_OBJ_OPS.get(u.operation, 'unspecified')} {_ref(u.object)}"
                               for u in req.updates[:FIRST]]
        elif operation == "RecordUsage":
            line["organization"] = _cut(req.organization_id)
            line["count"] = len(req.events)
            line["touched"] = [_cut(f"{e.metric} {e.amount:g} workspace:{e.workspace_id} "
                                    f"event:{e.event_id}") for e in req.events[:FIRST]]
    line["outcome"] = "ok" if entry.code is _OK else "error"
    if entry.code is _OK and resp is not None:
        if operation == "DeleteRelationships":
            line["deleted"] = resp.deleted
        if operation == "RecordUsage":
            line["duplicates"] = sum(1 for r in resp.results if r.duplicate)
        else:
            line["revision"] = resp.revision
    return [line]


_TARGET = {
    "CreateOrganization": "organization_id", "CreateWorkspace": "workspace_id",
    "CheckSlug": "slug", "RenameWorkspace": "workspace_id", "DeleteWorkspace": "workspace_id",
    "InviteMember": "email", "AcceptInvitation": "token", "RevokeInvitation": "invitation_id",
    "ResendInvitation": "invitation_id", "ListInvitations": "scope", "SetRole": "subject",
    "RemoveMember": "member", "CreateAccessLink": "workspace_id",
    "ListAccessLinks": "workspace_id", "RedeemAccessLink": "token",
    "DeleteAccessLink": "link_id", "MoveResource": "resource", "AddDomain": "domain",
    "ResolveSignup": "email", "JoinByDomain": "workspace_id",
}
"""What each tenancy operation acts on: a field of its request (else of its response;
JoinByDomain: of the match it joined). ``token``: the record id inside the token."""
_ACTOR = {"AcceptInvitation": "subject", "JoinByDomain": "subject"}
"""Operations whose actor is not the request's ``actor``: the subject acting for itself."""
_REQUEST_DETAILS = ("scope", "role", "workspace_id", "to_workspace_id", "reassign_to",
                    "source_type", "slug", "domain", "mode", "invitation_id", "link_id",
                    "connection_id", "name", "plan", "ttl_seconds")
_RESPONSE_DETAILS = ("organization_id", "workspace_id", "invitation_id", "link_id",
                     "connection_id", "slug", "deleted", "available")
"""The only fields copied from tenancy messages. Never ``token`` (requests and
responses carry invitation and access-link tokens), never ``attributes``."""


def _token_id(req: Any) -> str | None:
    """The record id of a request's token: the part before the dot, no secret (the list
    operations show it). Nothing of a text that is not a token this service issued."""
    with contextlib.suppress(InvalidArgument):
        return tokens.parse(req.token)[0]
    return None


def _repeated(fd: Any) -> bool:
    # ``is_repeated`` on newer protobuf runtimes, which no longer have ``label``.
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else bool(fd.label == fd.LABEL_REPEATED)


def _field(msg: Any, name: str) -> Any:
    """A scalar or reference field as a line shows it; None when absent, empty or not one."""
    fd = msg.DESCRIPTOR.fields_by_name.get(name)
    if fd is None or _repeated(fd):
        return None
    value = getattr(msg, name)
    if fd.message_type is not None:
        if fd.message_type is not apb.ObjectReference.DESCRIPTOR:
            return None
        return _ref(value) or None
    if fd.enum_type is not None:
        known = fd.enum_type.values_by_number.get(value)
        return known.name if value and known is not None else None
    if isinstance(value, str):
        return _cut(value) or None
    return value or None


def _tenancy_lines(entry: Entry) -> list[dict[str, Any]]:
    operation = entry.method.rsplit("/", 1)[-1]
    line = _base(entry, "tenancy")
    line["operation"] = operation
    req = entry.request
    resp = entry.response if entry.code is _OK else None
    messages = [m for m in (req, resp) if m is not None]
    organization = None
    for msg in messages:
        organization = organization or _field(msg, "organization_id")
    if organization is None and req is not None:
        scope = _field(req, "scope")
        if scope is not None and scope.startswith("organization:"):
            organization = scope.partition(":")[2]
    joined = resp.joined if resp is not None and operation == "JoinByDomain" else None
    if organization is None and joined is not None:
        organization = _field(joined, "organization_id")
    line["organization"] = organization
    line["actor"] = _field(req, _ACTOR.get(operation, "actor")) if req is not None else None
    target_field = _TARGET.get(operation)
    target = None
    if target_field == "token":
        target = _token_id(req) if req is not None else None
    elif target_field is not None:
        for msg in (*messages, joined) if joined is not None else messages:
            target = target or _field(msg, target_field)
    line["target"] = target
    details: dict[str, Any] = {}
    if req is not None:
        for name in _REQUEST_DETAILS:
            if name != target_field and (value := _field(req, name)) is not None:
                details[name] = value
    if resp is not None:
        for name in _RESPONSE_DETAILS:
            if name != target_field and name not in details and (
                    value := _field(resp, name)) is not None:
                details[name] = value
    if details:
        line["details"] = details
    line["outcome"] = "ok" if entry.code is _OK else "error"
    if resp is not None and (revision := _field(resp, "revision")) is not None:
        line["revision"] = revision
    return [line]


_LINES: dict[str, Callable[[Entry], list[dict[str, Any]]]] = {
    CHECK: _check_lines, BULK: _bulk_lines, LIST: _list_lines, WRITE: _write_lines,
    TENANCY: _tenancy_lines,
}


__all__ = ["BULK", "CHECK", "KINDS", "LIST", "TENANCY", "WRITE", "Entry", "render_lines"]
