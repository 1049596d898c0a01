"""The live side of one server process, one object per job.

::

    Runtime
    ├── follower   IndexFollower   owns the index, the policy in force and their lock;
    │                              follows the changelog; consistency waits; Watch fan-out
    ├── reloader   PolicyReloader  recompiles the policy folder on change, swaps it in
    ├── decisions  Decisions       Check, CheckBulk, ListAccessible (pure engine calls)
    ├── graph      GraphOperations GraphService writes and reads
    ├── usage      UsageOperations ComputeUsage, RecordUsage, CheckLimit and their caches
    └── tenancy    TenancyOperations  lifecycle operations: decide at a revision, commit if
                                   the organization is unchanged, else decide again

The API layer calls these parts; only the follower writes the index and
the policy (the reloader asks it to).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gatehouse.graph.store import GraphStore
from gatehouse.limits import LIMITS
from gatehouse.policy.model import CompiledPolicy
from gatehouse.runtime.consistency import (
    FULLY_CONSISTENT,
    MINIMIZE_LATENCY,
    Consistency,
    Mode,
    parse_revision,
)
from gatehouse.runtime.decisions import (
    BulkOutput,
    CheckInput,
    CheckOutput,
    Decisions,
    ListInput,
    ListOutput,
)
from gatehouse.runtime.follower import IndexFollower, View
from gatehouse.runtime.graph_ops import GraphOperations
from gatehouse.runtime.reloader import PolicyReloader
from gatehouse.runtime.tenancy_ops import TenancyOperations
from gatehouse.runtime.usage_ops import EventInput, UsageOperations
from gatehouse.usage.events import DEDUP_WINDOW_SECONDS, UsageStore
from gatehouse.usage.memory import MemoryUsageStore


@dataclass(frozen=True, slots=True)
class Runtime:
    """The parts, wired together; built by ``start``, ended by ``close``."""

    follower: IndexFollower
    reloader: PolicyReloader | None
    decisions: Decisions
    graph: GraphOperations
    usage: UsageOperations
    tenancy: TenancyOperations

    @classmethod
    async def start(cls, policy: CompiledPolicy, store: GraphStore,
                    policy_dir: Path | None = None, usage_store: UsageStore | None = None,
                    dedup_window: int = DEDUP_WINDOW_SECONDS,
                    freshness_wait: float = LIMITS.freshness_wait_seconds) -> Runtime:
        """Build the index from a snapshot and start following the changelog."""
        follower = await IndexFollower.start(store, policy, freshness_wait)
        usage = UsageOperations(follower, usage_store or MemoryUsageStore(), dedup_window)
        return cls(
            follower=follower,
            reloader=PolicyReloader(follower, policy_dir) if policy_dir is not None else None,
            decisions=Decisions(follower),
            graph=GraphOperations(follower),
            usage=usage,
            tenancy=TenancyOperations(follower, usage),
        )

    async def close(self) -> None:
        await self.follower.close()
        await self.follower.store.close()
        await self.usage.store.close()


__all__ = [
    "FULLY_CONSISTENT",
    "MINIMIZE_LATENCY",
    "BulkOutput",
    "CheckInput",
    "CheckOutput",
    "Consistency",
    "Decisions",
    "EventInput",
    "GraphOperations",
    "IndexFollower",
    "ListInput",
    "ListOutput",
    "Mode",
    "PolicyReloader",
    "Runtime",
    "TenancyOperations",
    "UsageOperations",
    "View",
    "parse_revision",
]
