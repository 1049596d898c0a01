"""`gatehouse serve` as an operator runs it: start-up errors, reload, shutdown."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
import redis

from gatehouse.v1 import authorization_pb2 as pb
from gatehouse.v1 import authorization_pb2_grpc as pb_grpc
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from tests.conftest import GATEHOUSE, ROOT, free_port, start_server
from tests.e2e.test_grpcurl import run as grpcurl_run
from tests.redis_server import RedisServer


def serve_once(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATEHOUSE, "serve", "--listen", f"127.0.0.1:{free_port()}", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def check(address: str, subject: str, action: str, resource: str) -> pb.CheckResponse:
    r_type, _, r_id = resource.partition(":")
    with grpc.insecure_channel(address) as ch:
        return pb_grpc.AuthorizationServiceStub(ch).Check(pb.CheckRequest(
            subject=pb.ObjectReference(type="user", id=subject), action=action,
            resource=pb.ObjectReference(type=r_type, id=r_id)), timeout=5)


class TestStartup:
    def test_broken_policy_refuses_to_start_with_positions(self, tmp_path: Path) -> None:
        """A policy error stops start-up and prints file:line:column with the reason."""
        policy = tmp_path / "policy"
        shutil.copytree(ROOT / "policies/coupler", policy)
        text = (policy / "policy.yaml").read_text()
        (policy / "policy.yaml").write_text(text.replace("workspace.admin]", "workspace.owner]", 1))
        out = serve_once("--policy", str(policy))
        assert out.returncode == 1
        assert f"{policy}/policy.yaml:" in out.stderr
        assert "unknown role 'workspace.owner'" in out.stderr
        assert "workspace.admin" in out.stderr  # the known roles are listed

    def test_broken_data_file_refuses_to_start_with_line(self, tmp_path: Path) -> None:
        """A bad relationship line stops start-up and names its line; nothing is served."""
        data = tmp_path / "data.yaml"
        data.write_text("relationships:\n  - workspace:a#parent@organization:o\n"
                        "  - workspace:a#pilot@user:x\n")
        out = serve_once("--data", str(data))
        assert out.returncode == 1
        assert f"{data}:3:5" in out.stderr
        assert "no relation 'pilot'" in out.stderr

    def test_data_file_breaking_a_rule_late_leaves_redis_untouched(
            self, tmp_path: Path, redis_server: RedisServer) -> None:
        """`serve --data --redis-url` with a constraint broken at the end of a file larger than
        one chunk exits 1 naming the constraint and writes nothing to Redis."""
        lines = ["relationships:"]
        for i in range(1500):  # 3,000 operations: more than one 2,000-operation chunk
            lines += [f"  - workspace:w{i}#parent@organization:o",
                      f"  - workspace:w{i}#user@user:u{i}"]
        lines += ["  - organization:o#ai_workspace@workspace:w1",
                  "  - organization:o#ai_workspace@workspace:w2"]
        data = tmp_path / "data.yaml"
        data.write_text("\n".join(lines) + "\n")
        prefix = f"late{uuid.uuid4().hex[:8]}"
        out = serve_once("--data", str(data), "--redis-url", redis_server.url,
                         "--redis-prefix", prefix)
        assert out.returncode == 1, out.stderr
        assert "one_ai_workspace" in out.stderr and "nothing from it was written" in out.stderr
        client = redis.Redis.from_url(redis_server.url)
        try:
            assert client.get(f"{prefix}:rev") in (None, b"0")
            assert client.scard(f"{prefix}:scopes") == 0
            assert client.xlen(f"{prefix}:log") == 0
        finally:
            client.close()

    def test_workers_above_one_need_redis(self) -> None:
        """The memory store refuses --workers 2 and says why."""
        out = serve_once("--workers", "2")
        assert out.returncode == 2
        assert "needs a shared store" in out.stderr


class TestRunning:
    def test_sigterm_shuts_down_cleanly(self, tmp_path: Path) -> None:
        """SIGTERM drains and exits 0, logging the shutdown."""
        server = start_server(tmp_path)
        assert check(server.address, "olivia", "view", "workspace:acme").decision == \
            pb.DECISION_ALLOW
        assert server.stop(signal.SIGTERM) == 0
        assert '"msg": "stopped"' in server.logs()

    def test_sigterm_under_load_exits_cleanly(self, tmp_path: Path) -> None:
        """SIGTERM while Checks pour in and a Watch stream is open: exit 0, every call ends.

        Calls in flight finish; later ones fail UNAVAILABLE; the open stream is
        cancelled after the grace. Never a crash, never a hung client.
        """
        server = start_server(tmp_path, "--data", str(ROOT / "examples/coupler.data.yaml"))
        ch = server.channel()
        stub = pb_grpc.AuthorizationServiceStub(ch)
        req = pb.CheckRequest(subject=pb.ObjectReference(type="user", id="uma"), action="edit",
                              resource=pb.ObjectReference(type="data_flow",
                                                          id="acme-sales-pipeline"))
        stop = threading.Event()
        seen: list[str] = []

        def blast() -> None:
            while not stop.is_set():
                for f in [stub.Check.future(req, timeout=10) for _ in range(64)]:
                    try:
                        seen.append("allow" if f.result().decision == pb.DECISION_ALLOW
                                    else "deny")
                    except grpc.RpcError as exc:
                        seen.append(exc.code().name)

        def watch() -> None:
            try:
                for _ in gpb_grpc.GraphServiceStub(ch).Watch(gpb.WatchRequest(), timeout=30):
                    pass
            except grpc.RpcError as exc:
                seen.append("watch:" + exc.code().name)

        threads = [threading.Thread(target=blast) for _ in range(2)]
        threads.append(threading.Thread(target=watch))
        for t in threads:
            t.start()
        # Signal only once Checks are answered under load (not after a guessed delay).
        deadline = time.monotonic() + 20
        while seen.count("allow") < 64:
            assert time.monotonic() < deadline, server.logs()
            time.sleep(0.01)  # polling interval, not synchronisation
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(30)
        stop.set()
        for t in threads:
            t.join(30)
        assert code == 0, server.logs()
        assert not any(t.is_alive() for t in threads)
        assert "allow" in seen and "deny" not in seen
        assert set(seen) <= {"allow", "UNAVAILABLE", "CANCELLED", "watch:UNAVAILABLE",
                             "watch:CANCELLED"}, set(seen)

    def test_policy_hot_reload_keeps_last_good_policy(self, tmp_path: Path) -> None:
        """A valid edit is picked up; a broken edit is logged and the old policy keeps serving."""
        policy = tmp_path / "policy"
        shutil.copytree(ROOT / "policies/coupler", policy)
        server = start_server(tmp_path, "--policy", str(policy), "--data",
                              str(ROOT / "examples/coupler.data.yaml"))
        try:
            first = check(server.address, "uma", "delete", "data_flow:acme-sales-pipeline")
            assert first.decision == pb.DECISION_DENY
            text = (policy / "policy.yaml").read_text()
            # Valid edit: workspace users may now delete every flow.
            edited = text.replace(
                "actions: [view, run, edit]\n      roles: [workspace.user]",
                "actions: [view, run, edit, delete]\n      roles: [workspace.user]", 1)
            assert edited != text
            (policy / "policy.yaml").write_text(edited)
            second = _wait_for_version_change(server.address, first.policy_version)
            assert second.decision == pb.DECISION_ALLOW
            # Broken edit: rejected, logged with its position, old policy still serves.
            (policy / "policy.yaml").write_text(edited + "\nbogus_section: 1\n")
            deadline = time.monotonic() + 10
            while "policy reload rejected" not in server.logs():
                assert time.monotonic() < deadline, server.logs()
                time.sleep(0.1)  # poll interval of a bounded wait
            assert "unknown top-level key 'bogus_section'" in server.logs()
            third = check(server.address, "uma", "delete", "data_flow:acme-sales-pipeline")
            assert third.decision == pb.DECISION_ALLOW
            assert third.policy_version == second.policy_version
        finally:
            server.stop()


def _wait_for_version_change(address: str, old: str) -> pb.CheckResponse:
    deadline = time.monotonic() + 10
    while True:
        resp = check(address, "uma", "delete", "data_flow:acme-sales-pipeline")
        if resp.policy_version != old:
            return resp
        if time.monotonic() > deadline:
            pytest.fail("policy was not reloaded within 10 s")
        time.sleep(0.1)  # poll interval of a bounded wait


class TestTransport:
    def test_auto_logs_which_transport_serves_and_why(self, tmp_path: Path) -> None:
        """The default (auto) says in its log which transport serves and why."""
        server = start_server(tmp_path)
        try:
            assert check(server.address, "olivia", "view", "workspace:acme").decision == \
                pb.DECISION_ALLOW
            logs = server.logs()
        finally:
            server.stop()
        assert "serving gRPC with the core transport: grpcio " in logs, logs
        assert '"reason": ' in logs

    def test_aio_transport_serves_the_same_api(self, tmp_path: Path) -> None:
        """--transport aio answers Check, streams, reflection and errors like core, and says so."""
        server = start_server(tmp_path, "--transport", "aio", "--data",
                              str(ROOT / "examples/coupler.data.yaml"))
        try:
            assert check(server.address, "uma", "edit", "data_flow:acme-sales-pipeline"
                         ).decision == pb.DECISION_ALLOW
            assert check(server.address, "uma", "delete", "data_flow:acme-sales-pipeline"
                         ).decision == pb.DECISION_DENY
            stub = pb_grpc.AuthorizationServiceStub(server.channel())
            with pytest.raises(grpc.RpcError) as info:
                stub.Check(pb.CheckRequest(action="view"), timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            listed = list(stub.ListAccessible(pb.ListAccessibleRequest(
                subject=pb.ObjectReference(type="user", id="uma"), resource_type="data_flow",
                action="view"), timeout=5))
            assert listed[-1].complete and any(r.resource_ids for r in listed)
            out = grpcurl_run("-plaintext", server.address, "list")  # reflection, a stream
            assert "gatehouse.v1.AuthorizationService" in out.stdout.split(), out.stderr
            assert server.stop(signal.SIGTERM) == 0
        finally:
            server.stop()
        assert '"transport": "aio"' in server.logs()

    def test_an_unknown_transport_is_refused(self) -> None:
        """GATEHOUSE_TRANSPORT other than auto/core/aio stops start-up with exit 2."""
        out = subprocess.run([*GATEHOUSE, "serve", "--listen", f"127.0.0.1:{free_port()}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=30,
                             env={**os.environ, "GATEHOUSE_TRANSPORT": "fast"})
        assert out.returncode == 2
        assert "must be auto, core or aio" in out.stderr
