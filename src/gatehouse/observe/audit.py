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

What a line holds is chosen field by field (``auditlines``), never by
dumping a message; call metadata (where API keys travel) is not read at all.
docs/audit.md describes the format.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from gatehouse.auth.caller import caller_of
from gatehouse.errors import InvalidArgument
from gatehouse.limits import LIMITS
from gatehouse.observe.auditlines import BULK, CHECK, KINDS, LIST, Entry, render_lines
from gatehouse.transport import CallInfo, CallOutcome
from gatehouse.transport.notes import REQUEST, RESPONSE
from gatehouse.v1 import authorization_pb2 as apb

log = logging.getLogger("gatehouse.audit")

DROPPED = Counter("gatehouse_audit_dropped", "Audit lines not written: the queue was full, "
                  "the log could not be written, or the line could not be made")


class DecisionCounts(Collector):
    """``gatehouse_decisions_total{result}``: every Check decision and CheckBulk item.

    Counted on every Check, on the poll thread: three integers under one plain
    lock, handed to prometheus-client as a metric family at scrape time (a
    prometheus-client ``Counter`` child costs several times as much per call).
    """

    _HELP = "Check and CheckBulk decisions by result (every decision, whatever the sampling)"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.allow = self.deny = self.error = 0

    def add(self, allow: int = 0, deny: int = 0, error: int = 0) -> None:
        with self._lock:
            self.allow += allow
            self.deny += deny
            self.error += error

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily("gatehouse_decisions", self._HELP, labels=("result",))]

    def collect(self) -> list[CounterMetricFamily]:
        with self._lock:
            values = (("allow", self.allow), ("deny", self.deny), ("error", self.error))
        family = CounterMetricFamily("gatehouse_decisions", self._HELP, labels=("result",))
        for result, value in values:
            family.add_metric((result,), value)
        return [family]


DECISIONS = DecisionCounts()
REGISTRY.register(DECISIONS)

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
        self._size = os.fstat(self._file.fileno()).st_size  # 0 for a pipe

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

    def close(self, timeout: float = 30.0) -> None:
        """Write out everything queued, then close the sink (blocking: run it off the loop).

        A sink stuck for ``timeout`` seconds (a pipe nobody reads, a hung network
        disk) must not hold the shutdown forever: what is still queued then is
        counted as dropped and the process may exit (the thread is a daemon).
        """
        self._closed = True
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                left = sum(lines for _, lines in list(self._queue))
                DROPPED.inc(left)
                log.error("the audit log is stuck; lines still queued are dropped",
                          extra={"lines": left, "waited_seconds": timeout})
                return
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
            DECISIONS.add(error=1)
        elif kind is CHECK:
            if response.decision == _ALLOWED:
                DECISIONS.add(allow=1)
            else:
                DECISIONS.add(deny=1)
        else:
            allow = deny = error = 0
            for item in response.results:
                if item.HasField("error"):
                    error += 1
                elif item.response.decision == _ALLOWED:
                    allow += 1
                else:
                    deny += 1
            DECISIONS.add(allow, deny, error)


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


__all__ = ["DECISIONS", "DROPPED", "AuditHook", "AuditLog", "AuditSettings", "AuditWriter",
           "RotatingFile", "Sink", "Stdout", "open_sink"]
