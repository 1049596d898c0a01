"""API keys through a real `gatehouse serve`, on both transports.

The auth matrix: every RPC of every service, called with no key, a
malformed header, an unknown key and a key of each scope, gets
UNAUTHENTICATED, PERMISSION_DENIED naming the scope, or is let through to
its handler (which answers OK or a domain error for the empty request).
Then: health and reflection without a key, per-key rate and in-flight
limits with RetryInfo, the admin service, keys reload, the safe default on a
public address, and that no key or hash ever reaches the log.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from gatehouse.auth.scopes import METHOD_SCOPES
from gatehouse.v1 import admin_pb2 as adm
from gatehouse.v1 import admin_pb2_grpc as adm_grpc
from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from tests.conftest import GATEHOUSE, ROOT, ServerProcess, free_port, start_server, wait_serving
from tests.e2e.test_grpcurl import run as grpcurl

TRANSPORTS = ("core", "aio")
SCOPES = ("check", "read", "write", "admin")
KEYS = {scope: f"gh_test_{scope}_key_0123456789" for scope in SCOPES}
KEYS["slow"] = "gh_test_slow_key_0123456789"      # check, 1 request/s, burst 2
KEYS["narrow"] = "gh_test_narrow_key_0123456789"  # read, one call in flight
STREAMING = {"/gatehouse.v1.AuthorizationService/ListAccessible",
             "/gatehouse.v1.GraphService/ReadRelationships", "/gatehouse.v1.GraphService/Watch"}
MATRIX = sorted(METHOD_SCOPES)


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_yaml(keys: dict[str, str]) -> str:
    lines = ["keys:"]
    for name, key in keys.items():
        lines += [f"  - name: {name}-svc", f"    sha256: {sha(key)}"]
        if name == "slow":
            lines += ["    scopes: [check]", "    rate: {requests_per_second: 1, burst: 2}"]
        elif name == "narrow":
            lines += ["    scopes: [read]", "    rate: {in_flight: 1}"]
        else:
            lines.append(f"    scopes: [{name}]")
    return "\n".join(lines) + "\n"


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def outcome(channel: grpc.Channel, method: str,
            metadata: tuple[tuple[str, str], ...] = ()) -> tuple[grpc.StatusCode, str]:
    """The status of ``method`` called with an empty request (the first message of a stream)."""
    try:
        if method in STREAMING:
            stream = channel.unary_stream(method)(b"", metadata=metadata, timeout=1.5)
            next(iter(stream), None)
            stream.cancel()
        else:
            channel.unary_unary(method)(b"", metadata=metadata, timeout=5)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.fixture(scope="module", params=TRANSPORTS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp(f"auth-{request.param}")
    (tmp / "keys.yaml").write_text(keys_yaml(KEYS))
    proc = start_server(tmp, "--transport", request.param, "--api-keys", str(tmp / "keys.yaml"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> grpc.Channel:
    return server.channel()


class TestMatrix:
    @pytest.mark.parametrize("method", MATRIX)
    def test_no_key_is_unauthenticated(self, channel: grpc.Channel, method: str) -> None:
        """Every gatehouse RPC without a key is refused UNAUTHENTICATED, saying how to send one."""
        code, details = outcome(channel, method)
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer <key>" in details

    @pytest.mark.parametrize("method", MATRIX)
    def test_each_scope_reaches_exactly_its_methods(self, channel: grpc.Channel,
                                                    method: str) -> None:
        """The key with the method's scope reaches the handler; every other key is refused
        PERMISSION_DENIED naming the scope the method needs."""
        needed = METHOD_SCOPES[method]
        for scope in SCOPES:
            code, details = outcome(channel, method, bearer(KEYS[scope]))
            if scope == needed:  # the handler answered the empty request
                reached = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
                if method.endswith("/Watch"):
                    reached.add(grpc.StatusCode.DEADLINE_EXCEEDED)  # streams from now on
                assert code in reached, (scope, code, details)
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (scope, code, details)
                assert f"key '{scope}-svc' lacks scope '{needed}'" in details

    @pytest.mark.parametrize("header", [
        "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer two words", "Token " + KEYS["check"],
        "Bearer " + "k" * 600,
    ])
    def test_a_malformed_header_is_unauthenticated(self, channel: grpc.Channel,
                                                   header: str) -> None:
        """Anything but `Bearer <key>` is refused UNAUTHENTICATED, the header never echoed."""
        code, details = outcome(channel, "/gatehouse.v1.AuthorizationService/Check",
                                (("authorization", header),))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "expected `Bearer <key>`" in details and "dXNlcjpwYXNz" not in details

    def test_an_unknown_key_is_unauthenticated(self, channel: grpc.Channel) -> None:
        """A well-formed key that is not in the file is refused UNAUTHENTICATED."""
        code, details = outcome(channel, "/gatehouse.v1.AuthorizationService/Check",
                                bearer("gh_not_a_key_anyone_has"))
        assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "unknown API key")

    def test_two_authorization_headers_are_refused(self, channel: grpc.Channel) -> None:
        """A call carrying two keys is ambiguous and refused."""
        code, _ = outcome(channel, "/gatehouse.v1.AuthorizationService/Check",
                          (*bearer(KEYS["check"]), *bearer(KEYS["write"])))
        assert code == grpc.StatusCode.UNAUTHENTICATED

    def test_a_check_with_the_check_key_decides(self, channel: grpc.Channel) -> None:
        """The check key gets a real decision from Check, on the inline path too."""
        stub = apb_grpc.AuthorizationServiceStub(channel)
        resp = stub.Check(apb.CheckRequest(
            subject=apb.ObjectReference(type="user", id="uma"), action="delete",
            resource=apb.ObjectReference(type="data_flow", id="acme-sales-pipeline")),
            metadata=bearer(KEYS["check"]), timeout=5)
        assert resp.decision in (apb.DECISION_ALLOW, apb.DECISION_DENY) and resp.revision


class TestOpenServices:
    def test_health_needs_no_key(self, channel: grpc.Channel) -> None:
        """Probes answer without a key."""
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="gatehouse.v1.AuthorizationService"),
            timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING

    def test_reflection_needs_no_key_and_lists_the_admin_service(
            self, channel: grpc.Channel) -> None:
        """Reflection lists every service, AdminService included, without a key."""
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert {"gatehouse.v1.AdminService", "gatehouse.v1.GraphService",
                "grpc.health.v1.Health"} <= names

    def test_grpcurl_list_and_a_keyed_check(self, server: ServerProcess) -> None:
        """docs/auth.md's grpcurl lines work: `list` without a key, Check with -H."""
        listed = grpcurl("-plaintext", server.address, "list")
        assert listed.returncode == 0, listed.stderr
        assert "gatehouse.v1.AdminService" in listed.stdout
        body = json.dumps({"subject": {"type": "user", "id": "uma"}, "action": "view",
                           "resource": {"type": "workspace", "id": "acme-sales"}})
        denied = grpcurl("-plaintext", "-d", body, server.address,
                         "gatehouse.v1.AuthorizationService/Check")
        assert denied.returncode != 0 and "Unauthenticated" in denied.stderr
        ok = grpcurl("-plaintext", "-H", f"authorization: Bearer {KEYS['check']}", "-d", body,
                     server.address, "gatehouse.v1.AuthorizationService/Check")
        assert ok.returncode == 0, ok.stderr
        assert "revision" in ok.stdout


    def test_gatehouse_check_takes_its_key_from_the_environment(
            self, server: ServerProcess) -> None:
        """`gatehouse check` sends GATEHOUSE_API_KEY; without it the server says UNAUTHENTICATED."""
        args = [*GATEHOUSE, "check", "user:uma", "delete", "data_flow:acme-sales-pipeline",
                "--address", server.address]
        env = {k: v for k, v in os.environ.items() if k != "GATEHOUSE_API_KEY"}
        without = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env,
                                 timeout=30)
        assert without.returncode == 2 and "UNAUTHENTICATED" in without.stderr
        keyed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=30,
                               env={**env, "GATEHOUSE_API_KEY": KEYS["check"]})
        assert keyed.returncode == 1 and keyed.stdout.startswith("DENY"), keyed.stderr
        assert KEYS["check"] not in keyed.stdout + keyed.stderr


class TestLimits:
    def test_over_the_rate_is_resource_exhausted_with_retry_info(
            self, channel: grpc.Channel) -> None:
        """Past its burst a key is refused RESOURCE_EXHAUSTED with a RetryInfo delay ≤ 1 s."""
        stub = apb_grpc.AuthorizationServiceStub(channel)
        req = apb.CheckRequest(subject=apb.ObjectReference(type="user", id="uma"),
                               action="view",
                               resource=apb.ObjectReference(type="workspace", id="acme-sales"))
        err = None
        for _ in range(4):  # burst 2 at 1/s: the third or fourth call is refused
            try:
                stub.Check(req, metadata=bearer(KEYS["slow"]), timeout=5)
            except grpc.RpcError as exc:
                err = exc
                break
        assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "key 'slow-svc'" in (err.details() or "")
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        assert status is not None and len(status.details) == 1
        retry = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(retry)
        delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
        assert 0 < delay <= 1.0
        time.sleep(delay + 0.05)
        stub.Check(req, metadata=bearer(KEYS["slow"]), timeout=5)  # a token is back

    def test_the_in_flight_cap_refuses_until_a_call_ends(self, channel: grpc.Channel) -> None:
        """While a Watch holds the key's one slot, its other calls are RESOURCE_EXHAUSTED;
        once the Watch ends the slot is free again."""
        read_object = "/gatehouse.v1.GraphService/ReadObject"
        watch = gpb_grpc.GraphServiceStub(channel).Watch(
            gpb.WatchRequest(), metadata=bearer(KEYS["narrow"]), timeout=30)
        try:
            deadline = time.monotonic() + 10
            code = grpc.StatusCode.OK
            while time.monotonic() < deadline:  # until the server has admitted the Watch
                code, details = outcome(channel, read_object, bearer(KEYS["narrow"]))
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    break
                time.sleep(0.05)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "1 calls already in flight" in details
        finally:
            watch.cancel()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            code, _ = outcome(channel, read_object, bearer(KEYS["narrow"]))
            if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                break
            time.sleep(0.05)
        assert code not in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def broken_policy(folder: Path) -> None:
    text = (folder / "policy.yaml").read_text()
    (folder / "policy.yaml").write_text(text.replace("workspace.admin]", "workspace.owner]", 1))


class TestAdminService:
    def test_status_reload_and_a_broken_policy(self, tmp_path: Path) -> None:
        """GetPolicyStatus describes the policy; ReloadPolicy of a broken set is
        FAILED_PRECONDITION with positions while the old policy keeps deciding; fixed, it loads."""
        import shutil

        policy = tmp_path / "policy"
        shutil.copytree(ROOT / "policies/coupler", policy)
        (tmp_path / "keys.yaml").write_text(keys_yaml(KEYS))
        proc = start_server(tmp_path, "--api-keys", str(tmp_path / "keys.yaml"), "--policy",
                            str(policy), "--no-watch")
        try:
            admin = adm_grpc.AdminServiceStub(proc.channel())
            key = bearer(KEYS["admin"])
            status = admin.GetPolicyStatus(adm.GetPolicyStatusRequest(), metadata=key,
                                           timeout=5)
            assert status.policy_version and status.policy_dir == str(policy)
            assert status.loaded_at.seconds > 0 and status.index_revision.isdigit()
            assert not status.watching and not status.last_reload_error
            original = (policy / "policy.yaml").read_text()
            broken_policy(policy)
            with pytest.raises(grpc.RpcError) as err:
                admin.ReloadPolicy(adm.ReloadPolicyRequest(), metadata=key, timeout=30)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"{policy}/policy.yaml:" in (err.value.details() or "")
            assert "unknown role 'workspace.owner'" in (err.value.details() or "")
            after = admin.GetPolicyStatus(adm.GetPolicyStatusRequest(), metadata=key, timeout=5)
            assert after.policy_version == status.policy_version
            assert "workspace.owner" in after.last_reload_error
            assert after.reload_failures == 1 and after.last_reload_error_at.seconds > 0
            (policy / "policy.yaml").write_text(original.replace(
                "types:", "# edited\ntypes:", 1))
            done = admin.ReloadPolicy(adm.ReloadPolicyRequest(), metadata=key, timeout=30)
            assert done.previous_version == status.policy_version
            assert done.status.policy_version != status.policy_version
            assert not done.status.last_reload_error
            with pytest.raises(grpc.RpcError) as denied:
                admin.ReloadPolicy(adm.ReloadPolicyRequest(), metadata=bearer(KEYS["write"]),
                                   timeout=5)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            proc.stop()


def wait_for(predicate: object, what: str, timeout: float = 15) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)  # poll interval of a bounded wait
    raise AssertionError(f"timed out waiting for {what}")


class TestKeysReload:
    def test_a_valid_file_replaces_the_keys_and_a_broken_one_keeps_them(
            self, tmp_path: Path) -> None:
        """Editing the keys file swaps the keys in without a restart; a broken edit is logged
        with its position and the previous keys keep serving. The log holds key names only."""
        keys = tmp_path / "keys.yaml"
        old, new = "gh_reload_old_key_0123456789", "gh_reload_new_key_0123456789"
        keys.write_text(keys_yaml({"check": old}))
        proc = start_server(tmp_path, "--api-keys", str(keys))
        check = "/gatehouse.v1.AuthorizationService/Check"
        try:
            ch = proc.channel()
            assert outcome(ch, check, bearer(old))[0] == grpc.StatusCode.INVALID_ARGUMENT
            replacement = keys_yaml({"check": new}).replace("check-svc", "rotated-svc")
            (tmp_path / "keys.next").write_text(replacement)
            (tmp_path / "keys.next").rename(keys)  # an atomic replace, as deploys do
            wait_for(lambda: outcome(ch, check, bearer(new))[0]
                     == grpc.StatusCode.INVALID_ARGUMENT, "the new key to be accepted")
            assert outcome(ch, check, bearer(old))[0] == grpc.StatusCode.UNAUTHENTICATED
            keys.write_text(replacement + "  - name: broken\n    sha256: nothex\n")
            wait_for(lambda: "api keys reload rejected" in proc.logs(), "the rejection log")
            assert outcome(ch, check, bearer(new))[0] == grpc.StatusCode.INVALID_ARGUMENT
            outcome(ch, check, bearer("gh_wrong_key_0123456789"))
        finally:
            proc.stop()
        log = proc.logs()
        assert f"{keys}:6:13 keys[1].sha256: must be 64 lowercase hex digits" in log
        assert '"added": ["rotated-svc"]' in log and '"removed": ["check-svc"]' in log
        for secret in (old, new, "gh_wrong_key_0123456789", sha(old), sha(new)):
            assert secret not in log


class TestSafeDefaults:
    def test_a_public_address_without_keys_refuses_to_start(self) -> None:
        """`serve --listen 0.0.0.0:PORT` without keys exits 2 and says what to do."""
        out = subprocess.run([*GATEHOUSE, "serve", "--listen", f"0.0.0.0:{free_port()}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert out.returncode == 2
        assert "refusing to serve 0.0.0.0:" in out.stderr and "--api-keys" in out.stderr
        assert "--insecure-no-auth" in out.stderr

    def test_insecure_no_auth_serves_a_public_address_and_says_so(self, tmp_path: Path) -> None:
        """With --insecure-no-auth it serves everyone and logs that it is unauthenticated."""
        port = free_port()
        log_path = tmp_path / "server.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen([*GATEHOUSE, "serve", "--listen", f"0.0.0.0:{port}",
                                     "--insecure-no-auth"], cwd=ROOT, stdout=log,
                                    stderr=subprocess.STDOUT, text=True)
        try:
            wait_serving(f"127.0.0.1:{port}", proc, log_path)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                code, _ = outcome(ch, "/gatehouse.v1.GraphService/ReadObject")
                assert code == grpc.StatusCode.INVALID_ARGUMENT  # reached the handler
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        assert "serving WITHOUT authentication" in log_path.read_text()

    def test_the_loopback_default_serves_anonymously_with_a_warning(
            self, coupler_server: ServerProcess) -> None:
        """The embedded default on 127.0.0.1 keeps working without keys, and logs a warning."""
        code, _ = outcome(coupler_server.channel(), "/gatehouse.v1.AdminService/GetPolicyStatus")
        assert code == grpc.StatusCode.OK
        assert "serving WITHOUT authentication" in coupler_server.logs()

    def test_a_broken_keys_file_stops_start_up_with_positions(self, tmp_path: Path) -> None:
        """A keys file with a problem refuses to start (exit 1) naming file:line:column."""
        keys = tmp_path / "keys.yaml"
        keys.write_text("keys:\n  - name: a\n    sha256: abc\n    scopes: [check]\n")
        out = subprocess.run([*GATEHOUSE, "serve", "--listen", f"127.0.0.1:{free_port()}",
                              "--api-keys", str(keys)], cwd=ROOT, capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 1
        assert f"{keys}:3:13 keys[0].sha256:" in out.stderr


class TestLogs:
    def test_the_log_never_shows_a_key_or_its_hash(self, server: ServerProcess) -> None:
        """After every call above (runs last on this server), the log holds key names only."""
        log = server.logs()
        assert "api keys loaded" in log
        for key in KEYS.values():
            assert key not in log and sha(key) not in log
