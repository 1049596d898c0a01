"""The live state a server decides from: current policy, store and index.

This is where requests meet state: it resolves consistency (waiting for the
index when asked to), holds the policy that hot reloads swap atomically, and
calls the pure engine. The API layer translates protobuf to these calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatehouse import engine
from gatehouse.errors import GatehouseError, InvalidArgument, PolicyError, Unavailable
from gatehouse.graph.changes import Change, Operation
from gatehouse.graph.index import GraphIndex
from gatehouse.graph.store import GraphStore
from gatehouse.policy.loader import load_policy, policy_files
from gatehouse.policy.model import CompiledPolicy

log = logging.getLogger("gatehouse.runtime")


@dataclass(frozen=True, slots=True)
class Consistency:
    """How fresh the index must be before answering."""

    mode: str = "minimize_latency"  # or "at_least_as_fresh", "fully_consistent"
    revision: int = 0

    @classmethod
    def at_least(cls, text: str, field: str) -> Consistency:
        if not text.isdigit() or len(text) > 20 or int(text) >= 2**64:
            raise InvalidArgument(field, f"{text!r} is not a revision (a decimal uint64)")
        return cls("at_least_as_fresh", int(text))


@dataclass(frozen=True, slots=True)
class CheckInput:
    subject_type: str
    subject_id: str
    action: str
    resource_type: str
    resource_id: str
    context: Mapping[str, Any] | None = None
    explain: bool = False


@dataclass(frozen=True, slots=True)
class CheckOutput:
    allowed: bool
    revision: int
    policy_version: str
    explanation: engine.Explanation | None = None


class Runtime:
    """Policy + store + index of one server process."""

    def __init__(self, policy: CompiledPolicy, store: GraphStore, index: GraphIndex,
                 policy_dir: Path | None = None) -> None:
        self._policy = policy
        self.store = store
        self.index = index
        self.policy_dir = policy_dir
        store.subscribe(self._on_change)

    @classmethod
    async def start(cls, policy: CompiledPolicy, store: GraphStore,
                    policy_dir: Path | None = None) -> Runtime:
        index = GraphIndex.from_snapshot(await store.snapshot())
        return cls(policy, store, index, policy_dir)

    @property
    def policy(self) -> CompiledPolicy:
        return self._policy

    def _on_change(self, change: Change) -> None:
        self.index.apply([change])

    async def write(self, ops: Sequence[Operation]) -> int:
        change = await self.store.write(ops)
        return change.revision

    # -- consistency --------------------------------------------------------

    async def ensure(self, consistency: Consistency, timeout: float | None) -> None:
        """Bring the index to the freshness asked for, within ``timeout`` seconds."""
        if consistency.mode == "minimize_latency":
            return
        if consistency.mode == "fully_consistent":
            try:
                target = await self.store.head_revision()
            except GatehouseError:
                raise
            except Exception as exc:
                raise Unavailable(f"store unavailable: {exc}") from exc
        else:
            target = consistency.revision
        if not await self.index.wait_for(target, timeout):
            raise Unavailable(
                f"index is at revision {self.index.revision}, not yet at {target}; "
                "retry, or ask with a longer deadline"
            )

    # -- decisions ----------------------------------------------------------

    def check(self, req: CheckInput, prefix: str = "") -> CheckOutput:
        policy = self._policy
        index = self.index
        subject, resource = engine.validate_request(
            policy, req.subject_type, req.subject_id, req.action, req.resource_type,
            req.resource_id, prefix,
        )
        if req.explain:
            exp = engine.explain(policy, index, subject, req.action, req.resource_type,
                                 resource, req.context)
            return CheckOutput(exp.allowed, index.revision, policy.version, exp)
        allowed = engine.check(policy, index, subject, req.action, req.resource_type, resource,
                               req.context)
        return CheckOutput(allowed, index.revision, policy.version)

    def check_many(self, reqs: Sequence[CheckInput]) -> list[CheckOutput | GatehouseError]:
        """Decide each request against one policy and one revision, in order."""
        out: list[CheckOutput | GatehouseError] = []
        for i, req in enumerate(reqs):
            try:
                out.append(self.check(req, prefix=f"items[{i}]."))
            except GatehouseError as exc:
                out.append(exc)
        return out

    # -- policy reload ------------------------------------------------------

    def _signature(self) -> tuple[tuple[str, int, int], ...]:
        assert self.policy_dir is not None
        try:
            return tuple(
                (p.name, p.stat().st_mtime_ns, p.stat().st_size)
                for p in policy_files(self.policy_dir)
            )
        except OSError:
            return ()

    async def watch_policy(self, interval: float = 1.0) -> None:
        """Poll the policy folder; swap in a new policy when it compiles.

        A broken edit is logged with every problem and the last good policy
        keeps serving.
        """
        if self.policy_dir is None:
            return
        seen = self._signature()
        while True:
            await asyncio.sleep(interval)
            sig = self._signature()
            if sig == seen:
                continue
            seen = sig
            new = await asyncio.to_thread(self._compile)
            if new is not None:
                self._swap(new)

    def reload_policy(self) -> bool:
        """Recompile the policy folder now. True if the new policy is serving."""
        new = self._compile()
        if new is None:
            return False
        self._swap(new)
        return True

    def _compile(self) -> CompiledPolicy | None:
        assert self.policy_dir is not None
        try:
            return load_policy(self.policy_dir)
        except PolicyError as exc:
            log.error("policy reload rejected; still serving %s", self._policy.version,
                      extra={"problems": [str(p) for p in exc.problems]})
            return None

    def _swap(self, new: CompiledPolicy) -> None:
        if new.version != self._policy.version:
            log.info("policy reloaded", extra={"old_version": self._policy.version,
                                               "policy_version": new.version})
        self._policy = new
