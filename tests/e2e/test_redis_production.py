"""Production Redis through the real server: an ACL user with exactly the documented
rules, a wrong password, a promoted replica with another history, a Sentinel failover."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from gatehouse.graph import conformance as graph_conformance
from gatehouse.graph.store import GraphStore
from gatehouse.usage import conformance as usage_conformance
from gatehouse.usage.events import UsageStore
from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as pb
from gatehouse.v1 import graph_pb2_grpc as pb_grpc
from gatehouse.v1 import usage_pb2 as upb
from gatehouse.v1 import usage_pb2_grpc as upb_grpc
from tests.conftest import GATEHOUSE, ROOT, free_port, start_server
from tests.e2e.test_graph_service import check, ref, update
from tests.e2e.test_redis_resilience import wait_until
from tests.redis_server import RedisServer, SentinelServer

PASSWORD = "gh-Secret-7f3a9"
ADMIN = ("admin", "admin-Secret-19c2")
DOC = ROOT / "docs" / "redis-production.md"


def documented_acl() -> str:
    """The ACL line docs/redis-production.md gives, as written there."""
    text = DOC.read_text()
    block = text.split("<!-- acl-rules:", 1)[1]
    found = re.search(r"```\n(user gatehouse [^\n]+)\n```", block)
    assert found, "docs/redis-production.md lost its ACL block"
    return found.group(1)


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis whose default user is off; gatehouse's user has exactly the documented rules."""
    rules = documented_acl().replace(">CHANGE-ME", f">{PASSWORD}")
    server = RedisServer(tmp_path_factory.mktemp("acl-redis"), config=[
        "user default off",
        f"user {ADMIN[0]} on >{ADMIN[1]} ~* &* +@all",
        rules,
    ], admin=ADMIN).start()
    yield server
    server.stop()


def user_url(server: RedisServer, password: str = PASSWORD) -> str:
    return f"redis://gatehouse:{password}@127.0.0.1:{server.port}/0"


class _AclGraphBackend(graph_conformance.RedisBackend):
    """The Redis backend as the ACL user, under prefixes the rules allow (``gh:…``)."""

    def __init__(self, url: str, admin: RedisServer) -> None:
        super().__init__(url)
        self.admin = admin

    @asynccontextmanager
    async def open(self, changelog_limit: int | None = None) -> AsyncIterator[GraphStore]:
        from gatehouse.graph.redis import CHANGELOG_MAXLEN, RedisGraphStore

        store = RedisGraphStore(self.url, prefix=f"gh:t{uuid.uuid4().hex[:10]}",
                                changelog_maxlen=changelog_limit or CHANGELOG_MAXLEN)
        try:
            yield store
        finally:
            await store.close()

    async def trim_changelog(self, store: GraphStore, keep: int) -> None:
        # Trimming is the test's doing, not gatehouse's: the admin does it.
        from gatehouse.graph.redis import RedisGraphStore

        assert isinstance(store, RedisGraphStore)
        client = self.admin.client()
        try:
            client.xtrim(f"{store.prefix}:log", maxlen=keep, approximate=False)
        finally:
            client.close()


class _AclUsageBackend(usage_conformance.RedisBackend):
    @asynccontextmanager
    async def open(self) -> AsyncIterator[UsageStore]:
        from gatehouse.usage.redis import RedisUsageStore

        store = RedisUsageStore(self.url, prefix=f"gh:u{uuid.uuid4().hex[:10]}")
        try:
            yield store
        finally:
            await store.close()


class TestAclUser:
    @pytest.mark.parametrize("item", graph_conformance.SCENARIOS,
                             ids=[s.name for s in graph_conformance.SCENARIOS])
    def test_graph_conformance_as_the_documented_user(
        self, acl_redis: RedisServer, item: graph_conformance.Scenario
    ) -> None:
        """The graph store passes its whole conformance suite with only the documented ACL."""
        asyncio.run(graph_conformance.run_scenario(
            _AclGraphBackend(user_url(acl_redis), acl_redis), item))

    @pytest.mark.parametrize("item", usage_conformance.SCENARIOS,
                             ids=[s.name for s in usage_conformance.SCENARIOS])
    def test_usage_conformance_as_the_documented_user(
        self, acl_redis: RedisServer, item: usage_conformance.Scenario
    ) -> None:
        """The usage store passes its conformance suite with only the documented ACL."""
        asyncio.run(usage_conformance.run_scenario(_AclUsageBackend(user_url(acl_redis)),
                                                   item))

    def test_a_command_the_acl_denies_in_a_script_names_the_acl(
        self, acl_redis: RedisServer
    ) -> None:
        """A grouped script item whose command the user may not run is refused alone (its
        neighbour is answered), as UNAVAILABLE pointing at the documented ACL rules,
        not as a failure of the item's own data."""
        from gatehouse.redisconn import RedisOptions, open_client, parse_url
        from gatehouse.redisscript import BatchedScript, unreachable

        lua = ("return run_items(1, function(arg) if arg == 'deny' then "
               "return redis.call('KEYS', 'gh:*') end "
               "return redis.call('INCR', 'gh:acl-test') end)")

        async def run() -> None:
            client = open_client(parse_url(user_url(acl_redis)), RedisOptions())
            try:
                script = BatchedScript(client, lua, lambda: [])
                denied, fine = await asyncio.gather(script("deny"), script("ok"),
                                                    return_exceptions=True)
                assert fine == [1]
                assert isinstance(denied, Exception)
                assert "docs/redis-production.md" in str(unreachable(denied))
            finally:
                await client.aclose()

        asyncio.run(run())

    def test_server_serves_as_the_documented_user(
        self, tmp_path: Path, acl_redis: RedisServer
    ) -> None:
        """gatehouse serve as the ACL user: data load, writes, Checks at the write's revision,
        consistent reads, Watch replay and usage all work, and the password is in no log."""
        server = start_server(tmp_path, "--policy", "policies/coupler", "--data",
                              "examples/coupler.data.yaml", "--redis-url", user_url(acl_redis))
        try:
            channel = server.channel()
            graph = pb_grpc.GraphServiceStub(channel)
            authz = apb_grpc.AuthorizationServiceStub(channel)
            usage = upb_grpc.UsageServiceStub(channel)
            w = graph.WriteRelationships(pb.WriteRelationshipsRequest(
                updates=[update("workspace:acme#guest@user:acl1")]), timeout=10)
            assert check(authz, "user:acl1", "view", "workspace:acme", at=w.revision
                         ).decision == apb.DECISION_ALLOW
            assert check(authz, "user:ben", "delete", "data_flow:acme-sales-pipeline"
                         ).decision == apb.DECISION_ALLOW
            full = apb.CheckRequest(subject=ref("user:acl1"), action="view",
                                    resource=ref("workspace:acme"),
                                    consistency=apb.Consistency(fully_consistent=True))
            assert authz.Check(full, timeout=10).decision == apb.DECISION_ALLOW
            msgs = list(graph.ReadRelationships(pb.ReadRelationshipsRequest(
                filter=pb.RelationshipFilter(resource_type="workspace", resource_id="acme",
                                             relation="guest"),
                consistency=apb.Consistency(fully_consistent=True)), timeout=10))
            assert any(m.relationship.subject.id == "acl1" for m in msgs
                       if m.HasField("relationship"))
            stream = graph.Watch(pb.WatchRequest(
                after_revision=str(int(w.revision) - 1)), timeout=10)
            first = next(iter(stream))
            stream.cancel()
            assert first.revision == w.revision
            rec = usage.RecordUsage(upb.RecordUsageRequest(organization_id="northwind", events=[
                upb.UsageEvent(event_id=f"acl-{uuid.uuid4().hex}", workspace_id="acme",
                               metric="llm_credits", amount=3)]), timeout=10)
            assert [r.duplicate for r in rec.results] == [False]
            got = usage.ComputeUsage(upb.ComputeUsageRequest(organization_id="northwind"),
                                     timeout=10)
            assert {m.name: m.value for m in got.metrics}["llm_credits"] >= 3
            assert PASSWORD not in server.logs()
        finally:
            server.stop()

    def test_wrong_password_stops_start_up_without_echoing_it(
        self, tmp_path: Path, acl_redis: RedisServer
    ) -> None:
        """A wrong password: serve exits at start-up saying the credentials were refused,
        and neither the wrong nor the right password appears in its output."""
        wrong = "Wrong-Pass-4412"
        proc = subprocess.run(
            [*GATEHOUSE, "serve", "--listen", f"127.0.0.1:{free_port()}", "--policy",
             "policies/coupler", "--redis-url", user_url(acl_redis, wrong)],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, out
        assert "redis refused the credentials" in out
        assert "check the user name and password in the Redis URL" in out
        assert wrong not in out and PASSWORD not in out

    def test_malformed_url_names_the_part_and_hides_the_password(self, tmp_path: Path) -> None:
        """A malformed URL stops serve with exit 2, naming the bad part, never the password."""
        proc = subprocess.run(
            [*GATEHOUSE, "serve", "--listen", f"127.0.0.1:{free_port()}", "--redis-url",
             f"redis+sentinel://u:{PASSWORD}@127.0.0.1:26379,127.0.0.1:26x/master"],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert "the port of sentinel 2 ('26x')" in proc.stderr
        assert PASSWORD not in proc.stderr + proc.stdout


def guests(graph: pb_grpc.GraphServiceStub, workspace: str) -> set[str]:
    msgs = graph.ReadRelationships(pb.ReadRelationshipsRequest(
        filter=pb.RelationshipFilter(resource_type="workspace", resource_id=workspace,
                                     relation="guest"),
        consistency=apb.Consistency(fully_consistent=True)), timeout=10)
    return {m.relationship.subject.id for m in msgs if m.HasField("relationship")}


def wait_synced(replica: RedisServer, timeout: float = 20) -> None:
    client = replica.client()
    try:
        wait_until(lambda: client.info("replication").get("master_link_status") == "up",
                   timeout, "replication link up")
    finally:
        client.close()


class TestAnotherHistory:
    def test_index_rebuilds_when_the_store_now_holds_another_history(
        self, tmp_path: Path
    ) -> None:
        """The store is replaced by a copy that missed the last acknowledged writes and then
        took others under the same revision numbers (a promoted replica): the server
        rebuilds its index from it, so Checks show the new writes, not the lost ones."""
        primary = RedisServer(tmp_path / "p", config=["replica-read-only no"]).start()
        other = RedisServer(tmp_path / "r", config=[
            f"replicaof 127.0.0.1 {primary.port}"]).start()
        server = other_server = None
        try:
            server = start_server(tmp_path, "--policy", "policies/coupler", "--data",
                                  "examples/coupler.data.yaml", "--redis-url", primary.url)
            graph = pb_grpc.GraphServiceStub(server.channel())
            authz = apb_grpc.AuthorizationServiceStub(server.channel())
            wait_synced(other)
            # The copy leaves: it holds everything so far, and nothing after.
            admin = other.client()
            admin.execute_command("REPLICAOF", "NO", "ONE")
            admin.close()
            lost = [f"lost{i}" for i in range(3)]
            last = ""
            for name in lost:
                last = graph.WriteRelationships(pb.WriteRelationshipsRequest(
                    updates=[update(f"workspace:initech#guest@user:{name}")]),
                    timeout=10).revision
            assert check(authz, "user:lost2", "view", "workspace:initech", at=last
                         ).decision == apb.DECISION_ALLOW
            # The copy takes other writes under the same revision numbers, and more.
            other_server = start_server(tmp_path, "--policy", "policies/coupler",
                                        "--redis-url", other.url)
            other_graph = pb_grpc.GraphServiceStub(other_server.channel())
            kept = [f"kept{i}" for i in range(len(lost) + 1)]
            newest = ""
            for name in kept:
                newest = other_graph.WriteRelationships(pb.WriteRelationshipsRequest(
                    updates=[update(f"workspace:initech#guest@user:{name}")]),
                    timeout=10).revision
            assert int(newest) > int(last)
            other_server.stop()
            # The "failover": the server's Redis now holds the copy's history.
            admin = primary.client()
            admin.execute_command("REPLICAOF", "127.0.0.1", str(other.port))
            admin.close()
            wait_synced(primary)
            for name in kept:
                assert check(authz, f"user:{name}", "view", "workspace:initech", at=newest
                             ).decision == apb.DECISION_ALLOW, name
            for name in lost:
                assert check(authz, f"user:{name}", "view", "workspace:initech", at=newest
                             ).decision == apb.DECISION_DENY, name
            assert guests(graph, "initech") >= set(kept)
            assert "rebuilding the index" in server.logs()
        finally:
            for proc in (server, other_server):
                if proc is not None:
                    proc.stop()
            other.stop()
            primary.stop()


class _Writer:
    """Writes relationships one after another in a thread, recording those acknowledged."""

    def __init__(self, graph: pb_grpc.GraphServiceStub) -> None:
        self.graph = graph
        self.acked: dict[str, str] = {}
        self.failures = 0
        self.unexpected: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            name = f"fo{i}"
            try:
                w = self.graph.WriteRelationships(pb.WriteRelationshipsRequest(
                    updates=[update(f"workspace:initech#guest@user:{name}")]), timeout=3)
                self.acked[name] = w.revision
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    self.unexpected.append(f"{exc.code().name}: {exc.details()}")
                self.failures += 1
                time.sleep(0.05)  # pace retries while no primary answers
            i += 1


class TestSentinelFailover:
    def test_failover_is_survived_without_restart(self, tmp_path: Path) -> None:
        """Primary SIGKILLed under a stream of writes: Checks keep answering, writes come
        back on the promoted replica within a bound, every write acknowledged with
        --redis-wait-replicas 1 is still there, the index follows the new primary, and a
        Watch stream opened before the failover delivers every acknowledged write."""
        primary = RedisServer(tmp_path / "p").start()
        # Two replicas: after the failover one is the new primary and the other its
        # replica, so writes acknowledged with --redis-wait-replicas 1 resume.
        replicas = [RedisServer(tmp_path / f"r{i}", config=[
            f"replicaof 127.0.0.1 {primary.port}"]).start() for i in range(2)]
        sentinel = None
        server = None
        try:
            for replica in replicas:
                wait_synced(replica)
            sentinel = SentinelServer(tmp_path / "s", "gh-main", primary.port,
                                      password="sentinel-Secret-5").start()
            wait_until(lambda: sentinel.known_replicas() == 2, 20,
                       "sentinel sees the replicas")
            dead = free_port()  # a Sentinel that is down: the next one in the list answers
            url = (f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{sentinel.port}/gh-main/0"
                   "?sentinel_password=sentinel-Secret-5")
            server = start_server(tmp_path, "--policy", "policies/coupler", "--data",
                                  "examples/coupler.data.yaml", "--redis-url", url,
                                  "--redis-wait-replicas", "1", "--redis-wait-timeout", "2",
                                  "--redis-connect-timeout", "1")
            assert "sentinel-Secret-5" not in server.logs()
            channel = server.channel()
            graph = pb_grpc.GraphServiceStub(channel)
            authz = apb_grpc.AuthorizationServiceStub(channel)
            # A Watch stream opened before the failover keeps delivering after it.
            stream = graph.Watch(pb.WatchRequest(), timeout=60)
            watched: list[str] = []

            def watch() -> None:
                with contextlib.suppress(grpc.RpcError):
                    for msg in stream:
                        watched.extend(u.relationship.subject.id
                                       for u in msg.relationship_updates)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            for i in range(100):  # until the stream is surely subscribed
                graph.WriteRelationships(pb.WriteRelationshipsRequest(
                    updates=[update(f"workspace:initech#guest@user:watch-start{i}")]),
                    timeout=10)
                time.sleep(0.1)  # pace of a bounded wait
                if watched:
                    break
            assert watched, "the Watch stream never started"
            writer = _Writer(graph)
            writer.thread.start()
            wait_until(lambda: len(writer.acked) >= 20, 20, "writes before the failover")

            primary.kill()
            killed = time.monotonic()
            count_at_kill = len(writer.acked)
            # Reads keep answering from the index while there is no primary.
            assert check(authz, "user:fo0", "view", "workspace:initech").decision == \
                apb.DECISION_ALLOW
            assert check(authz, "user:nobody", "view", "workspace:initech").decision == \
                apb.DECISION_DENY
            wait_until(lambda: len(writer.acked) > count_at_kill + 5, 45,
                       "writes acknowledged by the promoted replica")
            recovered = time.monotonic() - killed
            writer.stop.set()
            writer.thread.join(10)
            assert writer.unexpected == []
            assert sentinel.primary_port() in {r.port for r in replicas}
            print(f"failover: writes acknowledged again {recovered:.1f} s after the kill "
                  f"({writer.failures} UNAVAILABLE answers meanwhile)")
            # Every acknowledged write is on the new primary ...
            assert set(writer.acked) <= guests(graph, "initech")
            # ... and visible to a Check at its revision: the index follows the new primary.
            name, revision = max(writer.acked.items(), key=lambda kv: int(kv[1]))
            assert check(authz, f"user:{name}", "view", "workspace:initech", at=revision
                         ).decision == apb.DECISION_ALLOW
            w = graph.WriteRelationships(pb.WriteRelationshipsRequest(
                updates=[update("workspace:initech#guest@user:after-failover")]), timeout=10)
            assert check(authz, "user:after-failover", "view", "workspace:initech",
                         at=w.revision).decision == apb.DECISION_ALLOW
            wait_until(lambda: "after-failover" in watched, 10, "the Watch stream to go on")
            stream.cancel()
            watcher.join(5)
            assert set(writer.acked) <= set(watched)
            assert check(authz, "user:ben", "delete", "data_flow:acme-sales-pipeline"
                         ).decision == apb.DECISION_ALLOW
        finally:
            if server is not None:
                server.stop()
            if sentinel is not None:
                sentinel.stop()
            for replica in replicas:
                replica.stop()
            primary.stop()
