"""The storage seam: one protocol, several backends.

The memory store is the reference implementation; every backend must behave
the same through this protocol. :mod:`gatehouse.graph.conformance` is the
suite that says so: any backend runs it (tests/graph runs it on memory and
Redis).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from gatehouse.graph.changes import Change, Operation, WritePrecondition
from gatehouse.graph.model import Snapshot
from gatehouse.policy.rules import WriteRules


class ChangelogGap(Exception):
    """The changelog cannot continue from the asked revision (trimmed, or the
    store's data was lost or replaced): rebuild from a snapshot."""


class GraphStore(Protocol):
    """Source of truth for objects and relationships, with revisions.

    Extension point: implement this to add a backend.
    """

    @property
    def durable(self) -> bool:
        """Whether acknowledged writes survive a restart of the process."""
        ...

    @property
    def description(self) -> str:
        """What it is, for logs and health (never includes credentials)."""
        ...

    async def head_revision(self) -> int:
        """The revision of the newest committed write (0 when empty)."""
        ...

    async def head(self) -> tuple[str, int]:
        """The epoch and the newest revision, read together ("" when the store holds
        no epoch yet, as after a wipe). A revision means something only within its
        epoch: a fully consistent read compares both."""
        ...

    async def check_history(self, after: int, epoch: str) -> None:
        """Raise ``ChangelogGap`` unless the store still holds the history this object
        handed out (by ``snapshot`` or ``follow``) up to revision ``after`` of
        ``epoch``: the same epoch, a head not behind ``after``, and — where the store
        can tell — the same write at ``after``. A store that went back (restarted
        from a shorter AOF, a failover to a replica that missed writes, a restore)
        fails it even when it reused the revision numbers for other writes.
        ``follow`` checks this before it reads; the follower calls it on every
        (re)connection before its index vouches for a revision again. Raises
        ``Unavailable`` when the store cannot be reached."""
        ...

    async def snapshot(self) -> Snapshot:
        """Objects and relationships from revision ``snapshot.revision`` on.

        The content may already include some later changes; applying
        ``follow(snapshot.revision)`` on top converges to the current state,
        because every logged operation is idempotent.
        """
        ...

    async def write(
        self,
        ops: Sequence[Operation],
        preconditions: Sequence[WritePrecondition] = (),
        rules: WriteRules | None = None,
    ) -> Change:
        """Apply all of ``ops`` atomically or none of them; return the change.

        A batch that changes nothing commits nothing: no new revision, no
        changelog entry; the change answers the current revision with no ops.
        Each tenant a committed batch changes records the batch's revision as
        its own; ``TenantUnchanged(tenant, R)`` holds while that is at most R
        (a tenant never changed is at 0).
        Raises InvalidArgument (the batch names one relationship or object
        twice; a tenant precondition names no tenant root), Aborted (a
        precondition failed), FailedPrecondition (a rule or constraint
        refused), Unavailable (the store cannot be reached).
        """
        ...

    def write_soon(
        self,
        ops: Sequence[Operation],
        preconditions: Sequence[WritePrecondition],
        rules: WriteRules | None,
        done: Callable[[Change | BaseException], None],
    ) -> None:
        """``write`` without a coroutine: ``done`` gets the change or the exception
        ``write`` would have raised, exactly once, on the event loop's thread
        (possibly before this returns). Called on the loop's thread.

        The short path of a single write (no task per call: on a busy server that
        is a tenth of the call's cost); a store that groups writes (Redis) answers
        every ``done`` of a group when the group's round trip is over."""
        ...

    def follow(self, after: int, epoch: str) -> AsyncIterator[Change]:
        """Every change above ``after``, in order, then new ones as they commit.

        Raises ChangelogGap when it cannot continue from ``after`` (trimmed) or
        ``check_history(after, epoch)`` fails — first, and again whenever the
        store can tell its history changed while following; Unavailable when
        unreachable.
        """
        ...

    async def close(self) -> None: ...
