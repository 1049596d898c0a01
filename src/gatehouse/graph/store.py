"""The storage seam: one protocol, several backends.

The memory store is the reference implementation; every backend must behave
the same through this protocol (the conformance suite in tests/graph/ runs
against each).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from gatehouse.graph.changes import Change, Operation
from gatehouse.graph.model import Snapshot

ChangeListener = Callable[[Change], None]


class GraphStore(Protocol):
    """Source of truth for objects and relationships, with revisions.

    Extension point: implement this to add a backend.
    """

    @property
    def durable(self) -> bool:
        """Whether acknowledged writes survive a restart of the process."""
        ...

    async def head_revision(self) -> int:
        """The revision of the newest committed write (0 when empty)."""
        ...

    async def snapshot(self) -> Snapshot:
        """Every object and relationship at one revision."""
        ...

    async def write(self, ops: Sequence[Operation]) -> Change:
        """Apply all of ``ops`` atomically or none of them; return the change."""
        ...

    async def changes_after(self, revision: int) -> list[Change]:
        """Committed changes with a revision above ``revision``, oldest first."""
        ...

    def subscribe(self, listener: ChangeListener) -> None:
        """Call ``listener`` with each change this store commits, in order."""
        ...
