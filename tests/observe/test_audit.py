"""The decision audit log, through a real server on loopback: what each line says,
what it never says, sampling, rotation, shutdown, and a full queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from gatehouse.observe.audit import AuditHook, AuditWriter, RotatingFile
from gatehouse.transport import CallInfo, CallOutcome
from gatehouse.transport.notes import REQUEST, RESPONSE
from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from tests.conftest import (
    GATEHOUSE,
    ROOT,
    ServerProcess,
    free_port,
    start_on_store,
    start_server,
    wait_serving,
)
from tests.e2e.test_graph_service import ref, update
from tests.e2e.test_tenancy import Client
from tests.redis_server import RedisServer

CHECK = "/gatehouse.v1.AuthorizationService/Check"
BULK = "/gatehouse.v1.AuthorizationService/CheckBulk"
SECRET = "SECRETVALUE"
KEYED = (("authorization", f"Bearer {SECRET}"),)
COMMON = {"time", "kind", "method", "key", "peer", "status", "duration_ms"}


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` parsed as JSON (a line that is not JSON fails the test)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_lines(path: Path, match: Callable[[dict[str, Any]], bool], count: int = 1,
               timeout: float = 10) -> list[dict[str, Any]]:
    """The lines of ``path`` that ``match``, once there are ``count`` (the writer is a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in read_lines(path) if match(line)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)  # poll interval of a bounded wait


def assert_common(line: dict[str, Any]) -> None:
    """Fields every line carries, in their documented form."""
    assert set(line) >= COMMON, line
    assert line["time"].endswith("Z")
    assert abs(datetime.fromisoformat(line["time"]).timestamp() - time.time()) < 300
    assert line["key"] == "anonymous"
    assert line["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:"))
    assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0


def check_req(subject: str, action: str, resource: str) -> apb.CheckRequest:
    return apb.CheckRequest(subject=ref(subject), action=action, resource=ref(resource))


@pytest.fixture(scope="module", params=["core", "aio"])
def audited(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[ServerProcess, Path]]:
    """The coupler sample on one transport, every call audited to a file."""
    tmp = tmp_path_factory.mktemp(f"audit-{request.param}")
    path = tmp / "audit.log"
    server = start_server(tmp, "--policy", "policies/coupler", "--data",
                          "examples/coupler.data.yaml", "--transport", request.param,
                          "--audit-log", str(path))
    yield server, path
    server.stop()


class TestLines:
    def test_a_check_allowed_and_one_denied(self, audited: tuple[ServerProcess, Path]) -> None:
        """One line each, with who asked, what, the decision, policy version and revision."""
        server, path = audited
        stub = apb_grpc.AuthorizationServiceStub(server.channel())
        allowed = stub.Check(check_req("user:uma", "edit", "data_flow:acme-sales-pipeline"),
                             metadata=KEYED, timeout=10)
        fresh = check_req("user:uma", "delete", "data_flow:acme-sales-pipeline")
        fresh.consistency.fully_consistent = True  # answered by the servicer, not inline
        denied = stub.Check(fresh, metadata=KEYED, timeout=10)
        assert allowed.decision == apb.DECISION_ALLOW and denied.decision == apb.DECISION_DENY
        lines = wait_lines(path, lambda ln: ln["method"] == CHECK
                           and ln.get("subject") == "user:uma"
                           and ln.get("resource") == "data_flow:acme-sales-pipeline", 2)
        by_action = {ln["action"]: ln for ln in lines}
        for action, resp, decision in (("edit", allowed, "allow"), ("delete", denied, "deny")):
            line = by_action[action]
            assert_common(line)
            assert line["kind"] == "check" and line["status"] == "OK"
            assert line["decision"] == decision
            assert line["policy_version"] == resp.policy_version
            assert line["revision"] == resp.revision

    def test_check_bulk_logs_one_line_per_item(self, audited: tuple[ServerProcess, Path]
                                               ) -> None:
        """Each item gets its own line with its own decision; a refused item says why."""
        server, path = audited
        stub = apb_grpc.AuthorizationServiceStub(server.channel())
        marker = f"bulk{uuid.uuid4().hex[:8]}"
        resp = stub.CheckBulk(apb.CheckBulkRequest(items=[
            check_req("user:uma", "edit", "data_flow:acme-sales-pipeline"),
            check_req("user:uma", "delete", "data_flow:acme-sales-pipeline"),
            check_req(f"user:{marker}", "no such action!", "data_flow:acme-sales-pipeline"),
        ]), timeout=10)
        assert resp.results[2].HasField("error")
        wait_lines(path, lambda ln: ln.get("subject") == f"user:{marker}")
        lines = read_lines(path)  # one call's lines are written together, in item order
        last = next(i for i, ln in enumerate(lines) if ln.get("subject") == f"user:{marker}")
        mine = lines[last - 2:last + 1]
        assert [ln["item"] for ln in mine] == [0, 1, 2]
        assert [ln["decision"] for ln in mine] == ["allow", "deny", "error"]
        assert mine[2]["status"] == "INVALID_ARGUMENT" and mine[2]["subject"] == f"user:{marker}"
        assert "action" in mine[2]["error"]
        for line in mine[:2]:
            assert_common(line)
            assert line["revision"] == resp.revision
            assert line["policy_version"] == resp.policy_version

    def test_a_failed_call_is_an_error_line_with_its_status(
            self, audited: tuple[ServerProcess, Path]) -> None:
        """A Check refused INVALID_ARGUMENT is logged as decision error, status named."""
        server, path = audited
        stub = apb_grpc.AuthorizationServiceStub(server.channel())
        marker = f"nosuchtype{uuid.uuid4().hex[:6]}"
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(check_req("user:uma", "edit", f"{marker}:x"), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        (line,) = wait_lines(path, lambda ln: ln.get("resource") == f"{marker}:x")
        assert_common(line)
        assert line["decision"] == "error" and line["status"] == "INVALID_ARGUMENT"
        assert "resource" in line["error"] and "revision" not in line

    def test_a_relationship_write(self, audited: tuple[ServerProcess, Path]) -> None:
        """A write is logged with its operation, what it touched and the revision it made."""
        server, path = audited
        stub = gpb_grpc.GraphServiceStub(server.channel())
        uid = f"w{uuid.uuid4().hex[:8]}"
        texts = [f"workspace:acme#user@user:{uid}{i}" for i in range(7)]
        resp = stub.WriteRelationships(gpb.WriteRelationshipsRequest(
            updates=[update(t) for t in texts]), metadata=KEYED, timeout=10)
        (line,) = wait_lines(path, lambda ln: ln["kind"] == "write"
                             and uid in json.dumps(ln.get("touched")))
        assert_common(line)
        assert line["operation"] == "WriteRelationships" and line["outcome"] == "ok"
        assert line["count"] == 7 and line["revision"] == resp.revision
        assert line["touched"] == [f"touch {t}" for t in texts[:5]]

    def test_invitations_are_logged_without_their_token(
            self, audited: tuple[ServerProcess, Path]) -> None:
        """InviteMember and AcceptInvitation: actor, target, organization; no token anywhere."""
        server, path = audited
        c = Client(server)
        owner = c.user()
        org, ws = c.org(owner)
        email = f"g{uuid.uuid4().hex[:6]}@example.com"
        guest = c.user(email)
        inv = c.invite(owner, f"workspace:{ws}", email, "guest")
        c.accept(inv.token, guest)
        invited = wait_lines(path, lambda ln: ln.get("operation") == "InviteMember"
                             and ln.get("target") == email)
        accepted = wait_lines(path, lambda ln: ln.get("operation") == "AcceptInvitation"
                              and ln.get("actor") == guest)
        assert len(invited) == 1 and len(accepted) == 1
        line = invited[0]
        assert_common(line)
        assert line["kind"] == "tenancy" and line["outcome"] == "ok"
        assert line["actor"] == owner
        assert line["details"]["scope"] == f"workspace:{ws}"
        assert line["details"]["role"] == "guest"
        assert line["details"]["invitation_id"] == inv.invitation_id
        created = wait_lines(path, lambda ln: ln.get("operation") == "CreateOrganization"
                             and ln.get("actor") == owner)
        assert created[0]["organization"] == org and created[0]["target"] == org
        assert accepted[0]["target"] == inv.invitation_id and "details" not in accepted[0]
        assert accepted[0]["outcome"] == "ok" and accepted[0]["revision"]
        text = path.read_text()
        secret = inv.token.partition(".")[2]
        assert len(secret) > 40 and secret not in text and inv.token not in text

    def test_no_api_key_or_authorization_header_is_logged(
            self, audited: tuple[ServerProcess, Path]) -> None:
        """Calls sent with an authorization header leave no trace of it in the log."""
        server, path = audited
        stub = apb_grpc.AuthorizationServiceStub(server.channel())
        stub.Check(check_req("user:uma", "view", "data_flow:acme-sales-pipeline"),
                   metadata=KEYED, timeout=10)
        wait_lines(path, lambda ln: ln.get("action") == "view")
        text = path.read_text()
        assert SECRET not in text and "Bearer" not in text and "authorization" not in text

    def test_list_accessible(self, audited: tuple[ServerProcess, Path]) -> None:
        """A listing is logged with its subject, action, resource type and revision."""
        server, path = audited
        stub = apb_grpc.AuthorizationServiceStub(server.channel())
        last = list(stub.ListAccessible(apb.ListAccessibleRequest(
            subject=ref("user:uma"), action="edit", resource_type="data_flow"), timeout=10))[-1]
        lines = wait_lines(path, lambda ln: ln["kind"] == "list" and ln["action"] == "edit")
        assert lines[-1]["subject"] == "user:uma" and lines[-1]["resource"] == "data_flow"
        assert lines[-1]["decision"] == "list" and lines[-1]["revision"] == last.revision


class TestSampling:
    def test_sampling_zero_logs_no_check_but_every_write(self, tmp_path: Path) -> None:
        """--audit-sample-checks 0: Checks leave no line; writes and tenancy calls all do."""
        path = tmp_path / "audit.log"
        server = start_server(tmp_path, "--policy", "policies/coupler", "--data",
                              "examples/coupler.data.yaml", "--audit-log", str(path),
                              "--audit-sample-checks", "0")
        try:
            stub = apb_grpc.AuthorizationServiceStub(server.channel())
            for _ in range(20):
                stub.Check(check_req("user:uma", "edit", "data_flow:acme-sales-pipeline"),
                           timeout=10)
            stub.CheckBulk(apb.CheckBulkRequest(items=[
                check_req("user:uma", "edit", "data_flow:acme-sales-pipeline")]), timeout=10)
            c = Client(server)
            graph = gpb_grpc.GraphServiceStub(server.channel())
            for i in range(3):
                graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[
                    update(f"workspace:acme#user@user:s{i}")]), timeout=10)
            c.org(c.user())
        finally:
            assert server.stop() == 0
        lines = read_lines(path)
        assert [ln["kind"] for ln in lines if ln["kind"] in ("check", "list")] == []
        assert sum(ln.get("operation") == "WriteRelationships" for ln in lines) == 3
        assert sum(ln.get("operation") == "WriteObjects" for ln in lines) == 1
        assert sum(ln.get("operation") == "CreateOrganization" for ln in lines) == 1

    def test_decisions_are_counted_whatever_the_sampling(self) -> None:
        """gatehouse_decisions_total counts every decision, a CheckBulk item each."""
        def value(result: str) -> float:
            v = REGISTRY.get_sample_value("gatehouse_decisions_total", {"result": result})
            return v or 0.0

        before = {r: value(r) for r in ("allow", "deny", "error")}
        hook = AuditHook(None)
        ok = CallOutcome(grpc.StatusCode.OK, "", 0.001)
        allow = apb.CheckResponse(decision=apb.DECISION_ALLOW)
        bulk = apb.CheckBulkResponse(results=[
            apb.CheckBulkItem(response=allow),
            apb.CheckBulkItem(response=apb.CheckResponse(decision=apb.DECISION_DENY)),
            apb.CheckBulkItem(response=apb.CheckResponse(decision=apb.DECISION_DENY)),
        ])
        bulk.results.add().error.code = 3
        hook.after(CallInfo(CHECK, (), "ipv4:127.0.0.1:1", notes={RESPONSE: allow}), ok)
        hook.after(CallInfo(BULK, (), "ipv4:127.0.0.1:1", notes={RESPONSE: bulk}), ok)
        hook.after(CallInfo(CHECK, (), "ipv4:127.0.0.1:1"),
                   CallOutcome(grpc.StatusCode.UNAUTHENTICATED, "", 0.001))
        after = {r: value(r) for r in ("allow", "deny", "error")}
        assert {r: after[r] - before[r] for r in after} == {"allow": 2, "deny": 2, "error": 2}


class TestFiles:
    def test_rotation_keeps_the_backups_asked_for(self, tmp_path: Path) -> None:
        """Past --audit-max-bytes the file moves to PATH.1 (then .2); no more than asked kept."""
        path = tmp_path / "audit.log"
        server = start_server(tmp_path, "--policy", "policies/coupler", "--data",
                              "examples/coupler.data.yaml", "--audit-log", str(path),
                              "--audit-max-bytes", "2000", "--audit-backups", "2")
        try:
            stub = apb_grpc.AuthorizationServiceStub(server.channel())
            for i in range(60):
                stub.Check(check_req("user:uma", "edit", f"data_flow:r{i}"), timeout=10)
        finally:
            assert server.stop() == 0
        files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("audit.log"))
        assert files == ["audit.log", "audit.log.1", "audit.log.2"]
        for name in files:
            assert 0 < (tmp_path / name).stat().st_size <= 2000
        newest = [ln["resource"] for ln in read_lines(path)]
        older = [ln["resource"] for ln in read_lines(tmp_path / "audit.log.1")]
        assert newest[-1] == "data_flow:r59"
        assert int(older[-1].rpartition("r")[2]) + 1 == int(newest[0].rpartition("r")[2])

    def test_without_backups_the_file_starts_over(self, tmp_path: Path) -> None:
        """--audit-backups 0 keeps no old lines: the file is emptied when it is full."""
        out = RotatingFile(tmp_path / "a.log", max_bytes=10, backups=0)
        for text in ("aaaa\n", "bbbb\n", "cccc\n"):
            out.write(text)
        out.close()
        assert (tmp_path / "a.log").read_text() == "cccc\n"
        assert [p.name for p in tmp_path.iterdir()] == ["a.log"]

    def test_stop_writes_every_queued_line(self, tmp_path: Path) -> None:
        """SIGTERM right after the calls: the log has every line once the server exits."""
        path = tmp_path / "audit.log"
        server = start_server(tmp_path, "--policy", "policies/coupler", "--data",
                              "examples/coupler.data.yaml", "--audit-log", str(path))
        stub = apb_grpc.AuthorizationServiceStub(server.channel())
        items = [check_req("user:uma", "edit", f"data_flow:s{i}") for i in range(500)]
        for _ in range(4):
            stub.CheckBulk(apb.CheckBulkRequest(items=items), timeout=10)
        for i in range(30):
            stub.Check(check_req("user:uma", "edit", f"data_flow:t{i}"), timeout=10)
        assert server.stop() == 0
        lines = read_lines(path)
        assert len(lines) == 4 * 500 + 30
        assert lines[-1]["resource"] == "data_flow:t29"

    def test_standard_output(self, tmp_path: Path) -> None:
        """--audit-log - writes the same lines to standard output."""
        server = start_server(tmp_path, "--policy", "policies/coupler", "--data",
                              "examples/coupler.data.yaml", "--audit-log", "-")
        stub = apb_grpc.AuthorizationServiceStub(server.channel())
        stub.Check(check_req("user:uma", "edit", "data_flow:acme-sales-pipeline"),
                   metadata=KEYED, timeout=10)
        assert server.stop() == 0
        out = [json.loads(text) for text in server.logs().splitlines() if '"kind"' in text]
        assert [(ln["kind"], ln["decision"]) for ln in out] == [("check", "allow")]
        assert SECRET not in server.logs()

    def test_bad_flags_and_an_unwritable_path_stop_the_start(self, tmp_path: Path) -> None:
        """A sample share outside 0..1 exits 2; an audit path that cannot be opened, 1."""
        def serve(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*GATEHOUSE, "serve", "--listen", "127.0.0.1:0",
                                   "--policy", "policies/coupler", *args], cwd=ROOT,
                                  capture_output=True, text=True, timeout=60)

        bad = serve("--audit-log", str(tmp_path / "a.log"), "--audit-sample-checks", "1.5")
        assert bad.returncode == 2 and "--audit-sample-checks" in bad.stderr
        missing = serve("--audit-log", str(tmp_path / "no" / "such" / "dir" / "a.log"))
        assert missing.returncode == 1 and "a.log" in missing.stderr


class TestFullQueue:
    def test_a_full_queue_drops_and_counts_instead_of_blocking(self, tmp_path: Path) -> None:
        """With the writer stuck on a pipe nobody reads, calls go on; lost lines are counted."""
        fifo = tmp_path / "audit.fifo"
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer open it
        writer = AuditWriter(RotatingFile(fifo), capacity=4)
        hook = AuditHook(writer)
        writer.start()
        dropped = REGISTRY.get_sample_value("gatehouse_audit_dropped_total") or 0.0
        request = check_req("user:uma", "edit", "data_flow:" + "x" * 200)
        response = apb.CheckResponse(decision=apb.DECISION_ALLOW, revision="1")
        ok = CallOutcome(grpc.StatusCode.OK, "", 0.001)
        calls = 3000  # ~600 bytes a line: far more than a pipe holds
        for _ in range(calls):  # a put that waited for the disk would hang here
            hook.after(CallInfo(CHECK, KEYED, "ipv4:127.0.0.1:1",
                                notes={REQUEST: request, RESPONSE: response}), ok)
        lost = (REGISTRY.get_sample_value("gatehouse_audit_dropped_total") or 0.0) - dropped
        assert lost > 0
        chunks: list[bytes] = []
        os.set_blocking(reader, True)

        def drain() -> None:
            while chunk := os.read(reader, 1 << 16):
                chunks.append(chunk)

        reading = threading.Thread(target=drain)
        reading.start()
        writer.close()  # writes what was queued, then closes the pipe: the reader sees EOF
        reading.join(10)
        os.close(reader)
        lines = b"".join(chunks).decode().splitlines()
        assert len(lines) + lost == calls
        assert all(json.loads(line)["decision"] == "allow" for line in lines)
        assert SECRET not in "".join(lines)


class TestRedis:
    def test_a_write_on_redis_is_logged_with_its_revision(
            self, request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> None:
        """On the Redis store too, a write's line carries the revision the write returned."""
        path = tmp_path_factory.mktemp("audit-redis") / "audit.log"
        server = start_on_store(request, tmp_path_factory, "redis", "--policy",
                                "policies/coupler", "--audit-log", str(path))
        try:
            c = Client(server)
            owner = c.user()
            org, ws = c.org(owner)
            graph = gpb_grpc.GraphServiceStub(server.channel())
            rev = graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[
                update(f"workspace:{ws}#user@user:r1")]), timeout=10).revision
            deleted = graph.DeleteRelationships(gpb.DeleteRelationshipsRequest(
                filter=gpb.RelationshipFilter(resource_type="workspace", resource_id=ws,
                                              relation="user")), timeout=10)
        finally:
            assert server.stop() == 0
        lines = read_lines(path)
        (write,) = [ln for ln in lines if ln.get("operation") == "WriteRelationships"]
        assert write["revision"] == rev and write["touched"] == [
            f"touch workspace:{ws}#user@user:r1"]
        (delete,) = [ln for ln in lines if ln.get("operation") == "DeleteRelationships"]
        assert delete["deleted"] == deleted.deleted == 1
        assert delete["filter"] == {"resource_type": "workspace", "resource_id": ws,
                                    "relation": "user"}
        assert delete["revision"] == deleted.revision
        assert any(ln.get("operation") == "CreateOrganization" and ln["organization"] == org
                   for ln in lines)

    def test_each_worker_writes_its_own_file(self, tmp_path: Path,
                                             redis_server: RedisServer) -> None:
        """--workers 2: PATH.worker0 and PATH.worker1, never two writers rotating one file."""
        path = tmp_path / "audit.log"
        address = f"127.0.0.1:{free_port()}"
        log = tmp_path / "workers.log"
        proc = subprocess.Popen(
            [*GATEHOUSE, "serve", "--listen", address, "--workers", "2", "--policy",
             "policies/coupler", "--redis-url", redis_server.url,
             "--redis-prefix", f"au{uuid.uuid4().hex[:6]}", "--audit-log", str(path)],
            cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_serving(address, proc, log)
            # One worker answering does not mean both have started (on a busy machine the
            # second may still be loading): wait, bounded, until each opened its file.
            deadline = time.monotonic() + 60
            while (len([p for p in tmp_path.iterdir() if p.name.startswith("audit.log")]) < 2
                   and time.monotonic() < deadline):
                time.sleep(0.1)
            with grpc.insecure_channel(address) as channel:
                graph = gpb_grpc.GraphServiceStub(channel)
                graph.WriteObjects(gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
                    operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref("user:wk1"))]),
                    timeout=10)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()
        names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("audit.log"))
        assert names == ["audit.log.worker0", "audit.log.worker1"]
        written = [ln for name in names for ln in read_lines(tmp_path / name)]
        assert [ln["touched"] for ln in written] == [["put user:wk1"]]
