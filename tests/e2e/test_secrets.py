"""Secrets never leave the process: not in logs, audit lines, error details, the
printed configuration, process arguments, nor the CLI's own error messages.

One real deployment: ``gatehouse serve --workers 2`` on a Redis that requires a
password (given in the URL, by environment as an operator would), with a keys
file, an audit log and logs at debug level. Traffic then makes and uses every
kind of secret (API keys, invitation and access-link tokens) and every way of
getting one wrong (unknown, malformed, repeated, lacking a scope; tokens with a
wrong secret, reused, forged), and the Redis password is changed under the
workers so their reconnects fail and get logged. Everything the deployment
wrote or showed is then searched for each secret and its tell-tale parts.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.protobuf.struct_pb2 import Struct

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from gatehouse.v1 import tenancy_pb2 as tpb
from gatehouse.v1 import tenancy_pb2_grpc as tpb_grpc
from tests.conftest import GATEHOUSE, ROOT, free_port, wait_serving
from tests.e2e.test_graph_service import ref
from tests.redis_server import RedisServer

POLICY = "policies/coupler"


def _new_key() -> str:
    return "gh_" + secrets.token_urlsafe(32)


@dataclass
class Secrets:
    """Every secret of the run, and the parts of it a careless log might show."""

    values: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, value: str) -> None:
        self.values[name] = value
        if value.startswith("gh_"):  # an API key: its hash, and a stretch of its middle
            self.values[f"{name} sha256"] = hashlib.sha256(value.encode()).hexdigest()
            self.values[f"{name} middle"] = value[10:26]
        if "." in value:  # a token: its secret half and the digest the store keeps
            secret = value.partition(".")[2]
            self.values[f"{name} secret"] = secret
            self.values[f"{name} secret sha256"] = hashlib.sha256(secret.encode()).hexdigest()

    def found_in(self, text: str) -> list[str]:
        return [name for name, value in self.values.items() if value in text]


@dataclass
class Deployment:
    address: str
    proc: subprocess.Popen[str]
    log: Path
    audit: Path
    redis: RedisServer
    password: str
    keys: dict[str, str]
    tmp: Path
    env: dict[str, str]
    metrics_port: int
    shown: list[str] = field(default_factory=list)
    """Everything a client was shown: error details, CLI output."""


def _keys_file(path: Path, keys: dict[str, str]) -> None:
    scopes = {"admin-svc": "[check, read, write, admin]", "check-svc": "[check]",
              "acme-svc": "[check, read, write]"}
    lines = ["keys:"]
    for name, key in keys.items():
        lines += [f"  - name: {name}", f"    sha256: {hashlib.sha256(key.encode()).hexdigest()}",
                  f"    scopes: {scopes[name]}"]
        if name == "acme-svc":
            lines.append("    organizations: [acme]")
    path.write_text("\n".join(lines) + "\n")


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _scrape(port: int) -> str:
    """A worker's /metrics page (worker N serves on the given port + N)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text: str = resp.read().decode()
        return text


def _cmdline(pid: int) -> str:
    return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("secrets")
    rs = RedisServer(tmp / "redis").start()
    password = "pw-" + secrets.token_urlsafe(18)
    client = redis.Redis(host="127.0.0.1", port=rs.port)
    client.config_set("requirepass", password)
    client.close()
    keys = {name: _new_key() for name in ("admin-svc", "check-svc", "acme-svc")}
    keys_path = tmp / "keys.yaml"
    _keys_file(keys_path, keys)
    port = free_port()
    address = f"127.0.0.1:{port}"
    metrics = free_port()
    while metrics + 1 >= 65536:  # worker N serves metrics on PORT+N (N = 0, 1)
        metrics = free_port()
    log = tmp / "server.log"
    audit = tmp / "audit.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "GATEHOUSE_REDIS_URL": f"redis://:{password}@127.0.0.1:{rs.port}/0"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*GATEHOUSE, "serve", "--listen", address, "--workers", "2", "--policy", POLICY,
             "--api-keys", str(keys_path), "--audit-log", str(audit), "--log-level", "debug",
             "--redis-prefix", "sec", "--metrics-listen", f"127.0.0.1:{metrics}"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_serving(address, proc, log)
        yield Deployment(address, proc, log, audit, rs, password, keys, tmp, env, metrics)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        rs.stop()


def _bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _try(d: Deployment, call: Callable[[], Any]) -> Any:
    """Run ``call``; keep what a refusal showed the client."""
    try:
        return call()
    except grpc.RpcError as err:
        d.shown.append(f"{err.code().name}: {err.details()}")
        d.shown.extend(f"{k}: {v!r}" for k, v in (err.trailing_metadata() or ()))
        return None


def _traffic(d: Deployment, found: Secrets) -> str:
    """Make and use every kind of secret, right and wrong, on several connections (so
    both workers answer some); the last round's organization id."""
    admin = _bearer(d.keys["admin-svc"])
    org = ""
    for _ in range(4):
        ch = grpc.insecure_channel(d.address, options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            org = _one_round(d, found, ch, admin)
        finally:
            ch.close()
    return org


def _one_round(d: Deployment, found: Secrets, ch: grpc.Channel,
               admin: tuple[tuple[str, str], ...]) -> str:
    tenancy = tpb_grpc.TenancyServiceStub(ch)
    graph = gpb_grpc.GraphServiceStub(ch)
    authz = apb_grpc.AuthorizationServiceStub(ch)
    org = f"o{secrets.token_hex(4)}"
    owner, invitee = f"user:{org}-owner", f"user:{org}-new"
    for user in (owner, invitee):
        attrs = Struct()
        attrs.update({"email": f"{user[5:]}@{org}.test"})
        graph.WriteObjects(gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
            operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref(user), attributes=attrs)]),
            metadata=admin, timeout=10)
    created = tenancy.CreateOrganization(tpb.CreateOrganizationRequest(
        actor=ref(owner), organization_id=org, name="Org", plan="enterprise"),
        metadata=admin, timeout=10)
    ws = created.workspace_id
    invite = tenancy.InviteMember(tpb.InviteMemberRequest(
        actor=ref(owner), scope=ref(f"workspace:{ws}"), email=f"{invitee[5:]}@{org}.test",
        role="user"), metadata=admin, timeout=10)
    found.add(f"invitation token {org}", invite.token)
    resent = tenancy.ResendInvitation(tpb.ResendInvitationRequest(
        actor=ref(owner), invitation_id=invite.invitation_id), metadata=admin, timeout=10)
    found.add(f"resent token {org}", resent.token)
    inv_id, _, secret = resent.token.partition(".")
    wrong = f"{inv_id}.{secret[::-1]}"
    found.add(f"wrong-secret token {org}", wrong)
    for token in (invite.token, wrong, resent.token, resent.token):  # old, wrong, ok, reused
        _try(d, lambda t=token: tenancy.AcceptInvitation(tpb.AcceptInvitationRequest(
            token=t, subject=ref(invitee)), metadata=admin, timeout=10))
    link = tenancy.CreateAccessLink(tpb.CreateAccessLinkRequest(
        actor=ref(owner), workspace_id=ws, source_type="shopify"), metadata=admin, timeout=10)
    found.add(f"link token {org}", link.token)
    forged = f"{link.link_id}.{secrets.token_urlsafe(32)}"
    found.add(f"forged link token {org}", forged)
    for token in (forged, link.token, link.token):
        _try(d, lambda t=token: tenancy.RedeemAccessLink(tpb.RedeemAccessLinkRequest(
            token=t), metadata=admin, timeout=10))
    _try(d, lambda: tenancy.AcceptInvitation(tpb.AcceptInvitationRequest(
        token=link.token, subject=ref(invitee)), metadata=admin, timeout=10))
    check = apb.CheckRequest(subject=ref(owner), action="view",
                             resource=ref(f"workspace:{ws}"), explain=True)
    unknown = _new_key()
    found.add(f"unknown key {org}", unknown)
    headers: list[tuple[tuple[str, str], ...]] = [
        _bearer(unknown), (("authorization", f"Basic {unknown}"),),
        (("authorization", f"Bearer {unknown} extra"),),
        (("authorization", f"Bearer {d.keys['check-svc']}"),) * 2,
        (("authorization", f"bearer  {d.keys['check-svc']}x"),),
        _bearer(d.keys["acme-svc"]),
    ]
    for md in headers:
        _try(d, lambda m=md: authz.Check(check, metadata=m, timeout=10))
    _try(d, lambda: graph.WriteObjects(gpb.WriteObjectsRequest(), metadata=_bearer(
        d.keys["check-svc"]), timeout=10))
    authz.Check(check, metadata=_bearer(d.keys["check-svc"]), timeout=10)
    authz.CheckBulk(apb.CheckBulkRequest(items=[check, check]), metadata=admin, timeout=10)
    return org


def _password_changed_under_the_workers(d: Deployment, found: Secrets) -> None:
    """The workers' connections drop and their password no longer works: their
    reconnects fail (and are logged at debug level), then the old one works again."""
    new = "pw-" + secrets.token_urlsafe(18)
    found.add("changed redis password", new)
    client = redis.Redis(host="127.0.0.1", port=d.redis.port, password=d.password)
    client.config_set("requirepass", new)
    client.close()
    client = redis.Redis(host="127.0.0.1", port=d.redis.port, password=new)
    try:
        client.client_kill_filter(_type="normal", skipme=True)
        ch = grpc.insecure_channel(d.address)
        graph = gpb_grpc.GraphServiceStub(ch)
        req = gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
            resource_type="workspace"))
        req.consistency.fully_consistent = True
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # both workers meet the failure
            _try(d, lambda: list(graph.ReadRelationships(
                req, metadata=_bearer(d.keys["admin-svc"]), timeout=2)))
            time.sleep(0.2)  # poll interval of a bounded wait
        ch.close()
    finally:
        client.config_set("requirepass", d.password)
        client.close()


def _cli(d: Deployment, *args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run([*GATEHOUSE, *args], cwd=ROOT, capture_output=True, text=True,
                         env=env or d.env, timeout=60)
    return out.stdout + out.stderr


class TestSecretsNeverLeak:
    def test_nothing_anywhere_holds_a_secret(self, deployment: Deployment) -> None:
        """After traffic that makes and misuses every kind of secret: the log (debug
        level, both workers), the audit files, every error shown to a client, the
        printed configuration, the server and worker command lines and the CLI's own
        messages hold none of them, nor their hashes."""
        d = deployment
        found = Secrets()
        for name, key in d.keys.items():
            found.add(f"key {name}", key)
        found.add("redis password", d.password)
        parent = d.proc.pid
        workers = _children(parent)
        assert len(workers) == 2, workers
        command_lines = {pid: _cmdline(pid) for pid in (parent, *workers)}
        org = _traffic(d, found)
        _password_changed_under_the_workers(d, found)
        printed = _cli(d, "serve", "--print-config", "--api-keys",
                       str(d.tmp / "keys.yaml"), "--workers", "2", "--listen", d.address)
        assert "redis_url: redis://:***@" in printed, printed
        key = d.keys["check-svc"]
        cli = [  # argv is covered below, without a server; here: keys from the environment
            _cli(d, "check", "user:a", "view", "workspace:b", "--address", d.address,
                 env={**d.env, "GATEHOUSE_API_KEY": key + " x"}),
            _cli(d, "check", "user:a", "view", "workspace:b", "--address", d.address,
                 env={**d.env, "GATEHOUSE_API_KEY": found.values["unknown key " + org]}),
            _cli(d, "check", "user:a", "view", "workspace:b", "--address", d.address,
                 env={**d.env, "GATEHOUSE_API_KEY": key}),
        ]
        assert "UNAUTHENTICATED" in cli[1] and "DENY" in cli[2], cli
        scraped = "\n".join(_scrape(d.metrics_port + i) for i in (0, 1))
        assert "gatehouse_requests_total" in scraped
        d.proc.send_signal(signal.SIGTERM)
        d.proc.wait(30)
        logs = d.log.read_text()
        audits = {p.name: p.read_text() for p in d.audit.parent.glob(d.audit.name + "*")}
        assert logs.count('"api keys loaded"') == 2, logs[-2000:]
        assert '"level": "debug"' in logs, "the password change produced no debug line"
        assert sum(t.count('"kind":"tenancy"') for t in audits.values()) > 10, audits.keys()
        assert any("UNAUTHENTICATED" in s for s in d.shown)
        assert any("PERMISSION_DENIED" in s for s in d.shown)
        assert any(s.startswith("NOT_FOUND") or s.startswith("FAILED_PRECONDITION")
                   for s in d.shown), d.shown
        places = {"server log": logs, "error details": "\n".join(d.shown), "metrics": scraped,
                  "print-config": printed, "cli": "\n".join(cli),
                  **{f"audit {name}": text for name, text in audits.items()},
                  **{f"cmdline {pid}": text for pid, text in command_lines.items()}}
        leaks = {place: found.found_in(text) for place, text in places.items()}
        assert not {p: names for p, names in leaks.items() if names}, leaks

    def test_a_wrong_redis_password_is_reported_without_it(self, deployment: Deployment
                                                           ) -> None:
        """A server started with a wrong password says it cannot reach Redis, and
        neither the password nor the right one appears."""
        d = deployment
        wrong = "pw-" + secrets.token_urlsafe(18)
        env = {**d.env,
               "GATEHOUSE_REDIS_URL": f"redis://:{wrong}@127.0.0.1:{d.redis.port}/0"}
        out = subprocess.run(
            [*GATEHOUSE, "serve", "--listen", f"127.0.0.1:{free_port()}", "--policy", POLICY,
             "--log-level", "debug", "--redis-prefix", "sec"],
            cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
        text = out.stdout + out.stderr
        assert out.returncode != 0, text
        assert wrong not in text and d.password not in text, text
        assert "***" in text or "redis" in text.lower(), text


def test_the_check_command_takes_no_key_from_argv() -> None:
    """`gatehouse check --api-key KEY` (and a key where a file should be) is refused
    without repeating the key."""
    key = _new_key()
    for args in (["--api-key", key], [f"--api-key={key}"], ["--api-key-file", key], [key]):
        out = subprocess.run([*GATEHOUSE, "check", "user:a", "view", "workspace:b",
                              "--address", "127.0.0.1:1", *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        assert key not in out.stdout + out.stderr and key[10:26] not in out.stderr, out.stderr

