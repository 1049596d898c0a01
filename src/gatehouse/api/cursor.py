"""Keyset cursors for paged streams (ListAccessible, ReadRelationships).

A cursor carries the revision its page was read at, the position after
which the next page starts, and a tag of the query it belongs to, so a
cursor replayed against another query is refused instead of answering a
wrong page. The text is URL-safe base64 of fields joined by U+001F, a
character no id, type or relation may contain: parsing is a split, with no
nesting a forged cursor could use to exhaust the parser.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence

from gatehouse.errors import InvalidArgument
from gatehouse.limits import LIMITS
from gatehouse.runtime.consistency import parse_revision

_VERSION = "c1"
_SEP = "\x1f"
_B64 = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


def query_tag(*parts: str) -> str:
    """A short digest of the query a cursor belongs to."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def encode(revision: int, position: Sequence[str], tag: str) -> str:
    raw = _SEP.join((_VERSION, tag, str(revision), *position)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(text: str, tag: str, arity: int, field: str = "cursor") -> tuple[int, tuple[str, ...]]:
    """(revision, position) of a cursor this service returned for the query ``tag``."""
    bad = InvalidArgument(field, "is not a cursor this service returned")
    if len(text) > LIMITS.cursor_chars or not _B64.fullmatch(text):
        raise bad
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        raise bad from None
    fields = raw.split(_SEP)
    if len(fields) != 3 + arity or fields[0] != _VERSION:
        raise bad
    if fields[1] != tag:
        raise InvalidArgument(field, "belongs to another listing (the request's other fields "
                              "must stay the same from page to page)")
    try:
        revision = parse_revision(fields[2], field)
    except InvalidArgument:
        raise bad from None
    position = tuple(fields[3:])
    if not all(p.isprintable() for p in position):
        raise bad
    return revision, position
