"""One contract, every store: the memory store (the reference) and Redis.

Each test runs against both; any difference a caller could see is a bug.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gatehouse.errors import Aborted, FailedPrecondition
from gatehouse.graph.changes import (
    Change,
    DeleteObject,
    DeleteRelationship,
    Operation,
    Precondition,
    PutObject,
    TouchRelationship,
)
from gatehouse.graph.memory import MemoryGraphStore
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.graph.redis import RedisGraphStore
from gatehouse.graph.store import ChangelogGap, GraphStore
from gatehouse.policy.constraints import Exclusive, MaxSubjects, Unique
from gatehouse.policy.rules import CHILD, GLOBAL, ROOT, WriteRules
from tests.redis_server import RedisServer

RULES = WriteRules(
    {"user": GLOBAL, "organization": ROOT, "workspace": CHILD, "flow": CHILD},
    (
        Exclusive("staff_or_client",
                  frozenset({"organization.owner", "organization.member"}),
                  frozenset({"workspace.client"})),
        Unique("one_ai_workspace", "workspace", "ai"),
        MaxSubjects("two_owners_at_most", "organization", "owner", 2),
    ),
)


def rel(text: str) -> Relationship:
    return Relationship.parse(text)


def touch(*texts: str) -> list[Operation]:
    return [TouchRelationship(rel(t)) for t in texts]


def delete(*texts: str) -> list[Operation]:
    return [DeleteRelationship(rel(t)) for t in texts]


BASE = touch(
    "workspace:w1#parent@organization:o1",
    "workspace:w2#parent@organization:o1",
    "workspace:x1#parent@organization:o2",
    "flow:f1#parent@workspace:w1",
)

Scenario = Callable[[GraphStore], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
def run(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Run a scenario against a fresh store of each kind."""

    def runner(scenario: Scenario, **kw: Any) -> None:
        async def main() -> None:
            store: GraphStore
            if request.param == "memory":
                store = MemoryGraphStore(**kw)
            else:
                server: RedisServer = request.getfixturevalue("redis_server")
                maxlen = kw.pop("changelog_limit", 1_000_000)
                store = RedisGraphStore(server.url, prefix=f"t{uuid.uuid4().hex[:8]}",
                                        changelog_maxlen=maxlen)
            try:
                await scenario(store)
            finally:
                await store.close()

        asyncio.run(main())

    runner.kind = request.param  # type: ignore[attr-defined]
    return runner


async def rels_of(store: GraphStore) -> set[str]:
    return {str(r) for r in (await store.snapshot()).all_relationships()}


async def refused(store: GraphStore, ops: list[Operation], name: str,
                  pre: list[Precondition] | None = None) -> str:
    """The write fails naming ``name`` and changes nothing."""
    before_rev = await store.head_revision()
    before = await rels_of(store)
    with pytest.raises((FailedPrecondition, Aborted)) as info:
        await store.write(ops, pre or [], RULES)
    if name == "precondition":
        assert isinstance(info.value, Aborted)
    else:
        assert isinstance(info.value, FailedPrecondition)
        assert info.value.rule == name, info.value
    assert await store.head_revision() == before_rev
    assert await rels_of(store) == before
    return str(info.value)


async def collect(it: AsyncIterator[Change], n: int) -> list[Change]:
    out = []
    async for change in it:
        out.append(change)
        if len(out) == n:
            break
    return out


class TestWrites:
    def test_each_write_is_one_revision_and_snapshot_shows_it(self, run: Any) -> None:
        """Revisions count up by one per write; a snapshot holds what was written."""
        async def go(store: GraphStore) -> None:
            assert await store.head_revision() == 0
            c1 = await store.write(BASE, (), RULES)
            c2 = await store.write([PutObject(ObjectRef("user", "u1"), {"email": "u1@x.io"}),
                                    *touch("organization:o1#owner@user:u1")], (), RULES)
            assert (c1.revision, c2.revision) == (1, 2)
            assert await store.head_revision() == 2
            snap = await store.snapshot()
            assert snap.revision == 2 and snap.epoch
            assert {str(r) for r in snap.all_relationships()} == {
                "workspace:w1#parent@organization:o1", "workspace:w2#parent@organization:o1",
                "workspace:x1#parent@organization:o2", "flow:f1#parent@workspace:w1",
                "organization:o1#owner@user:u1"}
            assert {(o.ref.key, o.attributes["email"]) for o in snap.objects} == \
                {("user:u1", "u1@x.io")}
        run(go)

    def test_touch_and_delete_are_idempotent(self, run: Any) -> None:
        """Touching twice or deleting what is absent succeeds and changes nothing more."""
        async def go(store: GraphStore) -> None:
            await store.write(BASE, (), RULES)
            await store.write(touch("workspace:w1#member@user:a"), (), RULES)
            await store.write(touch("workspace:w1#member@user:a"), (), RULES)
            await store.write(delete("workspace:w1#member@user:zz"), (), RULES)
            assert "workspace:w1#member@user:a" in await rels_of(store)
            await store.write(delete("workspace:w1#member@user:a"), (), RULES)
            assert "workspace:w1#member@user:a" not in await rels_of(store)
        run(go)

    def test_objects_put_replace_and_delete(self, run: Any) -> None:
        """Putting an object replaces all its attributes; deleting removes it."""
        async def go(store: GraphStore) -> None:
            await store.write(BASE, (), RULES)
            ref = ObjectRef("flow", "f1")
            await store.write([PutObject(ref, {"name": "a", "n": 1})], (), RULES)
            await store.write([PutObject(ref, {"name": "b"})], (), RULES)
            objs = {o.ref.key: dict(o.attributes) for o in (await store.snapshot()).objects}
            assert objs["flow:f1"] == {"name": "b"}
            await store.write([DeleteObject(ref)], (), RULES)
            assert "flow:f1" not in {o.ref.key for o in (await store.snapshot()).objects}
        run(go)

    def test_preconditions_abort_the_whole_batch(self, run: Any) -> None:
        """A precondition that does not hold aborts the write; nothing of it is applied."""
        async def go(store: GraphStore) -> None:
            await store.write(BASE, (), RULES)
            ops = touch("workspace:w1#member@user:b")
            await refused(store, ops, "precondition",
                          [Precondition(rel("workspace:w1#member@user:a"), must_exist=True)])
            await refused(store, ops, "precondition",
                          [Precondition(rel("workspace:w1#parent@organization:o1"),
                                        must_exist=False)])
            await store.write(ops, [Precondition(rel("workspace:w1#parent@organization:o1"),
                                                 must_exist=True)], RULES)
            assert "workspace:w1#member@user:b" in await rels_of(store)
        run(go)


class TestTenancy:
    def test_children_need_a_parent(self, run: Any) -> None:
        """A child object without a parent (stored or in the batch) is refused."""
        async def go(store: GraphStore) -> None:
            await refused(store, touch("flow:lost#owner@user:a"), "parent-required")
            await refused(store, [PutObject(ObjectRef("flow", "lost"), {})], "parent-required")
        run(go)

    def test_parents_in_one_batch_in_any_order(self, run: Any) -> None:
        """A batch may create a whole chain, children listed before their parents."""
        async def go(store: GraphStore) -> None:
            await store.write(touch("flow:f9#owner@user:a", "flow:f9#parent@workspace:w9",
                                    "workspace:w9#parent@organization:o9"), (), RULES)
            assert "flow:f9#owner@user:a" in await rels_of(store)
        run(go)

    def test_one_parent_and_moves_within_a_tenant(self, run: Any) -> None:
        """A second parent is refused; deleting the old one in the same batch moves it."""
        async def go(store: GraphStore) -> None:
            await store.write(BASE, (), RULES)
            await refused(store, touch("flow:f1#parent@workspace:w2"), "single-parent")
            await store.write(delete("flow:f1#parent@workspace:w1")
                              + touch("flow:f1#parent@workspace:w2"), (), RULES)
            assert "flow:f1#parent@workspace:w2" in await rels_of(store)
        run(go)

    def test_no_moves_across_tenants(self, run: Any) -> None:
        """An object never moves under another organization's parent."""
        async def go(store: GraphStore) -> None:
            await store.write(BASE, (), RULES)
            await refused(store, delete("flow:f1#parent@workspace:w1")
                          + touch("flow:f1#parent@workspace:x1"), "tenant-boundary")
        run(go)


class TestConstraints:
    def test_exclusive_roles_within_one_tenant(self, run: Any) -> None:
        """Staff cannot become clients in the same organization, nor clients staff."""
        async def go(store: GraphStore) -> None:
            await store.write(BASE, (), RULES)
            await store.write(touch("organization:o1#member@user:s"), (), RULES)
            msg = await refused(store, touch("workspace:w2#client@user:s"), "staff_or_client")
            assert "user:s" in msg and "workspace.client" in msg
            await store.write(touch("workspace:x1#client@user:s"), (), RULES)  # other tenant
            await store.write(touch("workspace:w1#client@user:c"), (), RULES)
            await refused(store, touch("organization:o1#owner@user:c"), "staff_or_client")
            await refused(store, touch("workspace:w2#client@user:n",
                                       "organization:o1#member@user:n"), "staff_or_client")
            # Swapping sides in one batch is fine.
            await store.write(delete("workspace:w1#client@user:c")
                              + touch("organization:o1#member@user:c"), (), RULES)
        run(go)

    def test_unique_relation_per_tenant(self, run: Any) -> None:
        """Only one workspace per organization holds `ai`; a swap in one batch works."""
        async def go(store: GraphStore) -> None:
            await store.write(BASE, (), RULES)
            await store.write(touch("workspace:w1#ai@user:bot"), (), RULES)
            await store.write(touch("workspace:w1#ai@user:bot2"), (), RULES)  # same workspace
            await refused(store, touch("workspace:w2#ai@user:bot"), "one_ai_workspace")
            await store.write(touch("workspace:x1#ai@user:bot"), (), RULES)  # other tenant
            await store.write(delete("workspace:w1#ai@user:bot", "workspace:w1#ai@user:bot2")
                              + touch("workspace:w2#ai@user:bot"), (), RULES)
            assert "workspace:w2#ai@user:bot" in await rels_of(store)
        run(go)

    def test_max_subjects(self, run: Any) -> None:
        """At most two owners per organization; the third is refused naming the limit."""
        async def go(store: GraphStore) -> None:
            await store.write(BASE, (), RULES)
            await store.write(touch("organization:o1#owner@user:a",
                                    "organization:o1#owner@user:b"), (), RULES)
            msg = await refused(store, touch("organization:o1#owner@user:c"),
                                "two_owners_at_most")
            assert "at most 2" in msg
            await store.write(delete("organization:o1#owner@user:a")
                              + touch("organization:o1#owner@user:c"), (), RULES)
        run(go)


class TestChangelog:
    def test_follow_yields_effective_changes_in_order(self, run: Any) -> None:
        """Following from a revision yields each later change once, in order, then live ones."""
        async def go(store: GraphStore) -> None:
            await store.write(BASE, (), RULES)
            snap = await store.snapshot()
            await store.write(touch("workspace:w1#member@user:a"), (), RULES)
            await store.write(touch("workspace:w1#member@user:a"), (), RULES)  # no-op
            follower = store.follow(1, snap.epoch)
            first = await collect(follower, 2)
            assert [c.revision for c in first] == [2, 3]
            assert [str(op.relationship) for op in first[0].ops
                    if isinstance(op, TouchRelationship)] == ["workspace:w1#member@user:a"]
            assert first[1].ops == ()  # touching what exists changes nothing
            live = asyncio.ensure_future(collect(store.follow(3, snap.epoch), 1))
            await asyncio.sleep(0.05)
            await store.write(delete("workspace:w1#member@user:a"), (), RULES)
            (change,) = await asyncio.wait_for(live, 5)
            assert change.revision == 4
            assert isinstance(change.ops[0], DeleteRelationship)
        run(go)

    def test_follow_detects_a_trimmed_changelog(self, run: Any) -> None:
        """A follower asking for revisions the changelog no longer holds gets ChangelogGap."""
        async def go(store: GraphStore) -> None:
            await store.write(BASE, (), RULES)
            epoch = (await store.snapshot()).epoch
            for i in range(5):
                await store.write(touch(f"workspace:w1#member@user:u{i}"), (), RULES)
            if isinstance(store, RedisGraphStore):
                await store.client.xtrim(f"{store.prefix}:log", maxlen=2, approximate=False)
            with pytest.raises(ChangelogGap):
                await collect(store.follow(1, epoch), 1)
        run(go, changelog_limit=2)

    def test_follow_detects_a_new_epoch(self, run: Any) -> None:
        """A follower holding another epoch (data lost or replaced) gets ChangelogGap."""
        async def go(store: GraphStore) -> None:
            await store.write(BASE, (), RULES)
            with pytest.raises(ChangelogGap):
                await asyncio.wait_for(collect(store.follow(0, "not-the-epoch"), 1), 5)
        run(go)
