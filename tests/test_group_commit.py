"""Group commit: concurrent writes share one Redis script call, yet each is its own.

Usage events and graph write batches that arrive in the same event-loop turn
are sent to Redis as one script call (``gatehouse.redisscript.BatchedScript``)
and RecordUsage / WriteRelationships take the transport's short path
(``Later``). What callers rely on is unchanged and is what these tests hold, on
the memory store (the reference) and on a real Redis: every caller gets its
own answer, a failing item fails only itself, an event id counts once however
its duplicates are grouped, revisions follow submission order, and nothing is
acknowledged that is not in the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from gatehouse.errors import Aborted, FailedPrecondition, Unavailable
from gatehouse.graph.changes import Change, Precondition, TouchRelationship
from gatehouse.graph.memory import MemoryGraphStore
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.graph.redis import RedisGraphStore
from gatehouse.graph.store import GraphStore
from gatehouse.policy import load_policy
from gatehouse.policy.model import Metric
from gatehouse.policy.rules import MaxSubjects
from gatehouse.redisscript import settle
from gatehouse.usage.events import UsageEvent, UsageStore
from gatehouse.usage.memory import MemoryUsageStore
from gatehouse.usage.redis import RedisUsageStore
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from gatehouse.v1 import usage_pb2 as upb
from gatehouse.v1 import usage_pb2_grpc as upb_grpc
from tests.conftest import ROOT, ServerProcess, start_on_store, start_server
from tests.redis_server import RedisServer

WINDOW = 3600
CREDITS = Metric(name="llm_credits", kind="recorded", aggregate="sum")


def _event(event_id: str, org: str = "organization:acme", amount: float = 1.0) -> UsageEvent:
    return UsageEvent(event_id, org, "w1", CREDITS, amount, "", time.time())


@asynccontextmanager
async def usage_store(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[UsageStore]:
    store: UsageStore
    if kind == "memory":
        store = MemoryUsageStore()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = RedisUsageStore(server.url, f"g{uuid.uuid4().hex[:8]}")
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def graph_store(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[GraphStore]:
    store: GraphStore
    if kind == "memory":
        store = MemoryGraphStore()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = RedisGraphStore(server.url, f"g{uuid.uuid4().hex[:8]}")
    try:
        yield store
    finally:
        await store.close()


async def _total(store: UsageStore, org: str = "organization:acme") -> float:
    counters = await store.counters(org, {"all": "all"})
    return counters["all"].values.get(("w1", "llm_credits"), 0.0)


@pytest.mark.parametrize("kind", ["memory", "redis"])
class TestUsageGroups:
    def test_concurrent_events_each_get_their_own_answer(
            self, kind: str, request: pytest.FixtureRequest) -> None:
        """100 distinct events and 20 copies of one more, recorded at once: each distinct
        one is new, exactly one copy is new and the others are duplicates, and the
        counter holds 101."""
        async def run() -> None:
            async with usage_store(kind, request) as store:
                distinct = [store.record(_event(f"e{i}"), WINDOW) for i in range(100)]
                copies = [store.record(_event("same"), WINDOW) for _ in range(20)]
                answers = await asyncio.gather(*distinct, *copies)
                assert answers[:100] == [False] * 100
                assert sorted(answers[100:]) == [False] + [True] * 19
                assert await _total(store) == 101
                if isinstance(store, RedisUsageStore):  # they did share script calls
                    assert store._record.calls < 10

        asyncio.run(run())

    def test_a_duplicate_of_an_earlier_group_is_a_duplicate(
            self, kind: str, request: pytest.FixtureRequest) -> None:
        """An id recorded in one group is a duplicate in the next; the counter moves once."""
        async def run() -> None:
            async with usage_store(kind, request) as store:
                assert await asyncio.gather(*(store.record(_event(f"x{i}", amount=2.0),
                                                           WINDOW) for i in range(5))) == \
                    [False] * 5
                again = await asyncio.gather(*(store.record(_event(f"x{i}", amount=2.0),
                                                            WINDOW) for i in range(3, 8)))
                assert again == [True, True, False, False, False]
                assert await _total(store) == 16

        asyncio.run(run())


class TestUsageFailures:
    def test_an_event_redis_refuses_fails_alone_and_its_retry_counts(
            self, redis_server: RedisServer) -> None:
        """In one group, the event whose counters Redis refuses (a key of the wrong type)
        fails UNAVAILABLE while its neighbours are recorded; its id is not marked seen,
        so once the fault is gone the retry is counted, not taken for a duplicate."""
        async def run() -> None:
            prefix = f"g{uuid.uuid4().hex[:8]}"
            store = RedisUsageStore(redis_server.url, prefix)
            broken = f"{prefix}:{{organization:broken}}:u:all"
            try:
                await store.client.set(broken, "not a hash")
                answers = await asyncio.gather(
                    store.record(_event("a1"), WINDOW),
                    store.record(_event("b1", "organization:broken"), WINDOW),
                    store.record(_event("a2"), WINDOW),
                    return_exceptions=True)
                assert answers[0] is False and answers[2] is False
                assert isinstance(answers[1], Unavailable)
                assert "WRONGTYPE" in str(answers[1])
                assert await _total(store) == 2
                await store.client.delete(broken)
                assert await store.record(_event("b1", "organization:broken"), WINDOW) is False
                assert await _total(store, "organization:broken") == 1
            finally:
                await store.close()

        asyncio.run(run())

    def test_a_lost_script_is_loaded_again(self, redis_server: RedisServer) -> None:
        """After SCRIPT FLUSH (as after a Redis restart) the next group still records."""
        async def run() -> None:
            store = RedisUsageStore(redis_server.url, f"g{uuid.uuid4().hex[:8]}")
            try:
                assert await store.record(_event("s1"), WINDOW) is False
                await store.client.script_flush()
                answers = await asyncio.gather(*(store.record(_event(f"s{i}"), WINDOW)
                                                 for i in range(1, 4)))
                assert answers == [True, False, False]
                assert await _total(store) == 3
            finally:
                await store.close()

        asyncio.run(run())


def _rel(ws: str, subject: str) -> Relationship:
    return Relationship(ObjectRef("workspace", ws), "guest", ObjectRef("user", subject))


RULES = load_policy(ROOT / "policies/coupler").write_rules
PARENT = TouchRelationship(Relationship(ObjectRef("workspace", "w"), "parent",
                                        ObjectRef("organization", "o")))


@pytest.mark.parametrize("kind", ["memory", "redis"])
class TestGraphGroups:
    def test_concurrent_batches_commit_or_fail_alone_in_order(
            self, kind: str, request: pytest.FixtureRequest) -> None:
        """30 single-relationship batches at once, one of them with a precondition that
        does not hold: that one fails ABORTED, the 29 others commit with
        their own revisions in the order they were submitted, and the store holds
        exactly those 29."""
        async def run() -> None:
            async with graph_store(kind, request) as store:
                await store.write([PARENT, TouchRelationship(_rel("w", "seed"))], (), RULES)
                missing = Precondition(_rel("w", "nobody"), must_exist=True)
                writes = [store.write([TouchRelationship(_rel("w", f"u{i}"))],
                                      [missing] if i == 13 else [], RULES)
                          for i in range(30)]
                results: list[Any] = await asyncio.gather(*writes, return_exceptions=True)
                assert isinstance(results[13], Aborted)
                revisions = [r.revision for i, r in enumerate(results) if i != 13]
                assert revisions == sorted(revisions) and len(set(revisions)) == 29
                snap = await store.snapshot()
                subjects = {e[2] for e in snap.edges} | {
                    r.subject.key for r in snap.relationships}
                assert subjects == {"organization:o", "user:seed"} | {
                    f"user:u{i}" for i in range(30) if i != 13}
                assert snap.revision == revisions[-1]
                if isinstance(store, RedisGraphStore):
                    assert store._call.calls < 10

        asyncio.run(run())

    def test_a_batch_that_changes_nothing_keeps_the_revision(
            self, kind: str, request: pytest.FixtureRequest) -> None:
        """Touching what is already there, grouped with real changes, commits nothing of
        its own: it answers the revision it read, the others advance it."""
        async def run() -> None:
            async with graph_store(kind, request) as store:
                first = await store.write([PARENT, TouchRelationship(_rel("w", "a"))], (), RULES)
                same, new = await asyncio.gather(
                    store.write([TouchRelationship(_rel("w", "a"))], (), RULES),
                    store.write([TouchRelationship(_rel("w", "b"))], (), RULES))
                assert same.ops == () and same.revision == first.revision
                assert new.ops != () and new.revision == first.revision + 1

        asyncio.run(run())


class TestRedisGraphGroups:
    def test_batches_of_one_call_chain_their_changelog_entries(
            self, redis_server: RedisServer) -> None:
        """Twenty batches written at once share few script calls, yet every changelog
        entry names the one before it ("p" is the previous entry's "n", inside a call
        too), each "n" is its own, and the store's tip is the last entry: a follower
        resuming from any of those revisions reads one unbroken history."""
        async def run() -> None:
            store = RedisGraphStore(redis_server.url, f"g{uuid.uuid4().hex[:8]}")
            try:
                await store.write([PARENT, TouchRelationship(_rel("w", "seed"))], (), RULES)
                snap = await store.snapshot()
                calls = store._call.calls
                await asyncio.gather(*(store.write([TouchRelationship(_rel("w", f"c{i}"))],
                                                   (), RULES) for i in range(20)))
                assert store._call.calls - calls < 20  # grouped
                entries = await store.client.xrange(store._k("log"))
                ids = [fields["n"] for _, fields in entries]
                assert len(set(ids)) == len(ids) == 21
                assert entries[0][1]["p"] == ""
                for (_, before), (_, after) in itertools.pairwise(entries):
                    assert after["p"] == before["n"]
                tip = await store.client.hget(store._k("meta"), "tip")
                assert tip == f"{entries[-1][0].split('-')[0]} {ids[-1]}"
                follower = RedisGraphStore(redis_server.url, store.prefix)
                try:
                    changes = []
                    async for change in follower.follow(snap.revision, snap.epoch):
                        changes.append(change.revision)
                        if len(changes) == 20:
                            break
                    assert changes == list(range(snap.revision + 1, snap.revision + 21))
                finally:
                    await follower.close()
            finally:
                await store.close()

        asyncio.run(run())


# -- over gRPC: the short path (Later) on both transports and both stores -------------

SERVERS = [("memory", "core"), ("redis", "core"), ("memory", "aio")]


@pytest.fixture(scope="module", params=SERVERS, ids=[f"{s}-{t}" for s, t in SERVERS])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store, transport = request.param
    args = ("--policy", "policies/coupler", "--data", "examples/coupler.data.yaml",
            "--transport", transport)
    proc = (start_on_store(request, tmp_path_factory, store, *args) if store == "redis"
            else start_server(tmp_path_factory.mktemp("gc"), *args))
    yield proc
    proc.stop()


def _record(stub: upb_grpc.UsageServiceStub, event_id: str, ws: str = "acme") -> Any:
    return stub.RecordUsage.future(upb.RecordUsageRequest(
        organization_id="northwind", events=[upb.UsageEvent(
            event_id=event_id, workspace_id=ws, metric="llm_credits", amount=1.0)]))


def _credits(stub: upb_grpc.UsageServiceStub) -> float:
    resp = stub.ComputeUsage(upb.ComputeUsageRequest(organization_id="northwind",
                                                     metrics=["llm_credits"]))
    return resp.metrics[0].value


class TestOverGrpc:
    def test_concurrent_record_usage_callers_get_their_own_answers(
            self, server: ServerProcess) -> None:
        """40 callers at once, 10 of them sending one shared event id and one naming a
        workspace that does not exist: the bad one alone gets NOT_FOUND naming its
        field, every other caller gets its own event id back, the shared id is new
        exactly once, and the organization's credits grow by 41."""
        stub = upb_grpc.UsageServiceStub(server.channel())
        run = uuid.uuid4().hex[:8]
        before = _credits(stub)
        own = [_record(stub, f"{run}-{i}") for i in range(30)]
        shared = [_record(stub, f"{run}-shared") for _ in range(10)]
        bad = _record(stub, f"{run}-bad", ws="nowhere")
        for i, fut in enumerate(own):
            resp = fut.result(timeout=30)
            assert [(r.event_id, r.duplicate) for r in resp.results] == [(f"{run}-{i}", False)]
        flags = sorted(f.result(timeout=30).results[0].duplicate for f in shared)
        assert flags == [False] + [True] * 9
        with pytest.raises(grpc.RpcError) as info:
            bad.result(timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details().startswith("events[0].workspace_id")
        assert _credits(stub) == before + 31

    def test_the_events_of_one_call_answer_in_order(self, server: ServerProcess) -> None:
        """One call of 100 events naming one id twice: the answers come in the request's
        order, the second copy is the duplicate, and the credits grow by 99."""
        stub = upb_grpc.UsageServiceStub(server.channel())
        run = uuid.uuid4().hex[:8]
        ids = [f"{run}-{i}" for i in range(99)]
        ids.insert(60, ids[10])
        before = _credits(stub)
        resp = stub.RecordUsage(upb.RecordUsageRequest(organization_id="northwind", events=[
            upb.UsageEvent(event_id=i, workspace_id="acme", metric="llm_credits", amount=1.0)
            for i in ids]), timeout=30)
        assert [r.event_id for r in resp.results] == ids
        assert [i for i, r in enumerate(resp.results) if r.duplicate] == [60]
        assert _credits(stub) == before + 99

    def test_concurrent_single_writes_commit_or_fail_alone(self, server: ServerProcess) -> None:
        """30 WriteRelationships at once, one with a precondition that does not hold and
        one that is not a protobuf message: those two fail with their own status, the
        29 others each get their own revision, and every one of them is readable."""
        ch = server.channel()
        stub = gpb_grpc.GraphServiceStub(ch)
        run = uuid.uuid4().hex[:8]
        touch = gpb.RelationshipUpdate.OPERATION_TOUCH

        def rel(subject: str) -> gpb.Relationship:
            return gpb.Relationship(resource={"type": "workspace", "id": "globex"},
                                    relation="guest", subject={"type": "user", "id": subject})

        futures = []
        for i in range(30):
            req = gpb.WriteRelationshipsRequest(
                updates=[gpb.RelationshipUpdate(operation=touch, relationship=rel(f"{run}{i}"))])
            if i == 7:
                req.preconditions.add(operation=gpb.Precondition.OPERATION_MUST_EXIST,
                                      relationship=rel(f"{run}-absent"))
            futures.append(stub.WriteRelationships.future(req))
        garbage = ch.unary_unary("/gatehouse.v1.GraphService/WriteRelationships").future(
            b"\xff\xff\xff")
        revisions = []
        for i, fut in enumerate(futures):
            if i == 7:
                with pytest.raises(grpc.RpcError) as info:
                    fut.result(timeout=30)
                assert info.value.code() == grpc.StatusCode.ABORTED
                continue
            revisions.append(int(fut.result(timeout=30).revision))
        with pytest.raises(grpc.RpcError) as bad:
            garbage.result(timeout=30)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(set(revisions)) == 29
        read = gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
            resource_type="workspace", resource_id="globex", relation="guest"))
        read.consistency.at_least_as_fresh = str(max(revisions))
        found = {m.relationship.subject.id for m in stub.ReadRelationships(read)
                 if m.HasField("relationship")}
        assert {s for s in found if s.startswith(run)} == {
            f"{run}{i}" for i in range(30) if i != 7}


# -- the batching itself ---------------------------------------------------------------

DOUBLE = """
local function one(arg)
  if arg == "raise" then error("boom") end
  if arg == "wrongtype" then return redis.call("INCR", ARGV[1]) end
  return {tonumber(arg) * 2, ARGV[1]}
end
return run_items(2, one)
"""

# Each item's reply: the item, the call's two leading arguments (head() and the head
# the item was submitted with) and every item of its call, so a test sees who shared it.
HEADED = """
local function one(arg)
  local items = {}
  for i = 3, #ARGV do items[#items + 1] = ARGV[i] end
  return {arg, ARGV[1], ARGV[2], table.concat(items, ",")}
end
return run_items(3, one)
"""


class TestBatchedScript:
    def test_items_answer_alone_and_groups_split_by_count_and_size(
            self, redis_server: RedisServer) -> None:
        """Twelve items at once, two of which fail (a Lua error, a Redis error): those two
        get their own error, the ten others their own reply; the group goes out as
        calls of at most 4 items and 20 bytes, one pipeline."""
        import redis.asyncio as aioredis
        from redis.exceptions import ResponseError

        from gatehouse.redisscript import BatchedScript

        async def run() -> None:
            client = aioredis.from_url(redis_server.url, decode_responses=True)
            hash_key = f"g{uuid.uuid4().hex[:8]}"
            await client.hset(hash_key, "f", "v")
            script = BatchedScript(client, DOUBLE, lambda: [hash_key], max_items=4,
                                   max_bytes=20)
            try:
                await client.script_load(script.lua)  # else every first call is retried
                items = [str(i) for i in range(10)]
                items[3:3] = ["raise"]
                items[8:8] = ["wrongtype"]
                answers = await asyncio.gather(*(script(item) for item in items),
                                               return_exceptions=True)
                for item, answer in zip(items, answers, strict=True):
                    if item == "raise":
                        assert isinstance(answer, ResponseError) and "boom" in str(answer)
                    elif item == "wrongtype":
                        assert isinstance(answer, ResponseError)
                        assert "WRONGTYPE" in str(answer)
                    else:
                        assert answer == [int(item) * 2, hash_key]
                assert script.calls == 3
                big = "0" * 29 + "7"  # larger than max_bytes: goes alone, still answered
                assert await asyncio.gather(script(big), script("2")) == [
                    [14, hash_key], [4, hash_key]]
                assert script.calls == 5
            finally:
                await client.aclose()

        asyncio.run(run())

    def test_too_few_replicas_fail_the_applied_items_unavailable(
            self, redis_server: RedisServer) -> None:
        """With WAIT for a replica that does not exist, the items the script applied are
        answered UNAVAILABLE saying so (on the primary, not yet safe), while an item the
        script refused keeps its own error; one script call and one WAIT for the group."""
        import redis.asyncio as aioredis
        from redis.exceptions import ResponseError

        from gatehouse.redisscript import BatchedScript

        async def run() -> None:
            client = aioredis.from_url(redis_server.url, decode_responses=True)
            script = BatchedScript(client, DOUBLE, lambda: ["unused"], wait_replicas=1,
                                   wait_timeout=0.05)
            try:
                answers = await asyncio.gather(script("1"), script("raise"), script("2"),
                                               return_exceptions=True)
                assert isinstance(answers[1], ResponseError) and "boom" in str(answers[1])
                for answer in (answers[0], answers[2]):
                    assert isinstance(answer, Unavailable)
                    assert "applied on the redis primary but only 0 of 1 replica" in str(answer)
                assert script.calls <= 2  # one call (plus its retry after the script load)
            finally:
                await client.aclose()

        asyncio.run(run())

    def test_items_with_different_heads_never_share_a_call(
            self, redis_server: RedisServer) -> None:
        """Eight items submitted in one loop turn with two heads (h1 h1 h1 h2 h2 h1 h1 h2):
        each script call carries one head and only items submitted with it, in the order
        submitted (each run of one head is a call: 4 calls); items of one head alone
        share one call."""
        import redis.asyncio as aioredis

        from gatehouse.redisscript import BatchedScript

        async def run() -> None:
            client = aioredis.from_url(redis_server.url, decode_responses=True)
            script = BatchedScript(client, HEADED, lambda: ["prefix"])
            try:
                await client.script_load(script.lua)  # else every first call is retried
                loop = asyncio.get_running_loop()

                async def submit_all(heads: list[str]) -> list[Any]:
                    futures: list[asyncio.Future[Any]] = []
                    for i, head in enumerate(heads):  # one loop turn: no await in between
                        fut: asyncio.Future[Any] = loop.create_future()
                        script.submit(f"{head}-{i}", functools.partial(settle, fut), (head,))
                        futures.append(fut)
                    return list(await asyncio.gather(*futures))

                heads = ["h1", "h1", "h1", "h2", "h2", "h1", "h1", "h2"]
                replies = await submit_all(heads)
                assert script.calls == 4
                calls: list[str] = []
                for i, (head, reply) in enumerate(zip(heads, replies, strict=True)):
                    item, prefix, call_head, members = reply
                    assert (item, prefix, call_head) == (f"{head}-{i}", "prefix", head)
                    assert item in members.split(",")
                    assert all(m.startswith(f"{head}-") for m in members.split(",")), members
                    if not calls or calls[-1] != members:
                        calls.append(members)
                assert calls == ["h1-0,h1-1,h1-2", "h2-3,h2-4", "h1-5,h1-6", "h2-7"]
                replies = await submit_all(["h2"] * 5)
                assert script.calls == 5
                assert {reply[3] for reply in replies} == {"h2-0,h2-1,h2-2,h2-3,h2-4"}
            finally:
                await client.aclose()

        asyncio.run(run())

    def test_each_graph_write_is_judged_by_its_own_rules(
            self, redis_server: RedisServer) -> None:
        """Four writes in one loop turn alternating between the policy's write rules and
        stricter ones (at most one guest per workspace): each is judged by its own rules
        - the strict first guest commits, the permissive second and fourth commit, the
        strict third is refused naming its rule - in separate script calls."""
        strict = dataclasses.replace(RULES, constraints=(
            *RULES.constraints, MaxSubjects("one_guest", "workspace", "guest", 1)))

        async def run() -> None:
            store = RedisGraphStore(redis_server.url, f"g{uuid.uuid4().hex[:8]}")
            try:
                await store.write([PARENT], (), RULES)
                head, calls = await store.head_revision(), store._call.calls
                loop = asyncio.get_running_loop()
                futures: list[asyncio.Future[Any]] = []
                for subject, rules in (("a", strict), ("b", RULES), ("c", strict),
                                       ("d", RULES)):  # one loop turn
                    fut: asyncio.Future[Any] = loop.create_future()
                    store.write_soon([TouchRelationship(_rel("w", subject))], (), rules,
                                     functools.partial(settle, fut))
                    futures.append(fut)
                a, b, c, d = await asyncio.gather(*futures, return_exceptions=True)
                assert isinstance(c, FailedPrecondition) and c.rule == "one_guest", c
                assert isinstance(a, Change) and isinstance(b, Change) and isinstance(d, Change)
                assert [x.revision for x in (a, b, d)] == [head + 1, head + 2, head + 3]
                assert store._call.calls - calls == 4
                snap = await store.snapshot()
                guests = {r.subject.id for r in snap.all_relationships()
                          if r.relation == "guest"}
                assert guests == {"a", "b", "d"}
            finally:
                await store.close()

        asyncio.run(run())
