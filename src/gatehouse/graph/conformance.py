"""The graph store contract as an importable suite: one set of scenarios, every backend.

A backend passes when every scenario in :data:`SCENARIOS` runs without an
AssertionError against stores its :class:`Backend` opens. The memory store is
the reference: any difference a caller could see through
:class:`~gatehouse.graph.store.GraphStore` is a bug in the other store,
unless it is written down in the backend's ``exceptions`` with a reason.

Run it from a test runner::

    backend = MemoryBackend()
    for scenario in SCENARIOS:
        asyncio.run(run_scenario(backend, scenario))

``tests/graph/test_store_conformance.py`` runs it against the memory store
and Redis. Scenarios use plain ``assert`` and no test framework.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType

from gatehouse.errors import Aborted, FailedPrecondition, GatehouseError, InvalidArgument
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
from gatehouse.graph.store import ChangelogGap, GraphStore
from gatehouse.policy.rules import CHILD, GLOBAL, ROOT, Exclusive, MaxSubjects, Unique, WriteRules

# A small tenancy model: users are global, organizations are tenants, workspaces
# live in an organization and flows in a workspace.
RULES = WriteRules(
    MappingProxyType({"user": GLOBAL, "organization": ROOT, "workspace": CHILD,
                      "flow": CHILD}),
    (
        Exclusive("staff_or_client",
                  frozenset({"organization.owner", "organization.member"}),
                  frozenset({"workspace.client"})),
        Unique("one_ai_workspace", "workspace", "ai"),
        MaxSubjects("two_owners_at_most", "organization", "owner", 2),
    ),
    MappingProxyType({
        "user": frozenset(),
        "organization": frozenset({"owner", "member", "ai_workspace"}),
        "workspace": frozenset({"parent", "member", "client", "ai"}),
        "flow": frozenset({"parent", "owner", "uses"}),
    }),
)


class Backend:
    """How the suite opens stores of one kind. Extension point: subclass per backend."""

    name = "backend"
    # scenario name -> why this backend differs there (the scenario is not run).
    exceptions: Mapping[str, str] = MappingProxyType({})

    def open(self, changelog_limit: int | None = None
             ) -> AbstractAsyncContextManager[GraphStore]:
        """A fresh, empty store, closed on exit."""
        raise NotImplementedError

    async def trim_changelog(self, store: GraphStore, keep: int) -> None:
        """Make the changelog hold at most its newest ``keep`` entries.

        Stores opened with ``changelog_limit`` trim on their own; one that
        trims only approximately does it exactly here.
        """


class MemoryBackend(Backend):
    """The reference backend."""

    name = "memory"

    @asynccontextmanager
    async def open(self, changelog_limit: int | None = None) -> AsyncIterator[GraphStore]:
        store = (MemoryGraphStore(changelog_limit) if changelog_limit
                 else MemoryGraphStore())
        try:
            yield store
        finally:
            await store.close()


class RedisBackend(Backend):
    """Stores in one Redis (or Valkey), each under a fresh key prefix."""

    name = "redis"

    def __init__(self, url: str) -> None:
        self.url = url

    @asynccontextmanager
    async def open(self, changelog_limit: int | None = None) -> AsyncIterator[GraphStore]:
        from gatehouse.graph.redis import CHANGELOG_MAXLEN, RedisGraphStore

        store = RedisGraphStore(self.url, prefix=f"t{uuid.uuid4().hex[:10]}",
                                changelog_maxlen=changelog_limit or CHANGELOG_MAXLEN)
        try:
            yield store
        finally:
            await store.close()

    async def trim_changelog(self, store: GraphStore, keep: int) -> None:
        # XADD trims with MAXLEN ~ (whole stream nodes only); trim exactly here.
        from gatehouse.graph.redis import RedisGraphStore

        assert isinstance(store, RedisGraphStore)
        await store.client.xtrim(f"{store.prefix}:log", maxlen=keep, approximate=False)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One behaviour every store must show; ``doc`` says which, in one sentence."""

    name: str
    doc: str
    run: Callable[[Backend], Awaitable[None]]
    changelog_limit: int | None = None


SCENARIOS: list[Scenario] = []


def scenario(changelog_limit: int | None = None
             ) -> Callable[[Callable[[GraphStore, Backend], Awaitable[None]]],
                           Callable[[GraphStore, Backend], Awaitable[None]]]:
    """Register ``fn(store, backend)`` as a scenario run on a fresh store."""

    def register(fn: Callable[[GraphStore, Backend], Awaitable[None]]
                 ) -> Callable[[GraphStore, Backend], Awaitable[None]]:
        async def run(backend: Backend) -> None:
            async with backend.open(changelog_limit) as store:
                await fn(store, backend)

        doc = " ".join((fn.__doc__ or "").split())
        SCENARIOS.append(Scenario(fn.__name__, doc, run, changelog_limit))
        return fn

    return register


async def run_scenario(backend: Backend, item: Scenario) -> None:
    """Run one scenario against ``backend`` (the caller skips its exceptions)."""
    await item.run(backend)


def unknown_exceptions(backend: Backend) -> list[str]:
    """Exceptions naming no scenario (a renamed scenario must not hide a difference)."""
    names = {s.name for s in SCENARIOS}
    return sorted(set(backend.exceptions) - names)


# -- helpers ---------------------------------------------------------------------


def rel(text: str) -> Relationship:
    return Relationship.parse(text)


def touch(*texts: str) -> list[Operation]:
    return [TouchRelationship(rel(t)) for t in texts]


def delete(*texts: str) -> list[Operation]:
    return [DeleteRelationship(rel(t)) for t in texts]


def obj(text: str) -> ObjectRef:
    return ObjectRef.parse(text)


BASE = touch(
    "workspace:w1#parent@organization:o1",
    "workspace:w2#parent@organization:o1",
    "workspace:x1#parent@organization:o2",
    "flow:f1#parent@workspace:w1",
)


async def rels_of(store: GraphStore) -> set[str]:
    return {str(r) for r in (await store.snapshot()).all_relationships()}


async def objects_of(store: GraphStore) -> dict[str, dict[str, object]]:
    return {o.ref.key: dict(o.attributes) for o in (await store.snapshot()).objects}


async def refused(store: GraphStore, ops: Sequence[Operation], name: str,
                  pre: Sequence[Precondition] = ()) -> str:
    """The write fails with ``name`` (a rule; "precondition"; "invalid") and changes nothing."""
    before_rev = await store.head_revision()
    before = (await rels_of(store), await objects_of(store))
    try:
        await store.write(ops, pre, RULES)
    except GatehouseError as exc:
        error: GatehouseError = exc
    else:
        raise AssertionError(f"the write was accepted; expected {name!r}")
    if name == "precondition":
        assert isinstance(error, Aborted), repr(error)
    elif name == "invalid":
        assert isinstance(error, InvalidArgument), repr(error)
    else:
        assert isinstance(error, FailedPrecondition), repr(error)
        assert error.rule == name, error
    assert await store.head_revision() == before_rev
    assert (await rels_of(store), await objects_of(store)) == before
    return str(error)


async def collect(it: AsyncIterator[Change], n: int) -> list[Change]:
    out = []
    async for change in it:
        out.append(change)
        if len(out) == n:
            break
    return out


# -- writes ----------------------------------------------------------------------


@scenario()
async def each_write_is_one_revision(store: GraphStore, backend: Backend) -> None:
    """Revisions count up by one per write; a snapshot holds what was written."""
    assert await store.head_revision() == 0
    c1 = await store.write(BASE, (), RULES)
    c2 = await store.write([PutObject(obj("user:u1"), {"email": "u1@x.io"}),
                            *touch("organization:o1#owner@user:u1")], (), RULES)
    assert (c1.revision, c2.revision) == (1, 2)
    assert await store.head_revision() == 2
    snap = await store.snapshot()
    assert snap.revision == 2 and snap.epoch
    assert {str(r) for r in snap.all_relationships()} == {
        "workspace:w1#parent@organization:o1", "workspace:w2#parent@organization:o1",
        "workspace:x1#parent@organization:o2", "flow:f1#parent@workspace:w1",
        "organization:o1#owner@user:u1"}
    assert {(o.ref.key, o.attributes["email"]) for o in snap.objects} == {("user:u1", "u1@x.io")}


@scenario()
async def touch_and_delete_are_idempotent(store: GraphStore, backend: Backend) -> None:
    """Touching twice or deleting what is absent succeeds and changes nothing more."""
    await store.write(BASE, (), RULES)
    await store.write(touch("workspace:w1#member@user:a"), (), RULES)
    await store.write(touch("workspace:w1#member@user:a"), (), RULES)
    await store.write(delete("workspace:w1#member@user:zz"), (), RULES)
    assert "workspace:w1#member@user:a" in await rels_of(store)
    await store.write(delete("workspace:w1#member@user:a"), (), RULES)
    assert "workspace:w1#member@user:a" not in await rels_of(store)


@scenario()
async def a_batch_that_changes_nothing_commits_nothing(store: GraphStore,
                                                      backend: Backend) -> None:
    """A batch with no effect (delete of nothing, touch of what exists, the same attributes
    again, delete of an absent object) answers the current revision and logs nothing."""
    await store.write(BASE, (), RULES)
    await store.write([PutObject(obj("flow:f1"), {"n": 1})], (), RULES)
    head = await store.head_revision()
    assert head == 2
    for ops in (delete("workspace:w1#member@user:nobody"),
                touch("workspace:w1#parent@organization:o1"),
                [PutObject(obj("flow:f1"), {"n": 1})],
                [DeleteObject(obj("user:ghost"))],
                delete("flow:homeless#owner@user:a")):
        change = await store.write(ops, (), RULES)
        assert (change.revision, change.ops) == (head, ()), ops
    assert await store.head_revision() == head
    # The changelog holds no entry for them: the next write is head + 1, right after.
    await store.write(touch("workspace:w1#member@user:a"), (), RULES)
    epoch = (await store.snapshot()).epoch
    (change,) = await asyncio.wait_for(collect(store.follow(head, epoch), 1), 10)
    assert change.revision == head + 1
    # The same attributes with another JSON type (1.0, true) are a change.
    assert (await store.write([PutObject(obj("flow:f1"), {"n": 1.0})], (), RULES)).revision \
        == head + 2


@scenario()
async def a_batch_names_each_target_once(store: GraphStore, backend: Backend) -> None:
    """Two operations on one relationship or object in one batch are refused as malformed."""
    await store.write(BASE, (), RULES)
    msg = await refused(store, touch("workspace:w1#member@user:a",
                                     "workspace:w1#member@user:b",
                                     "workspace:w1#member@user:a"), "invalid")
    assert "updates[2]" in msg and "updates[0]" in msg and "workspace:w1#member@user:a" in msg
    await refused(store, touch("workspace:w1#member@user:a")
                  + delete("workspace:w1#member@user:a"), "invalid")
    await refused(store, [PutObject(obj("flow:f1"), {"n": 1}),
                          PutObject(obj("flow:f1"), {"n": 2})], "invalid")
    # Creating twice (touch + must-not-exist precondition) is refused the same way.
    await refused(store, touch("workspace:w1#member@user:c", "workspace:w1#member@user:c"),
                  "invalid", [Precondition(rel("workspace:w1#member@user:c"), False)])


@scenario()
async def objects_put_replace_and_delete(store: GraphStore, backend: Backend) -> None:
    """Putting an object replaces all its attributes; deleting an unreferenced one removes it."""
    await store.write(touch("organization:o1#member@user:u"), (), RULES)
    ref = obj("organization:o9")
    await store.write([PutObject(ref, {"name": "a", "n": 1})], (), RULES)
    await store.write([PutObject(ref, {"name": "b"})], (), RULES)
    assert (await objects_of(store))["organization:o9"] == {"name": "b"}
    await store.write([DeleteObject(ref)], (), RULES)
    assert "organization:o9" not in await objects_of(store)


@scenario()
async def deleting_a_referenced_object_is_refused(store: GraphStore, backend: Backend) -> None:
    """An object still in relationships (as resource or subject, in any tenant) cannot be
    deleted; deleting those relationships in the same batch makes it possible."""
    await store.write(BASE, (), RULES)
    await store.write([PutObject(obj("user:u"), {"email": "u@x.io"}),
                       PutObject(obj("organization:o1"), {"plan": "pro"}),
                       *touch("organization:o1#owner@user:u", "workspace:x1#member@user:u")],
                      (), RULES)
    msg = await refused(store, [DeleteObject(obj("user:u"))], "object-in-use")
    assert "user:u" in msg and "2 relationship(s)" in msg
    # The organization: its owner (as resource) and two workspaces' parent edges (as subject).
    msg = await refused(store, [DeleteObject(obj("organization:o1"))], "object-in-use")
    assert "organization:o1" in msg and "3 relationship(s)" in msg
    # A workspace that is only a subject (its flow's parent) and a resource (its parent).
    await refused(store, [DeleteObject(obj("workspace:w1"))], "object-in-use")
    # Removing the user's relationships in the same batch lets it go.
    await store.write([*delete("organization:o1#owner@user:u", "workspace:x1#member@user:u"),
                       DeleteObject(obj("user:u"))], (), RULES)
    assert "user:u" not in await objects_of(store)


@scenario()
async def preconditions_abort_the_whole_batch(store: GraphStore, backend: Backend) -> None:
    """A precondition that does not hold aborts the write; nothing of it is applied."""
    await store.write(BASE, (), RULES)
    ops = touch("workspace:w1#member@user:b")
    await refused(store, ops, "precondition",
                  [Precondition(rel("workspace:w1#member@user:a"), must_exist=True)])
    await refused(store, ops, "precondition",
                  [Precondition(rel("workspace:w1#parent@organization:o1"), must_exist=False)])
    await store.write(ops, [Precondition(rel("workspace:w1#parent@organization:o1"),
                                         must_exist=True)], RULES)
    assert "workspace:w1#member@user:b" in await rels_of(store)


# -- tenancy ---------------------------------------------------------------------


@scenario()
async def children_need_a_parent(store: GraphStore, backend: Backend) -> None:
    """A child object without a parent (stored or in the batch) is refused, as a resource,
    with attributes, or as the subject of a relationship."""
    await store.write(BASE, (), RULES)
    await refused(store, touch("flow:lost#owner@user:a"), "parent-required")
    await refused(store, [PutObject(obj("flow:lost"), {})], "parent-required")
    await refused(store, touch("organization:o1#ai_workspace@workspace:nowhere"),
                  "parent-required")


@scenario()
async def parents_in_one_batch_in_any_order(store: GraphStore, backend: Backend) -> None:
    """A batch may create a whole chain, children listed before their parents."""
    await store.write(touch("flow:f9#owner@user:a", "organization:o9#ai_workspace@workspace:w9",
                            "flow:f9#parent@workspace:w9",
                            "workspace:w9#parent@organization:o9"), (), RULES)
    assert "flow:f9#owner@user:a" in await rels_of(store)


@scenario()
async def one_parent_and_moves_within_a_tenant(store: GraphStore, backend: Backend) -> None:
    """A second parent is refused; deleting the old one in the same batch moves it."""
    await store.write(BASE, (), RULES)
    await refused(store, touch("flow:f1#parent@workspace:w2"), "single-parent")
    await store.write(delete("flow:f1#parent@workspace:w1")
                      + touch("flow:f1#parent@workspace:w2"), (), RULES)
    assert "flow:f1#parent@workspace:w2" in await rels_of(store)


@scenario()
async def no_moves_across_tenants(store: GraphStore, backend: Backend) -> None:
    """An object never moves under another organization's parent."""
    await store.write(BASE, (), RULES)
    await refused(store, delete("flow:f1#parent@workspace:w1")
                  + touch("flow:f1#parent@workspace:x1"), "tenant-boundary")


@scenario()
async def no_relationships_across_tenants(store: GraphStore, backend: Backend) -> None:
    """A relationship between objects of two organizations is refused whatever its relation;
    users, being global, may be subjects anywhere."""
    await store.write(BASE + touch("flow:y1#parent@workspace:x1"), (), RULES)
    msg = await refused(store, touch("organization:o2#ai_workspace@workspace:w1"),
                        "tenant-boundary")
    assert "organization:o2" in msg and "workspace:w1" in msg
    await refused(store, touch("flow:y1#uses@flow:f1"), "tenant-boundary")
    await refused(store, touch("workspace:x1#member@organization:o1"), "tenant-boundary")
    # Nothing of a mixed batch is written.
    await refused(store, touch("workspace:w1#member@user:ok",
                               "flow:f1#uses@flow:y1"), "tenant-boundary")
    await store.write(touch("organization:o1#ai_workspace@workspace:w1", "flow:y1#owner@user:a",
                            "flow:f1#owner@user:a"), (), RULES)


# -- constraints -----------------------------------------------------------------


@scenario()
async def exclusive_roles_within_one_tenant(store: GraphStore, backend: Backend) -> None:
    """Staff cannot become clients in the same organization, nor clients staff."""
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


@scenario()
async def unique_relation_per_tenant(store: GraphStore, backend: Backend) -> None:
    """Only one workspace per organization holds `ai`; a swap in one batch works."""
    await store.write(BASE, (), RULES)
    await store.write(touch("workspace:w1#ai@user:bot"), (), RULES)
    await store.write(touch("workspace:w1#ai@user:bot2"), (), RULES)  # same workspace
    await refused(store, touch("workspace:w2#ai@user:bot"), "one_ai_workspace")
    await store.write(touch("workspace:x1#ai@user:bot"), (), RULES)  # other tenant
    await store.write(delete("workspace:w1#ai@user:bot", "workspace:w1#ai@user:bot2")
                      + touch("workspace:w2#ai@user:bot"), (), RULES)
    assert "workspace:w2#ai@user:bot" in await rels_of(store)


@scenario()
async def max_subjects(store: GraphStore, backend: Backend) -> None:
    """At most two owners per organization; the third is refused naming the limit."""
    await store.write(BASE, (), RULES)
    await store.write(touch("organization:o1#owner@user:a", "organization:o1#owner@user:b"),
                      (), RULES)
    msg = await refused(store, touch("organization:o1#owner@user:c"), "two_owners_at_most")
    assert "at most 2" in msg
    await store.write(delete("organization:o1#owner@user:a")
                      + touch("organization:o1#owner@user:c"), (), RULES)


# -- the changelog ---------------------------------------------------------------


@scenario()
async def follow_yields_effective_changes_in_order(store: GraphStore,
                                                   backend: Backend) -> None:
    """Following from a revision yields each later change once, in order, then keeps following
    and yields changes committed after it caught up."""
    await store.write(BASE, (), RULES)
    epoch = (await store.snapshot()).epoch
    await store.write(touch("workspace:w1#member@user:a", "workspace:w1#member@user:b"),
                      (), RULES)
    await store.write(touch("workspace:w1#member@user:a", "workspace:w1#member@user:c"),
                      (), RULES)
    (second, third) = await asyncio.wait_for(collect(store.follow(1, epoch), 2), 10)
    assert (second.revision, third.revision) == (2, 3)
    # Only what changed is logged: user:a was already a member at revision 3.
    assert [str(op.relationship) for op in third.ops if isinstance(op, TouchRelationship)] \
        == ["workspace:w1#member@user:c"]
    # Live: the follower has yielded revision 4 (so it caught up) before 5 is written.
    got_first = asyncio.Event()
    seen: list[Change] = []

    async def follow_two() -> None:
        async for change in store.follow(3, epoch):
            seen.append(change)
            got_first.set()
            if len(seen) == 2:
                return

    task = asyncio.ensure_future(follow_two())
    await store.write(touch("workspace:w1#member@user:d"), (), RULES)
    await asyncio.wait_for(got_first.wait(), 10)
    await store.write(delete("workspace:w1#member@user:a"), (), RULES)
    await asyncio.wait_for(task, 10)
    assert [c.revision for c in seen] == [4, 5]
    assert isinstance(seen[1].ops[0], DeleteRelationship)


@scenario(changelog_limit=2)
async def follow_detects_a_trimmed_changelog(store: GraphStore, backend: Backend) -> None:
    """A follower asking for revisions the changelog no longer holds gets ChangelogGap."""
    await store.write(BASE, (), RULES)
    epoch = (await store.snapshot()).epoch
    for i in range(5):
        await store.write(touch(f"workspace:w1#member@user:u{i}"), (), RULES)
    await backend.trim_changelog(store, 2)
    try:
        await asyncio.wait_for(collect(store.follow(1, epoch), 1), 10)
    except ChangelogGap:
        return
    raise AssertionError("following from a trimmed revision did not raise ChangelogGap")


@scenario()
async def follow_detects_a_new_epoch(store: GraphStore, backend: Backend) -> None:
    """A follower holding another epoch (data lost or replaced) gets ChangelogGap."""
    await store.write(BASE, (), RULES)
    try:
        await asyncio.wait_for(collect(store.follow(0, "not-the-epoch"), 1), 10)
    except ChangelogGap:
        return
    raise AssertionError("following with a stale epoch did not raise ChangelogGap")
