"""The runtime: the index follows the store, and reads can wait for a revision."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from gatehouse.errors import Unavailable
from gatehouse.graph.changes import TouchRelationship
from gatehouse.graph.memory import MemoryGraphStore
from gatehouse.graph.model import Relationship
from gatehouse.policy import load_policy
from gatehouse.policy.model import CompiledPolicy
from gatehouse.runtime import (
    FULLY_CONSISTENT,
    CheckInput,
    Consistency,
    IndexFollower,
    PolicyReloader,
    Runtime,
)

ROOT = Path(__file__).resolve().parent.parent
POLICY = load_policy(ROOT / "policies/coupler")


def touch(text: str) -> list[TouchRelationship]:
    return [TouchRelationship(Relationship.parse(text))]


class TestFollowing:
    def test_wait_for_returns_when_the_follower_applies_the_revision(self) -> None:
        """A reader waiting for a write's revision wakes once the index has it, and sees it."""
        async def scenario() -> tuple[bool, bool, bool]:
            runtime = await Runtime.start(POLICY, MemoryGraphStore())
            try:
                too_early = await runtime.follower.wait_for(1, timeout=0.05)
                waiter = asyncio.create_task(runtime.follower.wait_for(2, timeout=5))
                await runtime.graph.write(touch("workspace:w#parent@organization:o"))
                rev = await runtime.graph.write(touch("workspace:w#admin@user:a"))
                reached = await waiter
                await runtime.follower.ensure(Consistency.at_least(rev), 5)
                out = runtime.decisions.check(
                    CheckInput("user", "a", "manage_members", "workspace", "w"))
                return too_early, reached, out.allowed
            finally:
                await runtime.close()

        assert asyncio.run(scenario()) == (False, True, True)

    def test_a_revision_never_reached_fails_even_without_a_deadline(self) -> None:
        """No deadline does not mean waiting forever: UNAVAILABLE after freshness_wait."""
        async def scenario() -> str:
            runtime = await Runtime.start(POLICY, MemoryGraphStore(), freshness_wait=0.2)
            try:
                await asyncio.wait_for(
                    runtime.follower.ensure(Consistency.at_least(999_999), None), 5)
            except Unavailable as exc:
                return str(exc)
            finally:
                await runtime.close()
            return "answered"

        assert "not yet at 999999" in asyncio.run(scenario())

    def test_fully_consistent_waits_for_the_store_head(self) -> None:
        """A fully consistent read answers at or after the store's newest revision."""
        async def scenario() -> tuple[int, int]:
            store = MemoryGraphStore()
            runtime = await Runtime.start(POLICY, store)
            try:
                await store.write(touch("workspace:w#parent@organization:o"), (),
                                  POLICY.write_rules)
                await runtime.follower.ensure(FULLY_CONSISTENT, 5)
                return runtime.follower.revision, await store.head_revision()
            finally:
                await runtime.close()

        index_rev, head = asyncio.run(scenario())
        assert index_rev == head == 1


class TestPolicyReloader:
    def test_a_crashing_compile_is_logged_and_watching_goes_on(
            self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """A compiler that raises (not PolicyError) on one edit does not stop the watcher:
        the next edit that compiles is swapped in."""
        folder = tmp_path / "policy"
        shutil.copytree(ROOT / "policies/coupler", folder)
        calls: list[int] = []
        swapped = asyncio.Event()

        def load(path: Path) -> CompiledPolicy:
            calls.append(1)
            if len(calls) == 1:
                raise RecursionError("a compiler bug")
            return load_policy(path)

        async def scenario() -> tuple[str, str, int]:
            follower = await IndexFollower.start(MemoryGraphStore(), POLICY)
            reloader = PolicyReloader(follower, folder, load)
            original = follower.set_policy

            def set_policy(policy: CompiledPolicy) -> None:
                original(policy)
                swapped.set()

            follower.set_policy = set_policy  # type: ignore[method-assign]
            task = asyncio.create_task(reloader.watch(interval=0.02))
            await asyncio.sleep(0)  # the task takes the folder's signature before any edit
            try:
                policy_file = folder / "policy.yaml"
                policy_file.write_text(policy_file.read_text() + "\n# first edit\n")
                async with asyncio.timeout(10):
                    while not calls:  # the first edit was compiled (and crashed)
                        await asyncio.sleep(0.01)
                policy_file.write_text(policy_file.read_text() + "\n# second edit\n")
                await asyncio.wait_for(swapped.wait(), 10)
                return POLICY.version, follower.policy.version, reloader.failures
            finally:
                task.cancel()
                await follower.close()

        old, new, failures = asyncio.run(scenario())
        assert new != old and failures == 1
        assert "policy reload failed" in caplog.text
