"""Consistency modes and the strict parsing of revisions.

A revision is the consistency token every write returns and every read may
ask for: a decimal uint64 written in ASCII digits and nothing else (no sign,
no spaces, no superscript, Arabic-Indic or fullwidth digits, which Python's
``str.isdigit`` and ``int`` would otherwise accept or half-accept).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from gatehouse.errors import InvalidArgument, quote

_REVISION_RE = re.compile(r"[0-9]{1,20}", re.ASCII)
MAX_REVISION = 2**64 - 1


def parse_revision(text: str, field: str) -> int:
    """The revision ``text`` denotes; InvalidArgument naming ``field`` otherwise."""
    if not _REVISION_RE.fullmatch(text) or int(text) > MAX_REVISION:
        raise InvalidArgument(field, f"{quote(text)} is not a revision (a decimal uint64 "
                              "in ASCII digits)")
    return int(text)


class Mode(enum.Enum):
    """How fresh the index must be before a read answers."""

    MINIMIZE_LATENCY = "minimize_latency"
    """Answer from the local index as it is."""
    AT_LEAST_AS_FRESH = "at_least_as_fresh"
    """Wait until the index has applied a given revision."""
    FULLY_CONSISTENT = "fully_consistent"
    """Catch up to the store's newest revision first."""


@dataclass(frozen=True, slots=True)
class Consistency:
    """A read's freshness requirement; ``source`` names the request field the revision
    came from, for the refusal of one the store never issued."""

    mode: Mode = Mode.MINIMIZE_LATENCY
    revision: int = 0
    source: str = field(default="consistency.at_least_as_fresh", compare=False)

    @classmethod
    def at_least(cls, revision: int, source: str = "consistency.at_least_as_fresh"
                 ) -> Consistency:
        return cls(Mode.AT_LEAST_AS_FRESH, revision, source)

    @classmethod
    def parse_at_least(cls, text: str, field: str) -> Consistency:
        return cls(Mode.AT_LEAST_AS_FRESH, parse_revision(text, field), field)


MINIMIZE_LATENCY = Consistency()
FULLY_CONSISTENT = Consistency(Mode.FULLY_CONSISTENT)
