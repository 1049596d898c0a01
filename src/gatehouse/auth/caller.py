"""Who is calling: what the authentication hook learned, as the rest of a call sees it.

The pre-call hook stores a ``Caller`` in the call's notes (``CallInfo.notes``
under ``CALLER``); handlers read it back with ``caller_of`` to restrict what
a tenant-bound key may name or see, and the audit hook logs its name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CALLER = "caller"
"""The key of the ``Caller`` in a call's notes."""

SCOPES = ("check", "read", "write", "admin")
"""Every scope a key may hold (DESIGN §11)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: the key's name (never the key), its scopes, its tenants."""

    name: str
    scopes: frozenset[str]
    organizations: frozenset[str] | None = None
    """The organization ids this caller may name or see; None: every organization."""

    def may_see(self, organization: str) -> bool:
        return self.organizations is None or organization in self.organizations


ANONYMOUS = Caller("anonymous", frozenset(SCOPES))
"""Who calls a server that runs without keys (loopback, or ``--insecure-no-auth``)."""


def caller_of(notes: Mapping[str, Any] | None) -> Caller:
    """The caller recorded for a call; anonymous when no hook authenticated it."""
    found = notes.get(CALLER) if notes is not None else None
    return found if isinstance(found, Caller) else ANONYMOUS


__all__ = ["ANONYMOUS", "CALLER", "SCOPES", "Caller", "caller_of"]
