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
import threading
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
    TenantUnchanged,
    TouchRelationship,
    WritePrecondition,
)
from gatehouse.graph.memory import MemoryGraphStore
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.graph.store import ChangelogGap, GraphStore
from gatehouse.policy.rules import (
    CHILD,
    GLOBAL,
    ROOT,
    AttributeRule,
    Exclusive,
    MaxSubjects,
    MinChildren,
    MinSubjects,
    PerSubject,
    Requires,
    Unique,
    WriteRules,
)

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


# The same model under the tenancy rules: a client in one workspace per organization,
# workspace roles only for organization members, an owner and a workspace that remain,
# workspace slugs fixed once set and unique per organization, flow names unique.
TENANCY_RULES = WriteRules(
    RULES.scope_kind,
    (
        PerSubject("client_in_one_workspace", "workspace", "client", 1),
        Requires("members_are_org_members", frozenset({"workspace.member", "workspace.admin"}),
                 frozenset({"organization.member", "organization.owner"})),
        MinSubjects("an_owner_remains", "organization", "owner", 1),
        MinChildren("a_workspace_remains", "workspace", 1),
    ),
    MappingProxyType({**RULES.relations,
                      "workspace": frozenset({"parent", "member", "admin", "client", "ai"})}),
    MappingProxyType({
        "workspace": (AttributeRule("slug", immutable=True, unique=True),),
        "flow": (AttributeRule("name", unique=True),),
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
                  pre: Sequence[WritePrecondition] = (), rules: WriteRules = RULES) -> str:
    """The write fails with ``name`` (a rule; "precondition"; "invalid") and changes nothing."""
    before_rev = await store.head_revision()
    before = (await rels_of(store), await objects_of(store))
    try:
        await store.write(ops, pre, rules)
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


# -- write_soon: write without a coroutine ----------------------------------------


class Done:
    """A ``done`` callback for ``write_soon``: keeps each result it is handed, and the
    thread that handed it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Change | BaseException, int]] = []
        self._called = asyncio.Event()

    def __call__(self, result: Change | BaseException) -> None:
        self.calls.append((result, threading.get_ident()))
        self._called.set()

    async def once(self, store: GraphStore) -> Change | BaseException:
        """The one result: ``done`` was called exactly once, on the loop's thread."""
        await asyncio.wait_for(self._called.wait(), 10)
        await store.head_revision()  # one more round trip: a second answer would be in
        assert len(self.calls) == 1, self.calls
        result, thread = self.calls[0]
        assert thread == threading.get_ident(), "done was called off the loop's thread"
        return result


async def changed(store: GraphStore, done: Done) -> Change:
    result = await done.once(store)
    assert isinstance(result, Change), repr(result)
    return result


@scenario()
async def write_soon_commits_like_write(store: GraphStore, backend: Backend) -> None:
    """write_soon commits what write would and hands done the change, exactly once, on the
    loop's thread: its own revision (several batches in one loop turn: in the order
    submitted), its operations as the changelog holds them, and for a batch with no effect
    the current revision and no operations."""
    await store.write(BASE, (), RULES)
    epoch = (await store.snapshot()).epoch
    done = Done()
    store.write_soon(touch("workspace:w1#member@user:a"), (), RULES, done)
    first = await changed(store, done)
    assert (first.revision, first.ops) == (2, tuple(touch("workspace:w1#member@user:a")))
    dones = [Done() for _ in range(5)]
    for i, d in enumerate(dones):  # one loop turn: a store that groups writes groups these
        store.write_soon(touch(f"workspace:w2#member@user:s{i}"), (), RULES, d)
    group = [await changed(store, d) for d in dones]
    assert [c.revision for c in group] == [3, 4, 5, 6, 7]
    assert [c.ops for c in group] == [tuple(touch(f"workspace:w2#member@user:s{i}"))
                                      for i in range(5)]
    assert await store.head_revision() == 7
    logged = await asyncio.wait_for(collect(store.follow(1, epoch), 6), 10)
    assert [(c.revision, c.ops) for c in logged] == [(c.revision, c.ops)
                                                     for c in (first, *group)]
    rels = await rels_of(store)
    assert {"workspace:w1#member@user:a"} | {f"workspace:w2#member@user:s{i}"
                                            for i in range(5)} <= rels
    done = Done()
    store.write_soon(touch("workspace:w1#member@user:a"), (), RULES, done)
    nothing = await changed(store, done)
    assert (nothing.revision, nothing.ops) == (7, ())
    assert await store.head_revision() == 7
    # write afterwards continues the same history.
    assert (await store.write(touch("workspace:w1#member@user:b"), (), RULES)).revision == 8


@scenario()
async def write_soon_refuses_like_write(store: GraphStore, backend: Backend) -> None:
    """write_soon hands done the error write raises for the same batch, exactly once:
    Aborted for a precondition that fails, FailedPrecondition naming the rule that
    refused, InvalidArgument for a batch naming one relationship twice; nothing of it
    is written, and in a loop turn's batches a refused one fails alone."""
    await store.write(BASE + touch("organization:o1#owner@user:a",
                                   "organization:o1#owner@user:b"), (), RULES)
    cases: list[tuple[list[Operation], list[WritePrecondition], type[GatehouseError]]] = [
        (touch("workspace:w1#member@user:x"),
         [Precondition(rel("workspace:w1#member@user:nobody"), must_exist=True)], Aborted),
        (touch("organization:o1#owner@user:c"), [], FailedPrecondition),
        (touch("workspace:w1#member@user:x", "workspace:w1#member@user:y",
               "workspace:w1#member@user:x"), [], InvalidArgument),
        (touch("workspace:w1#member@user:x"), unchanged("workspace:w1", 1), InvalidArgument),
    ]
    for ops, pre, kind in cases:
        try:
            await store.write(ops, pre, RULES)
        except GatehouseError as exc:
            expected: GatehouseError = exc
        else:
            raise AssertionError(f"write accepted {ops!r}")
        before = (await store.head_revision(), await rels_of(store), await objects_of(store))
        done = Done()
        store.write_soon(ops, pre, RULES, done)
        got = await done.once(store)
        assert type(got) is type(expected) and isinstance(got, kind), (got, expected)
        assert str(got) == str(expected), (got, expected)
        if isinstance(got, FailedPrecondition):
            assert isinstance(expected, FailedPrecondition)
            assert got.rule == expected.rule == "two_owners_at_most", got
        assert (await store.head_revision(), await rels_of(store),
                await objects_of(store)) == before
    head = await store.head_revision()
    dones = [Done() for _ in range(3)]
    store.write_soon(touch("workspace:w1#member@user:m1"), (), RULES, dones[0])
    store.write_soon(touch("organization:o1#owner@user:c"), (), RULES, dones[1])
    store.write_soon(touch("workspace:w1#member@user:m2"), (), RULES, dones[2])
    one, refusal, two = [await d.once(store) for d in dones]
    assert isinstance(refusal, FailedPrecondition) and refusal.rule == "two_owners_at_most"
    assert isinstance(one, Change) and isinstance(two, Change)
    assert (one.revision, two.revision) == (head + 1, head + 2)
    rels = await rels_of(store)
    assert {"workspace:w1#member@user:m1", "workspace:w1#member@user:m2"} <= rels
    assert "organization:o1#owner@user:c" not in rels


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


@scenario()
async def head_and_history_name_the_data_set(store: GraphStore, backend: Backend) -> None:
    """head() pairs the epoch with the newest revision; check_history passes for the
    history a snapshot handed out and fails (ChangelogGap) for another epoch or for a
    revision the store has not reached (a store behind its reader went back)."""
    await store.write(BASE, (), RULES)
    snap = await store.snapshot()
    epoch, revision = await store.head()
    assert (epoch, revision) == (snap.epoch, snap.revision)
    await store.check_history(snap.revision, snap.epoch)
    for after, wrong_epoch in ((snap.revision, "not-the-epoch"), (snap.revision + 5, snap.epoch)):
        try:
            await store.check_history(after, wrong_epoch)
        except ChangelogGap:
            continue
        raise AssertionError(f"check_history({after}, {wrong_epoch!r}) passed")


# -- tenant revisions (TenantUnchanged) --------------------------------------------

T = TENANCY_RULES


async def race(store: GraphStore, batches: Sequence[tuple[Sequence[Operation],
                                                         Sequence[WritePrecondition]]],
               rules: WriteRules) -> list[GatehouseError | None]:
    """Start every batch at once; each one's error (or None when it committed), in order."""
    results = await asyncio.gather(*(store.write(ops, pre, rules) for ops, pre in batches),
                                   return_exceptions=True)
    out: list[GatehouseError | None] = []
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, GatehouseError):
            raise result
        out.append(result if isinstance(result, GatehouseError) else None)
    return out


def unchanged(tenant: str, revision: int) -> list[WritePrecondition]:
    return [TenantUnchanged(tenant, revision)]


@scenario()
async def tenant_unchanged_holds_until_the_tenant_changes(store: GraphStore,
                                                         backend: Backend) -> None:
    """A write conditioned on a tenant being unchanged since R commits while it is, and is
    refused (Aborted, naming the tenant, nothing written) once any write changed the tenant
    after R: a relationship, the root's attributes or a child's attributes."""
    await store.write(BASE, (), RULES)
    r = await store.head_revision()
    await store.write(touch("workspace:w1#member@user:a"), unchanged("organization:o1", r),
                      RULES)
    msg = await refused(store, touch("workspace:w1#member@user:b"), "precondition",
                        unchanged("organization:o1", r))
    assert "organization:o1" in msg, msg
    for ops in ([PutObject(obj("organization:o1"), {"plan": "pro"})],
                [PutObject(obj("flow:f1"), {"name": "x"})]):
        r = await store.head_revision()
        await store.write(ops, (), RULES)
        await refused(store, touch("workspace:w1#member@user:b"), "precondition",
                      unchanged("organization:o1", r))
    # Read at the current revision again, it holds.
    r = await store.head_revision()
    await store.write(touch("workspace:w1#member@user:b"), unchanged("organization:o1", r),
                      RULES)
    assert "workspace:w1#member@user:b" in await rels_of(store)


@scenario()
async def tenant_unchanged_ignores_other_tenants_globals_and_no_ops(store: GraphStore,
                                                                   backend: Backend) -> None:
    """Writes to another tenant, to global objects only, and batches that change nothing
    leave a tenant's revision where it was."""
    await store.write(BASE, (), RULES)
    r = await store.head_revision()
    await store.write(touch("workspace:x1#member@user:a"), (), RULES)  # organization:o2
    await store.write([PutObject(obj("user:a"), {"email": "a@x.io"})], (), RULES)
    await store.write(touch("workspace:w1#parent@organization:o1")
                      + delete("workspace:w1#member@user:nobody"), (), RULES)  # no-op
    assert await store.head_revision() == r + 2
    await store.write(touch("workspace:w1#member@user:a"), unchanged("organization:o1", r),
                      RULES)
    # Deleting a user who is a subject in o1 changes o1 (its relationship goes).
    r = await store.head_revision()
    await store.write([*delete("workspace:w1#member@user:a", "workspace:x1#member@user:a"),
                       DeleteObject(obj("user:a"))], (), RULES)
    await refused(store, touch("workspace:w2#member@user:c"), "precondition",
                  unchanged("organization:o1", r))


@scenario()
async def a_tenant_created_after_the_decision_is_refused(store: GraphStore,
                                                        backend: Backend) -> None:
    """A tenant never written is at revision 0; one created after the revision a decision
    read refuses that decision's write."""
    await store.write(BASE, (), RULES)
    r = await store.head_revision()
    await store.write(touch("workspace:n1#parent@organization:new"),
                      unchanged("organization:new", 0), RULES)
    await refused(store, touch("workspace:n2#parent@organization:new"), "precondition",
                  unchanged("organization:new", r))
    assert "workspace:n2#parent@organization:new" not in await rels_of(store)


@scenario()
async def tenant_unchanged_must_name_a_tenant_root(store: GraphStore, backend: Backend) -> None:
    """A tenant precondition naming an object that is no tenant root is malformed."""
    await store.write(BASE, (), RULES)
    for key in ("workspace:w1", "user:a"):
        msg = await refused(store, touch("workspace:w1#member@user:a"), "invalid",
                            unchanged(key, 10))
        assert "preconditions[0]" in msg and key in msg, msg


@scenario()
async def two_decisions_at_one_revision_only_one_commits(store: GraphStore,
                                                        backend: Backend) -> None:
    """Two writes decided at the same revision of one tenant race: the first commits, the
    second is refused and nothing of it is written."""
    await store.write(BASE, (), RULES)
    for round_ in range(3):
        r = await store.head_revision()
        batches = [(touch(f"workspace:w1#member@user:r{round_}w{i}",
                          f"workspace:w2#member@user:r{round_}w{i}"),
                    unchanged("organization:o1", r)) for i in range(4)]
        results = await race(store, batches, RULES)
        winners = [i for i, err in enumerate(results) if err is None]
        assert len(winners) == 1, results
        assert all(isinstance(err, Aborted) for err in results if err is not None), results
        rels = await rels_of(store)
        for i in range(4):
            both = {f"workspace:w{n}#member@user:r{round_}w{i}" for n in (1, 2)}
            assert both & rels == (both if i in winners else set()), (i, rels)
        assert await store.head_revision() == r + 1


# -- the tenancy constraints ------------------------------------------------------


@scenario()
async def per_subject_limits_objects_per_tenant(store: GraphStore, backend: Backend) -> None:
    """A subject holds a per_subject relation on at most `limit` objects of one tenant; other
    tenants count apart and moving in one batch works."""
    await store.write(BASE, (), T)
    await store.write(touch("workspace:w1#client@user:c"), (), T)
    msg = await refused(store, touch("workspace:w2#client@user:c"), "client_in_one_workspace",
                        rules=T)
    assert "user:c" in msg and "at most 1" in msg, msg
    await refused(store, touch("workspace:w1#client@user:d", "workspace:w2#client@user:d"),
                  "client_in_one_workspace", rules=T)
    await store.write(touch("workspace:x1#client@user:c"), (), T)  # organization:o2
    await store.write(delete("workspace:w1#client@user:c")
                      + touch("workspace:w2#client@user:c"), (), T)
    assert "workspace:w2#client@user:c" in await rels_of(store)


@scenario()
async def per_subject_under_concurrent_writers(store: GraphStore, backend: Backend) -> None:
    """Writers racing to make one person a client of different workspaces of a tenant leave
    exactly one such relationship; every other writer is refused with the constraint."""
    await store.write(BASE + touch(*(f"workspace:w{i}#parent@organization:o1"
                                     for i in range(3, 7))), (), T)
    results = await race(store, [(touch(f"workspace:w{i}#client@user:r"), ())
                                 for i in range(1, 7)], T)
    assert sum(err is None for err in results) == 1, results
    assert all(isinstance(err, FailedPrecondition) and err.rule == "client_in_one_workspace"
               for err in results if err is not None), results
    assert len({r for r in await rels_of(store) if r.endswith("#client@user:r")}) == 1


@scenario()
async def requires_holds_both_ways(store: GraphStore, backend: Backend) -> None:
    """A workspace role needs an organization role in the same tenant: granting it without
    one is refused, and so is removing the last organization role while it remains."""
    await store.write(BASE, (), T)
    msg = await refused(store, touch("workspace:w1#member@user:u"), "members_are_org_members",
                        rules=T)
    assert "user:u" in msg and "workspace.member" in msg and "organization.member" in msg, msg
    await store.write(touch("organization:o1#member@user:u", "workspace:w1#member@user:u",
                            "workspace:w2#admin@user:u"), (), T)
    # Membership of o1 does not count in o2.
    await refused(store, touch("workspace:x1#member@user:u"), "members_are_org_members",
                  rules=T)
    await refused(store, delete("organization:o1#member@user:u"), "members_are_org_members",
                  rules=T)
    # Another need may replace it in the same batch (the owner role counts too) ...
    await store.write(delete("organization:o1#member@user:u")
                      + touch("organization:o1#owner@user:u"), (), T)
    # ... and the organization role goes once no workspace role is left.
    await store.write(touch("organization:o1#owner@user:keeper"), (), T)
    await refused(store, delete("organization:o1#owner@user:u", "workspace:w1#member@user:u"),
                  "members_are_org_members", rules=T)
    await store.write(delete("organization:o1#owner@user:u", "workspace:w1#member@user:u",
                             "workspace:w2#admin@user:u"), (), T)


@scenario()
async def requires_under_concurrent_writers(store: GraphStore, backend: Backend) -> None:
    """Removing a person's organization role while others grant them workspace roles leaves
    either the removal or the grants, never a workspace role without the organization
    role."""
    await store.write(BASE + touch("organization:o1#owner@user:keeper"), (), T)
    for round_ in range(3):
        u = f"user:p{round_}"
        await store.write(touch(f"organization:o1#member@user:p{round_}"), (), T)
        batches: list[tuple[Sequence[Operation], Sequence[WritePrecondition]]] = [
            (touch(f"workspace:w1#member@{u}"), ()),
            (delete(f"organization:o1#member@{u}"), ()),
            (touch(f"workspace:w2#admin@{u}"), ()),
        ]
        batches = batches[round_:] + batches[:round_]  # the removal first, second, last
        results = await race(store, batches, T)
        assert all(isinstance(err, FailedPrecondition) and err.rule == "members_are_org_members"
                   for err in results if err is not None), results
        rels = await rels_of(store)
        workspace_roles = {r for r in rels if r.startswith("workspace:") and r.endswith(u)}
        member = f"organization:o1#member@{u}" in rels
        assert member or not workspace_roles, rels
        assert any(err is not None for err in results), results


@scenario()
async def minimum_subjects_remain(store: GraphStore, backend: Backend) -> None:
    """An object that has reached a minimum of subjects keeps it (a swap in one batch is
    fine); deleting the object itself with its relationships is allowed."""
    await store.write(BASE, (), T)
    await store.write(touch("organization:o1#owner@user:a"), (), T)
    msg = await refused(store, delete("organization:o1#owner@user:a"), "an_owner_remains",
                        rules=T)
    assert "organization:o1#owner" in msg and "at least 1" in msg, msg
    await store.write(delete("organization:o1#owner@user:a")
                      + touch("organization:o1#owner@user:b"), (), T)
    await store.write([*touch("organization:o3#owner@user:a"),
                       PutObject(obj("organization:o3"), {"name": "three"})], (), T)
    await refused(store, delete("organization:o3#owner@user:a"), "an_owner_remains", rules=T)
    await store.write([*delete("organization:o3#owner@user:a"),
                       DeleteObject(obj("organization:o3"))], (), T)
    assert "organization:o3" not in await objects_of(store)


@scenario()
async def minimum_subjects_under_concurrent_writers(store: GraphStore,
                                                   backend: Backend) -> None:
    """Writers each removing a different owner of one organization leave at least one."""
    await store.write(BASE + touch(*(f"organization:o1#owner@user:o{i}" for i in range(4))),
                      (), T)
    results = await race(store, [(delete(f"organization:o1#owner@user:o{i}"), ())
                                 for i in range(4)], T)
    assert sum(err is None for err in results) == 3, results
    assert all(isinstance(err, FailedPrecondition) and err.rule == "an_owner_remains"
               for err in results if err is not None), results
    assert len({r for r in await rels_of(store) if "#owner@" in r}) == 1


@scenario()
async def minimum_children_remain(store: GraphStore, backend: Backend) -> None:
    """A tenant keeps the minimum number of children of a type once it has them."""
    await store.write(BASE, (), T)
    await store.write(delete("workspace:w2#parent@organization:o1"), (), T)
    msg = await refused(store, delete("workspace:w1#parent@organization:o1"),
                        "a_workspace_remains", rules=T)
    assert "organization:o1" in msg and "at least 1" in msg, msg
    await refused(store, delete("workspace:x1#parent@organization:o2"), "a_workspace_remains",
                  rules=T)
    # Replacing the last one in one batch is fine.
    await store.write(delete("workspace:w1#parent@organization:o1", "flow:f1#parent@workspace:w1")
                      + touch("workspace:w9#parent@organization:o1"), (), T)
    # Racing one create and two deletes: in any order one delete is refused.
    results = await race(store, [(touch("workspace:w8#parent@organization:o1"), ()),
                                 (delete("workspace:w9#parent@organization:o1"), ()),
                                 (delete("workspace:w8#parent@organization:o1"), ())], T)
    refusals = [err for err in results if err is not None]
    assert len(refusals) == 1, results
    assert isinstance(refusals[0], FailedPrecondition) and \
        refusals[0].rule == "a_workspace_remains", results
    assert len({r for r in await rels_of(store) if r.endswith("#parent@organization:o1")}) == 1


@scenario()
async def immutable_attributes_keep_their_value(store: GraphStore, backend: Backend) -> None:
    """Once an object has an immutable attribute, a put may neither change nor drop it;
    other attributes change freely and deleting the object is allowed."""
    await store.write(BASE, (), T)
    w1 = obj("workspace:w1")
    await store.write([PutObject(w1, {"name": "one"})], (), T)
    await store.write([PutObject(w1, {"name": "one", "slug": "one"})], (), T)
    await store.write([PutObject(w1, {"name": "renamed", "slug": "one"})], (), T)
    msg = await refused(store, [PutObject(w1, {"name": "renamed", "slug": "two"})],
                        "immutable-attribute", rules=T)
    assert "workspace:w1 slug" in msg and "'one'" in msg, msg
    await refused(store, [PutObject(w1, {"name": "renamed"})], "immutable-attribute", rules=T)
    await store.write([*touch("workspace:w3#parent@organization:o1"),
                       PutObject(obj("workspace:w3"), {"slug": "three"})], (), T)
    await store.write([*delete("workspace:w3#parent@organization:o1"),
                       DeleteObject(obj("workspace:w3"))], (), T)
    await store.write([*touch("workspace:w3#parent@organization:o1"),
                       PutObject(obj("workspace:w3"), {"slug": "again"})], (), T)
    assert (await objects_of(store))["workspace:w3"] == {"slug": "again"}


@scenario()
async def unique_attributes_within_a_tenant(store: GraphStore, backend: Backend) -> None:
    """No two objects of a type in one tenant hold the same value of a unique attribute;
    other tenants count apart, values swap in one batch and a deleted object frees its."""
    await store.write(BASE + touch("flow:f2#parent@workspace:w2", "flow:y1#parent@workspace:x1"),
                      (), T)
    await store.write([PutObject(obj("workspace:w1"), {"slug": "alpha"})], (), T)
    msg = await refused(store, [PutObject(obj("workspace:w2"), {"slug": "alpha"})],
                        "unique-attribute", rules=T)
    assert "workspace:w2 slug 'alpha'" in msg and "workspace:w1" in msg, msg
    await store.write([PutObject(obj("workspace:x1"), {"slug": "alpha"})], (), T)  # o2
    await refused(store, [*touch("workspace:w3#parent@organization:o1",
                                 "workspace:w4#parent@organization:o1"),
                          PutObject(obj("workspace:w3"), {"slug": "beta"}),
                          PutObject(obj("workspace:w4"), {"slug": "beta"})],
                  "unique-attribute",
                  rules=T)
    # Flows (a mutable unique name): swap in one batch, free by rename and by delete.
    await store.write([PutObject(obj("flow:f1"), {"name": "n1"}),
                       PutObject(obj("flow:f2"), {"name": "n2"}),
                       PutObject(obj("flow:y1"), {"name": "n1"})], (), T)
    await refused(store, [PutObject(obj("flow:f2"), {"name": "n1"})], "unique-attribute",
                  rules=T)
    await store.write([PutObject(obj("flow:f1"), {"name": "n2"}),
                       PutObject(obj("flow:f2"), {"name": "n1"})], (), T)
    await store.write([PutObject(obj("flow:f1"), {"name": "n3"})], (), T)
    await store.write([*touch("flow:f3#parent@workspace:w1"),
                       PutObject(obj("flow:f3"), {"name": "n2"})], (), T)
    await store.write([*delete("flow:f2#parent@workspace:w2"), DeleteObject(obj("flow:f2"))],
                      (), T)
    await store.write([*touch("flow:f4#parent@workspace:w1"),
                       PutObject(obj("flow:f4"), {"name": "n1"})], (), T)
    names = {k: v.get("name") for k, v in (await objects_of(store)).items()
             if k.startswith("flow:")}
    assert names == {"flow:f1": "n3", "flow:f3": "n2", "flow:f4": "n1", "flow:y1": "n1"}


@scenario()
async def unique_attributes_under_concurrent_writers(store: GraphStore,
                                                     backend: Backend) -> None:
    """Writers racing to create workspaces with one slug in one tenant: exactly one wins."""
    await store.write(BASE, (), T)
    results = await race(store, [([*touch(f"workspace:n{i}#parent@organization:o1"),
                                   PutObject(obj(f"workspace:n{i}"), {"slug": "same"})], ())
                                 for i in range(5)], T)
    assert sum(err is None for err in results) == 1, results
    assert all(isinstance(err, FailedPrecondition) and err.rule == "unique-attribute"
               for err in results if err is not None), results
    slugs = [v.get("slug") for v in (await objects_of(store)).values()]
    assert slugs.count("same") == 1


@scenario()
async def a_stale_unique_entry_does_not_block(store: GraphStore, backend: Backend) -> None:
    """A value an object gave up while the policy had no unique rule is free again when the
    rule returns: the index entry left behind does not refuse a new holder."""
    await store.write(BASE, (), T)
    await store.write([PutObject(obj("workspace:w1"), {"slug": "alpha"})], (), T)
    await store.write([PutObject(obj("workspace:w1"), {"slug": "beta"})], (), RULES)
    await store.write([PutObject(obj("workspace:w2"), {"slug": "alpha"})], (), T)
    msg = await refused(store, [PutObject(obj("workspace:w1"), {"slug": "alpha"})],
                        "immutable-attribute", rules=T)
    assert "'beta'" in msg, msg
    # The new holder is indexed: the value is taken again.
    await refused(store, [*touch("workspace:w5#parent@organization:o1"),
                          PutObject(obj("workspace:w5"), {"slug": "alpha"})],
                  "unique-attribute", rules=T)
