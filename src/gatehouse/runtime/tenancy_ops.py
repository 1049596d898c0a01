"""Tenancy operations: decide at a revision, commit if the tenant is unchanged, retry.

Each operation of :mod:`gatehouse.tenancy` is a pure function of a
:class:`~gatehouse.tenancy.context.Context` (one view of the graph) that
returns a :class:`~gatehouse.tenancy.commit.Commit`. This runner catches
the index up to the store, decides, and writes the commit with
``TenantUnchanged(tenant, revision)`` preconditions: if anything touched the
tenant after the revision the decision read, the store refuses the write
and the operation decides again on the newer graph. So every rule an
operation checks — the actor's permission, a plan limit, a free slug, a
pending invitation — holds at the revision the write commits at.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import TypeVar

from gatehouse.errors import Aborted
from gatehouse.graph.changes import TenantUnchanged, WritePrecondition
from gatehouse.limits import LIMITS
from gatehouse.runtime.consistency import FULLY_CONSISTENT
from gatehouse.runtime.follower import IndexFollower
from gatehouse.runtime.usage_ops import UsageOperations
from gatehouse.tenancy.commit import Commit
from gatehouse.tenancy.context import Context

T = TypeVar("T")

# Attempts before a conflicting operation gives up with ABORTED; the back-off
# between them grows from about 1 ms, so they span a few hundred milliseconds.
MAX_ATTEMPTS = 10


class TenancyOperations:
    """Runs tenancy decisions against the live graph."""

    def __init__(self, follower: IndexFollower, usage: UsageOperations | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.follower = follower
        self.usage = usage
        self.clock = clock
        self.conflicts = 0
        """Commits refused because the tenant changed meanwhile (each retried)."""

    def _context(self) -> Context:
        view = self.follower.view()
        facts = (self.usage.facts_source(view.policy, view.index)
                 if self.usage is not None else None)
        return Context(view.policy, view.index, self.clock(), facts)

    async def read(self, decide: Callable[[Context], T]) -> T:
        """A read-only operation, from a view at least as fresh as the store's head."""
        await self.follower.ensure(FULLY_CONSISTENT, LIMITS.freshness_wait_seconds)
        return decide(self._context())

    async def run(self, decide: Callable[[Context], Commit[T]]) -> T:
        """Decide and commit, again while the tenant keeps changing underneath."""
        for attempt in range(MAX_ATTEMPTS):
            await self.follower.ensure(FULLY_CONSISTENT, LIMITS.freshness_wait_seconds)
            ctx = self._context()
            commit = decide(ctx)
            if not commit.ops:
                return commit.answer(ctx.revision)
            pres: list[WritePrecondition] = [*commit.preconditions]
            pres.extend(TenantUnchanged(t, ctx.revision) for t in commit.tenants)
            try:
                change = await self.follower.store.write(commit.ops, pres,
                                                         ctx.policy.write_rules)
            except Aborted:
                self.conflicts += 1
                await asyncio.sleep(random.uniform(0.0, 0.001 * 2 ** attempt))
                continue
            return commit.answer(change.revision)
        raise Aborted("the organization kept changing while the operation was decided "
                      f"({MAX_ATTEMPTS} attempts); nothing was written, retry")
