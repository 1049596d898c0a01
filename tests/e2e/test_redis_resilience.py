"""Several servers on one Redis, and Redis dying under a running server."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as pb
from gatehouse.v1 import graph_pb2_grpc as pb_grpc
from tests.conftest import start_server
from tests.e2e.test_graph_service import check, ref, update
from tests.redis_server import RedisServer


def health(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def wait_until(predicate: object, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)  # poll interval of a bounded wait


class TestTwoServers:
    def test_write_on_one_server_is_seen_on_the_other_at_its_revision(
        self, tmp_path: Path, redis_server: RedisServer
    ) -> None:
        """A Check on server B at the revision a write on server A returned sees that write."""
        prefix = f"two{uuid.uuid4().hex[:6]}"
        common = ["--policy", "policies/coupler", "--redis-url", redis_server.url,
                  "--redis-prefix", prefix]
        a = start_server(tmp_path, *common, "--data", "examples/coupler.data.yaml")
        b = start_server(tmp_path, *common)
        try:
            graph_a = pb_grpc.GraphServiceStub(a.channel())
            authz_b = apb_grpc.AuthorizationServiceStub(b.channel())
            for i in range(20):
                w = graph_a.WriteRelationships(pb.WriteRelationshipsRequest(
                    updates=[update(f"workspace:globex#user@user:two{i}")]))
                resp = check(authz_b, f"user:two{i}", "view", "workspace:globex", at=w.revision)
                assert resp.decision == apb.DECISION_ALLOW
                assert int(resp.revision) >= int(w.revision)
            # The bootstrap data loaded by A is visible on B too.
            full = apb.CheckRequest(subject=ref("user:ben"), action="delete",
                                    resource=ref("data_flow:acme-sales-pipeline"),
                                    consistency=apb.Consistency(fully_consistent=True))
            assert authz_b.Check(full).decision == apb.DECISION_ALLOW
        finally:
            a.stop()
            b.stop()


class TestRedisCrash:
    def test_sigkill_loses_no_acknowledged_write_and_reads_keep_serving(
        self, tmp_path: Path
    ) -> None:
        """Redis SIGKILLed and restarted: acknowledged writes survive, reads answer meanwhile,
        writes fail UNAVAILABLE while it is down, and the follower recovers by itself."""
        redis = RedisServer(tmp_path / "redis").start()
        server = start_server(tmp_path, "--policy", "policies/coupler", "--data",
                              "examples/coupler.data.yaml", "--redis-url", redis.url)
        try:
            channel = server.channel()
            graph = pb_grpc.GraphServiceStub(channel)
            authz = apb_grpc.AuthorizationServiceStub(channel)
            acked = []
            last = "0"
            for i in range(50):
                w = graph.WriteRelationships(pb.WriteRelationshipsRequest(
                    updates=[update(f"workspace:initech#guest@user:crash{i}")]), timeout=5)
                acked.append(f"workspace:initech#guest@user:crash{i}")
                last = w.revision
            assert check(authz, "user:crash49", "view", "workspace:initech", at=last
                         ).decision == apb.DECISION_ALLOW

            redis.kill()
            # Reads at minimize latency keep answering from the index, correctly.
            for _ in range(5):
                assert check(authz, "user:crash7", "view", "workspace:initech").decision == \
                    apb.DECISION_ALLOW
                assert check(authz, "user:nobody", "view", "workspace:initech").decision == \
                    apb.DECISION_DENY
            with pytest.raises(grpc.RpcError) as info:
                graph.WriteRelationships(pb.WriteRelationshipsRequest(
                    updates=[update("workspace:initech#guest@user:while-down")]), timeout=15)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            wait_until(lambda: health(channel, "gatehouse.v1.GraphService") ==
                       health_pb2.HealthCheckResponse.NOT_SERVING, what="degraded health")
            assert health(channel, "gatehouse.v1.AuthorizationService") == \
                health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as info:
                authz.Check(apb.CheckRequest(
                    subject=ref("user:crash7"), action="view", resource=ref("workspace:initech"),
                    consistency=apb.Consistency(fully_consistent=True)), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

            redis.start()
            wait_until(lambda: health(channel, "gatehouse.v1.GraphService") ==
                       health_pb2.HealthCheckResponse.SERVING, what="recovered health")
            # Every acknowledged write is still there (AOF, appendfsync always).
            msgs = list(graph.ReadRelationships(pb.ReadRelationshipsRequest(
                filter=pb.RelationshipFilter(resource_type="workspace", resource_id="initech",
                                             relation="guest"),
                consistency=apb.Consistency(fully_consistent=True))))
            stored = {f"workspace:initech#guest@user:{m.relationship.subject.id}"
                      for m in msgs if m.HasField("relationship")}
            assert set(acked) <= stored
            assert "workspace:initech#guest@user:while-down" not in stored
            # The follower tails again: a new write is visible at its revision.
            w = graph.WriteRelationships(pb.WriteRelationshipsRequest(
                updates=[update("workspace:initech#guest@user:after")]), timeout=5)
            assert int(w.revision) > int(last)
            assert check(authz, "user:after", "view", "workspace:initech", at=w.revision
                         ).decision == apb.DECISION_ALLOW
        finally:
            server.stop()
            redis.stop()

    def test_wiped_redis_makes_the_index_rebuild(self, tmp_path: Path) -> None:
        """If Redis loses its data (new epoch), the server rebuilds its index from scratch."""
        redis = RedisServer(tmp_path / "redis").start()
        server = start_server(tmp_path, "--policy", "policies/coupler", "--data",
                              "examples/coupler.data.yaml", "--redis-url", redis.url)
        try:
            channel = server.channel()
            authz = apb_grpc.AuthorizationServiceStub(channel)
            graph = pb_grpc.GraphServiceStub(channel)
            assert check(authz, "user:ben", "view", "workspace:acme").decision == \
                apb.DECISION_ALLOW
            redis.flushall()
            w = graph.WriteRelationships(pb.WriteRelationshipsRequest(
                updates=[update("workspace:fresh#parent@organization:neworg"),
                         update("workspace:fresh#user@user:ben")]), timeout=5)
            wait_until(lambda: check(authz, "user:ben", "view", "workspace:acme").decision ==
                       apb.DECISION_DENY, what="index rebuilt without the lost data")
            assert check(authz, "user:ben", "view", "workspace:fresh", at=w.revision
                         ).decision == apb.DECISION_ALLOW
            assert "rebuilding the index" in server.logs()
        finally:
            server.stop()
            redis.stop()


class TestDataFileOnRedis:
    def test_loading_the_same_data_file_again_changes_nothing(self, tmp_path: Path,
                                                              redis_server: RedisServer) -> None:
        """A restart that loads --data again leaves exactly the same relationships."""
        prefix = f"idem{uuid.uuid4().hex[:6]}"
        args = ["--policy", "policies/coupler", "--data", "examples/coupler.data.yaml",
                "--redis-url", redis_server.url, "--redis-prefix", prefix]

        def read_all(server: object) -> list[str]:
            stub = pb_grpc.GraphServiceStub(server.channel())  # type: ignore[attr-defined]
            out = []
            for rtype in ("organization", "workspace", "data_flow", "connection", "dashboard",
                          "ai_chat"):
                req = pb.ReadRelationshipsRequest(
                    filter=pb.RelationshipFilter(resource_type=rtype),
                    consistency=apb.Consistency(fully_consistent=True))
                out += [str(m.relationship) for m in stub.ReadRelationships(req)
                        if m.HasField("relationship")]
            return sorted(out)

        first = start_server(tmp_path, *args)
        before = read_all(first)
        first.stop()
        second = start_server(tmp_path, *args)
        try:
            assert read_all(second) == before
            assert len(before) == 33
        finally:
            second.stop()
