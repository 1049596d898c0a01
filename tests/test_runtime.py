"""The runtime: the index follows the store, and reads can wait for a revision."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gatehouse.errors import FailedPrecondition, Unavailable
from gatehouse.graph.changes import Change, DeleteRelationship, TouchRelationship
from gatehouse.graph.memory import MemoryGraphStore
from gatehouse.graph.model import Relationship, Snapshot
from gatehouse.graph.store import ChangelogGap
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
from gatehouse.runtime.follower import touched_rows

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

    def test_a_revision_the_store_never_issued_is_refused_at_once(self) -> None:
        """A revision beyond the store's head is refused FAILED_PRECONDITION naming the
        field, without waiting (with or without a deadline): no wait would bring it."""
        async def scenario() -> tuple[str, str]:
            runtime = await Runtime.start(POLICY, MemoryGraphStore(), freshness_wait=30)
            try:
                out = []
                for timeout in (None, 20.0):
                    try:
                        await asyncio.wait_for(runtime.follower.ensure(
                            Consistency.at_least(999_999, "cursor"), timeout), 5)
                    except FailedPrecondition as exc:
                        out.append(str(exc))
                return out[0], out[1]
            finally:
                await runtime.close()

        first, second = asyncio.run(scenario())
        assert first == second
        assert first.startswith("cursor: revision 999999 is ahead of the store (at 0)")

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


class _ReplaceableStore(MemoryGraphStore):
    """The reference store, plus what a failover to a replica that missed writes does to
    a follower: its changelog stops continuing the index's history (``diverge``), and
    the snapshot to rebuild from takes as long as the test says (``gate``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.diverged = False

    async def snapshot(self) -> Snapshot:
        await self.gate.wait()
        self.diverged = False
        return await super().snapshot()

    async def follow(self, after: int, epoch: str) -> AsyncIterator[Change]:
        async for change in super().follow(after, epoch):
            if self.diverged:
                raise ChangelogGap("another history")
            yield change


class TestRebuildAfterAGap:
    def test_the_old_index_vouches_for_no_revision_while_it_is_rebuilt(self) -> None:
        """After a gap the old index still answers minimize-latency reads, but a read at a
        revision it had reached waits for the rebuilt index instead of trusting it."""
        async def scenario() -> list[bool]:
            store = _ReplaceableStore()
            runtime = await Runtime.start(POLICY, store)
            follower = runtime.follower
            try:
                await runtime.graph.write(touch("workspace:w#parent@organization:o"))
                rev = await runtime.graph.write(touch("workspace:w#admin@user:a"))
                await follower.ensure(Consistency.at_least(rev), 5)
                before = follower.fresh_enough(Consistency.at_least(rev))
                store.gate.clear()
                store.diverged = True
                await store.write(touch("workspace:w#admin@user:b"), (), POLICY.write_rules)
                for _ in range(100):  # until the follower has met the gap
                    if not follower.fresh_enough(Consistency.at_least(rev)):
                        break
                    await asyncio.sleep(0.01)
                during = follower.fresh_enough(Consistency.at_least(rev))
                waited = await follower.wait_for(rev, timeout=0.2)
                still_answers = runtime.decisions.check(
                    CheckInput("user", "a", "manage_members", "workspace", "w")).allowed
                store.gate.set()
                after = await follower.wait_for(rev + 1, timeout=5)
                sees_new = runtime.decisions.check(
                    CheckInput("user", "b", "manage_members", "workspace", "w")).allowed
                return [before, during, waited, still_answers, after, sees_new]
            finally:
                await runtime.close()

        assert asyncio.run(scenario()) == [True, False, False, True, True, True]


class _FlakyStore(MemoryGraphStore):
    """The reference store behind a connection that can drop (``cut``) and stay down
    (``down``): what a Redis restart does to a follower."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.cut = asyncio.Event()

    async def check_history(self, after: int, epoch: str) -> None:
        if self.down:
            raise Unavailable("the store is down")
        await super().check_history(after, epoch)

    async def follow(self, after: int, epoch: str) -> AsyncIterator[Change]:
        await self.check_history(after, epoch)
        await self.cut.wait()
        raise Unavailable("connection lost")
        yield  # an async generator that yields nothing before the cut


class TestStoreOutage:
    def test_a_revision_is_vouched_for_only_after_the_store_is_seen_again(self) -> None:
        """While the store is unreachable, a read at a revision the index holds fails
        UNAVAILABLE at once (the store may come back with another history) while
        minimize-latency reads still answer; once the follower has checked the store's
        history again, the same read answers."""
        async def scenario() -> list[object]:
            store = _FlakyStore()
            rev = (await store.write(touch("workspace:w#parent@organization:o"), (),
                                     POLICY.write_rules)).revision
            runtime = await Runtime.start(POLICY, store)
            follower = runtime.follower
            try:
                await follower.ensure(Consistency.at_least(rev), 5)
                store.down = True
                store.cut.set()
                for _ in range(500):
                    if not follower.store_healthy:
                        break
                    await asyncio.sleep(0.01)
                fresh_while_down = follower.fresh_enough(Consistency.at_least(rev))
                try:
                    await follower.ensure(Consistency.at_least(rev), 30)
                    while_down = "answered"
                except Unavailable as exc:
                    while_down = "unreachable" in str(exc)
                await follower.ensure(Consistency(), 5)  # minimize_latency: no wait
                store.cut = asyncio.Event()
                store.down = False
                for _ in range(500):  # the follower retries with back-off
                    if follower.store_healthy:
                        break
                    await asyncio.sleep(0.01)
                await follower.ensure(Consistency.at_least(rev), 5)
                return [fresh_while_down, while_down, follower.store_healthy]
            finally:
                await runtime.close()

        assert asyncio.run(scenario()) == [False, True, True]


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


class TestLargeChanges:
    def test_decisions_outside_a_large_change_do_not_wait_for_it(self) -> None:
        """While a large change is applied, a Check reading none of its rows answers
        without the lock; one reading them waits for the whole change."""
        async def scenario() -> tuple[bool, bool, bool, bool]:
            runtime = await Runtime.start(POLICY, MemoryGraphStore())
            try:
                for text in ("workspace:w1#parent@organization:o",
                             "workspace:w2#parent@organization:o",
                             "workspace:w1#admin@user:a", "workspace:w2#admin@user:a"):
                    await runtime.graph.write(touch(text))
                await runtime.follower.ensure(FULLY_CONSISTENT, 5)
                owners = [TouchRelationship(Relationship.parse(f"data_flow:f{i}#owner@user:b"))
                          for i in range(300)]
                change = Change(99, (*owners, DeleteRelationship(Relationship.parse(
                    "workspace:w1#admin@user:a"))))
                rows = touched_rows(change)
                assert rows is not None and "workspace:w1" in rows
                follower = runtime.follower
                other = CheckInput("user", "a", "view", "workspace", "w2")
                same = CheckInput("user", "a", "view", "workspace", "w1")
                answers: dict[str, bool] = {}

                def decide(name: str, req: CheckInput) -> None:
                    answers[name] = runtime.decisions.check(req).allowed

                with follower.lock:  # the follower applying the change holds this
                    follower._busy = rows
                    free = threading.Thread(target=decide, args=("other", other))
                    free.start()
                    free.join(10)
                    waiting = threading.Thread(target=decide, args=("same", same))
                    waiting.start()
                    waiting.join(0.3)
                    was_waiting = waiting.is_alive()
                    follower._busy = None
                waiting.join(10)
                return free.is_alive(), answers["other"], was_waiting, answers["same"]
            finally:
                await runtime.close()

        free_blocked, other_allowed, same_waited, same_allowed = asyncio.run(scenario())
        assert not free_blocked and other_allowed
        assert same_waited and same_allowed

    def test_a_move_announces_no_rows(self) -> None:
        """A change with a parent edge rewrites whole subtrees: no decision skips the lock."""
        change = Change(1, (TouchRelationship(Relationship.parse(
            "data_flow:f#parent@workspace:w")),))
        assert touched_rows(change) is None
