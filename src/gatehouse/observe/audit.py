"""The decision audit log: one JSON line per decision, write or tenancy operation.

How a line is made, and why it never slows an answer down:

1. The api layer notes each call's request and response in the call's notes
   (``gatehouse.transport.notes``): two dictionary writes, nothing formatted.
2. ``AuditHook.after``, a post-call hook, runs once the final status is
   known. It counts every decision (``gatehouse_decisions_total``), decides
   whether a Check, CheckBulk or ListAccessible call is sampled (writes and
   tenancy operations always are), and queues a reference to what it needs.
   It never formats and never touches the disk: it may run on the
   transport's poll thread, which answers every Check.
3. ``AuditWriter``'s thread turns queued entries into JSON lines and writes
   them to stdout or a file (``RotatingFile``). A full queue drops the entry
   and counts it (``gatehouse_audit_dropped_total``) instead of waiting.
   ``close`` writes out everything queued before it returns.

What a line holds is chosen field by field (allow-lists below), never by
dumping a message: request contexts, object attributes, invitation and
access-link tokens, authorization metadata and API keys are not read at all.
docs/audit.md describes the format.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import grpc
from prometheus_client import Counter

from gatehouse.auth.caller import caller_of
from gatehouse.errors import InvalidArgument
from gatehouse.limits import LIMITS
from gatehouse.tenancy import tokens
from gatehouse.transport import CallInfo, CallOutcome
from gatehouse.transport.notes import REQUEST, RESPONSE
from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import tenancy_pb2

log = logging.getLogger("gatehouse.audit")

DECISIONS = Counter("gatehouse_decisions", "Check and CheckBulk decisions by result (every "
                    "decision, whatever the audit sampling)", ["result"])
DROPPED = Counter("gatehouse_audit_dropped", "Audit lines not written: the queue was full, "
                  "the log could not be written, or the line could not be made")
_ALLOW, _DENY, _ERROR = (DECISIONS.labels(r) for r in ("allow", "deny", "error"))

FIRST = 5
"""A write's line lists its first few relationships or objects (and counts them all)."""
TEXT_CHARS = 300
"""Longest string copied into a line (an id, an action); longer ones are cut."""
ERROR_CHARS = 200
"""Longest error message copied into a line."""
WRITE_INTERVAL = 0.05
"""Seconds the writer sleeps when its queue is empty."""


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Where the audit log goes and how much of it is kept (``gatehouse serve --audit-*``)."""

    path: str
    """A file to append to, or ``-`` for standard output."""
    sample_checks: float = 1.0
    """Share of Check, CheckBulk and ListAccessible calls logged (0..1); writes: all."""
    max_bytes: int = 100 << 20
    """Rotate the file before it would grow past this size; 0: never rotate."""
    backups: int = 5
    """Rotated files kept (PATH.1 newest … PATH.N oldest); 0: the file starts over."""
    queue_lines: int = LIMITS.audit_queue_lines
    """Entries waiting for the writer; beyond this they are dropped and counted."""

    def __post_init__(self) -> None:
        if not self.path:
            raise InvalidArgument("audit_log", "give a file path or '-' for standard output")
        if not 0.0 <= self.sample_checks <= 1.0:
            raise InvalidArgument("audit_sample_checks", "must be between 0 and 1")
        if self.max_bytes < 0:
            raise InvalidArgument("audit_max_bytes", "must be 0 (no rotation) or more")
        if self.backups < 0:
            raise InvalidArgument("audit_backups", "must be 0 or more")
        if self.queue_lines < 1:
            raise InvalidArgument("audit_queue_lines", "must be at least 1")


class Sink(Protocol):
    """Where the writer thread puts lines; an extension point (``Stdout``, ``RotatingFile``).

    Only the writer thread calls it, so it need not be thread-safe.
    """

    def write(self, line: str) -> None:
        """Append one line (ending in a newline, ASCII only)."""

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Stdout:
    """Lines on standard output (the server's own logs go to standard error)."""

    def write(self, line: str) -> None:
        sys.stdout.write(line)

    def flush(self) -> None:
        sys.stdout.flush()

    def close(self) -> None:
        sys.stdout.flush()


class RotatingFile:
    """Append to ``path``; before a line would take it past ``max_bytes``, rotate.

    The semantics of ``logging.handlers.RotatingFileHandler`` except for
    ``backups == 0``: PATH becomes PATH.1, PATH.1 becomes PATH.2 … up to
    PATH.<backups> (the oldest is deleted), and a fresh PATH is started; a
    single line longer than ``max_bytes`` still goes whole into a file of
    its own. With ``backups`` 0 the file starts over empty (nothing kept);
    with ``max_bytes`` 0 it is never rotated (leave it to logrotate, which
    may move or truncate it: the file is opened for appending). New files
    are created readable by owner and group only.
    """

    def __init__(self, path: Path, max_bytes: int = 0, backups: int = 0) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file = self._open("a")
        self._size = self._file.tell()

    def _open(self, mode: str) -> Any:
        return open(self.path, mode, encoding="ascii",
                    opener=lambda p, flags: os.open(p, flags, 0o640))

    def write(self, line: str) -> None:
        n = len(line)  # ASCII: characters are bytes
        if self.max_bytes and self._size and self._size + n > self.max_bytes:
            self._rotate()
        self._file.write(line)
        self._size += n

    def _rotate(self) -> None:
        self._file.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = Path(f"{self.path}.{i}")
                if older.exists():
                    os.replace(older, f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
        self._file = self._open("w")
        self._size = 0

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def open_sink(settings: AuditSettings) -> Sink:
    """The sink ``settings.path`` names; OSError (at start, not later) if it cannot be opened."""
    if settings.path == "-":
        return Stdout()
    return RotatingFile(Path(settings.path), settings.max_bytes, settings.backups)


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


class AuditWriter:
    """A bounded queue and the thread that drains it into a ``Sink``.

    ``put`` is called from the poll thread and the event loop: appending to a
    deque is atomic, and a queue over its bound loses the entry (counted)
    rather than waiting for the disk.
    """

    def __init__(self, sink: Sink, capacity: int = LIMITS.audit_queue_lines,
                 render: Callable[[Entry], list[str]] | None = None) -> None:
        self._sink = sink
        self._capacity = capacity
        self._render = render or render_lines
        self._queue: collections.deque[tuple[Entry, int]] = collections.deque()
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="gatehouse-audit", daemon=True)
        self._last_error = 0.0

    def start(self) -> None:
        self._thread.start()

    def put(self, entry: Entry, lines: int = 1) -> bool:
        """Queue ``entry`` (``lines`` lines long); False, and counted, when it is dropped."""
        if self._closed or len(self._queue) >= self._capacity:
            DROPPED.inc(lines)
            return False
        self._queue.append((entry, lines))
        return True

    def close(self) -> None:
        """Write out everything queued, then close the sink (blocking: run it off the loop)."""
        self._closed = True
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        else:
            self._drain()
        try:
            self._sink.close()
        except OSError as exc:
            log.error("could not close the audit log", extra={"error": str(exc)})

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            self._drain()
            if stopping:
                return
            self._stop.wait(WRITE_INTERVAL)

    def _drain(self) -> None:
        queue = self._queue
        if not queue:
            return
        while queue:
            entry, lines = queue.popleft()
            try:
                text = self._render(entry)
            except Exception:
                log.exception("could not make an audit line", extra={"method": entry.method})
                DROPPED.inc(lines)
                continue
            try:
                for line in text:
                    self._sink.write(line)
            except (OSError, ValueError) as exc:
                DROPPED.inc(lines)
                self._write_failed(exc)
        try:
            self._sink.flush()
        except (OSError, ValueError) as exc:
            self._write_failed(exc)

    def _write_failed(self, exc: Exception) -> None:
        """Say so at most once a minute: a full disk must not also flood the server log."""
        now = time.monotonic()
        if now - self._last_error >= 60.0 or self._last_error == 0.0:
            self._last_error = now
            log.error("could not write the audit log; lines are dropped and counted in "
                      "gatehouse_audit_dropped_total", extra={"error": str(exc)})


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


class AuditHook:
    """The post-call hook: counts decisions and, given a writer, queues audit entries.

    Without a writer it only counts (``gatehouse_decisions_total`` for a
    server that serves metrics but keeps no audit log).
    """

    def __init__(self, writer: AuditWriter | None, sample_checks: float = 1.0) -> None:
        self._writer = writer
        self._sample = sample_checks if writer is not None else 0.0
        self._kinds = KINDS

    def after(self, info: CallInfo, outcome: CallOutcome) -> None:
        kind = self._kinds.get(info.method)
        if kind is None:
            return
        notes = info.notes
        response = notes.get(RESPONSE)
        lines = 1
        if kind is CHECK or kind is BULK or kind is LIST:
            if kind is not LIST:
                self._count(kind, response, outcome.code)
            sample = self._sample
            if sample < 1.0 and (sample <= 0.0 or random.random() >= sample):
                return
            if kind is BULK and response is not None and outcome.code is _OK:
                lines = len(response.results)
        writer = self._writer
        if writer is None:
            return
        writer.put(Entry(kind, time.time() - outcome.duration, info.method, info.peer,
                         caller_of(notes).name, notes.get(REQUEST), response, outcome.code,
                         outcome.details, outcome.duration), lines)

    @staticmethod
    def _count(kind: str, response: Any, code: grpc.StatusCode) -> None:
        """Every decision counted: a call that failed is one error, a CheckBulk item one each."""
        if code is not _OK or response is None:
            _ERROR.inc()
        elif kind is CHECK:
            (_ALLOW if response.decision == _ALLOWED else _DENY).inc()
        else:
            allow = deny = error = 0
            for item in response.results:
                if item.HasField("error"):
                    error += 1
                elif item.response.decision == _ALLOWED:
                    allow += 1
                else:
                    deny += 1
            for counter, n in ((_ALLOW, allow), (_DENY, deny), (_ERROR, error)):
                if n:
                    counter.inc(n)


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
    "InviteMember": "email", "AcceptInvitation": "subject", "RevokeInvitation": "invitation_id",
    "ResendInvitation": "invitation_id", "ListInvitations": "scope", "SetRole": "subject",
    "RemoveMember": "member", "CreateAccessLink": "workspace_id",
    "ListAccessLinks": "workspace_id", "RedeemAccessLink": "connection_id",
    "DeleteAccessLink": "link_id", "MoveResource": "resource", "AddDomain": "domain",
    "ResolveSignup": "email", "JoinByDomain": "subject",
}
"""What each tenancy operation acts on: a field of its request (else of its response)."""
_REQUEST_DETAILS = ("scope", "role", "workspace_id", "to_workspace_id", "reassign_to",
                    "source_type", "slug", "domain", "mode", "invitation_id", "link_id",
                    "connection_id", "name", "plan", "ttl_seconds")
_RESPONSE_DETAILS = ("organization_id", "workspace_id", "invitation_id", "link_id",
                     "connection_id", "slug", "deleted", "available")
"""The only fields copied from tenancy messages. Never ``token`` (requests and
responses carry invitation and access-link tokens), never ``attributes``."""
_TOKEN_IDS = {"AcceptInvitation": "invitation_id", "RedeemAccessLink": "link_id"}
"""Operations that name their record by token: the line gets the record id, the part
of a token before the dot, which is no secret (the list operations show it)."""


def _field(msg: Any, name: str) -> Any:
    """A scalar or reference field as a line shows it; None when absent, empty or not one."""
    fd = msg.DESCRIPTOR.fields_by_name.get(name)
    if fd is None or fd.label == fd.LABEL_REPEATED:
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
    if organization is None and resp is not None and resp.DESCRIPTOR.fields_by_name.get("joined"):
        organization = _field(resp.joined, "organization_id")
    line["organization"] = organization
    line["actor"] = _field(req, "actor") if req is not None else None
    target_field = _TARGET.get(operation)
    target = None
    if target_field is not None:
        for msg in messages:
            target = target or _field(msg, target_field)
    line["target"] = target
    details: dict[str, Any] = {}
    if req is not None:
        for name in _REQUEST_DETAILS:
            if name != target_field and (value := _field(req, name)) is not None:
                details[name] = value
        token_id = _TOKEN_IDS.get(operation)
        if token_id is not None:
            # Not a token this service issued: nothing of it is logged.
            with contextlib.suppress(InvalidArgument):
                details[token_id] = tokens.parse(req.token)[0]
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


class AuditLog:
    """The audit log of one server: its writer (thread and sink) and its hook.

    Open it before serving (an unwritable path fails the start), ``start``
    it with the server and ``close`` it after the transport has stopped, so
    that the last calls' lines are written before the process exits.
    """

    def __init__(self, settings: AuditSettings, sink: Sink | None = None) -> None:
        self.settings = settings
        self.writer = AuditWriter(sink if sink is not None else open_sink(settings),
                                  settings.queue_lines)
        self.hook = AuditHook(self.writer, settings.sample_checks)

    def start(self) -> None:
        self.writer.start()

    def close(self) -> None:
        self.writer.close()


__all__ = ["DECISIONS", "DROPPED", "KINDS", "AuditHook", "AuditLog", "AuditSettings",
           "AuditWriter", "Entry", "RotatingFile", "Sink", "Stdout", "open_sink",
           "render_lines"]
