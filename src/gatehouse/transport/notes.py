"""What a handler leaves in its call's notes for the post-call hooks.

The api layer records the request it parsed and the response it built under
``REQUEST`` and ``RESPONSE`` (for a stream, the last message sent); a
post-call hook (the audit log, the decision counters) reads them once the
final status is known. Only references are stored, so a call nobody
observes pays two dictionary writes; reading the messages, and deciding
whether a call is worth a log line, is the hook's business.
"""

from __future__ import annotations

from typing import Any

from gatehouse.transport.base import CallInfo

REQUEST = "request"
"""The request message the handler parsed (absent when it could not parse one)."""
RESPONSE = "response"
"""The response message the handler returned (absent when the call failed before one)."""


def note_request(info: CallInfo | None, request: Any) -> None:
    if info is not None:
        info.notes[REQUEST] = request


def note_response(info: CallInfo | None, response: Any) -> None:
    if info is not None:
        info.notes[RESPONSE] = response


__all__ = ["REQUEST", "RESPONSE", "note_request", "note_response"]
