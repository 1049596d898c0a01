"""The whole production stack in one process: every production setting at once.

API keys, TLS with client certificates (mTLS, a certificate standing in for a
key), Prometheus metrics, the audit log, and Redis with a password, an explicit
pool and writes acknowledged by a replica (``--redis-wait-replicas 1``). The
settings go through ``gatehouse serve --print-config`` first: its output (the
password masked) is the config file the server then runs with, the password
coming from the environment as a deployment would pass a secret.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as pb
from gatehouse.v1 import graph_pb2_grpc as pb_grpc
from tests.conftest import GATEHOUSE, ROOT, ServerProcess, free_port, localhost, start_server
from tests.e2e.test_graph_service import update
from tests.e2e.test_metrics import get, requests, scrape, wait_until
from tests.e2e.test_redis_production import wait_synced
from tests.redis_server import RedisServer
from tests.tls_certs import TlsCerts

PASSWORD = "prod-Secret-4b1e9"
APP_KEY = "gh_test_" + secrets.token_urlsafe(18)
FLOW = "data_flow:acme-sales-pipeline"
CHECK = "gatehouse.v1.AuthorizationService/Check"


@dataclass
class Stack:
    server: ServerProcess
    metrics: str
    audit: Path
    printed: str
    certs: TlsCerts

    def channel(self) -> grpc.Channel:
        c = self.certs
        creds = grpc.ssl_channel_credentials(c.ca.issued.cert_pem, c.client.key_pem,
                                             c.client.cert_pem)
        ch = grpc.secure_channel(localhost(self.server.address), creds)
        self.server.channels.append(ch)
        return ch


def keys_file(folder: Path, certs: TlsCerts) -> Path:
    path = folder / "keys.yaml"
    path.write_text(f"""keys:
  - name: prod-app
    sha256: {hashlib.sha256(APP_KEY.encode()).hexdigest()}
    scopes: [check, read, write]
  - name: billing
    sha256: {hashlib.sha256(secrets.token_bytes(16)).hexdigest()}
    scopes: [check]
    client_certificates: ["{certs.CLIENT_SUBJECT}"]
""")
    return path


def redis_pair(folder: Path) -> tuple[RedisServer, RedisServer]:
    """A primary that wants a password and a replica of it, in sync."""
    auth = [f"requirepass {PASSWORD}", f"masterauth {PASSWORD}"]
    admin = ("default", PASSWORD)
    primary = RedisServer(folder / "primary", config=auth, admin=admin).start()
    replica = RedisServer(folder / "replica", admin=admin, config=[
        *auth, f"replicaof 127.0.0.1 {primary.port}"]).start()
    wait_synced(replica)
    return primary, replica


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tls_certs: TlsCerts) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("production")
    primary, replica = redis_pair(folder)
    port, metrics_port = free_port(), free_port()
    audit = folder / "audit.jsonl"
    url = f"redis://:{PASSWORD}@127.0.0.1:{primary.port}/0"
    flags = [
        "--listen", f"127.0.0.1:{port}",
        "--policy", "policies/coupler", "--data", "examples/coupler.data.yaml",
        "--api-keys", str(keys_file(folder, tls_certs)),
        "--tls-cert", str(tls_certs.server.cert), "--tls-key", str(tls_certs.server.key),
        "--tls-client-ca", str(tls_certs.ca.issued.cert),
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
        "--audit-log", str(audit), "--audit-sample-checks", "1",
        "--redis-url", url, "--redis-prefix", f"prod{uuid.uuid4().hex[:6]}",
        "--redis-pool-size", "16", "--redis-wait-replicas", "1", "--redis-wait-timeout", "5",
    ]
    printed = subprocess.run([*GATEHOUSE, "serve", "--print-config", *flags], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True).stdout
    config = folder / "gatehouse.yaml"
    config.write_text(printed)
    creds = grpc.ssl_channel_credentials(tls_certs.ca.issued.cert_pem,
                                         tls_certs.client.key_pem, tls_certs.client.cert_pem)
    # The printed file masks the password; the secret comes from the environment.
    server = start_server(folder, "--config", str(config), credentials=creds,
                          env={"GATEHOUSE_REDIS_URL": url})
    yield Stack(server, f"127.0.0.1:{metrics_port}", audit, printed, tls_certs)
    server.stop()
    replica.stop()
    primary.stop()


class TestPrintedConfiguration:
    def test_every_production_setting_is_in_force_and_no_secret_is_shown(
            self, stack: Stack) -> None:
        """--print-config names each setting as given by its flag and masks the password."""
        values = yaml.safe_load(stack.printed)
        assert values["redis_pool_size"] == 16
        assert values["redis_wait_replicas"] == 1
        assert values["audit_sample_checks"] == 1
        assert values["metrics_listen"] == stack.metrics
        assert values["tls_client_ca"] == str(stack.certs.ca.issued.cert)
        assert values["api_keys"].endswith("keys.yaml")
        assert PASSWORD not in stack.printed and APP_KEY not in stack.printed
        assert values["redis_url"].startswith("redis://:***@127.0.0.1:")


class TestOneProcess:
    def test_a_keyed_check_over_mtls_is_answered_audited_and_counted(
            self, stack: Stack) -> None:
        """Check with the app key over mTLS: ALLOW; one audit line names the key (never
        the key itself or the password); /metrics counts the call; /readyz is ready."""
        before = scrape(stack.metrics)
        r_type, _, r_id = FLOW.partition(":")
        resp = apb_grpc.AuthorizationServiceStub(stack.channel()).Check(apb.CheckRequest(
            subject=apb.ObjectReference(type="user", id="ben"), action="delete",
            resource=apb.ObjectReference(type=r_type, id=r_id)),
            metadata=(("authorization", f"Bearer {APP_KEY}"),), timeout=10)
        assert resp.decision == apb.DECISION_ALLOW

        def audited() -> list[dict[str, object]]:
            if not stack.audit.exists():
                return []
            return [json.loads(line) for line in stack.audit.read_text().splitlines()]

        wait_until(lambda: any(line["key"] == "prod-app" and line.get("kind") == "check"
                               for line in audited()), "the check's audit line")
        line = next(x for x in audited() if x["key"] == "prod-app" and x["kind"] == "check")
        assert (line["subject"], line["decision"], line["resource"]) == \
            ("user:ben", "allow", FLOW)
        text = stack.audit.read_text()
        assert APP_KEY not in text and PASSWORD not in text
        wait_until(lambda: requests(scrape(stack.metrics), CHECK, "OK") >
                   requests(before, CHECK, "OK"), "the check counted")
        assert get(stack.metrics, "/readyz")[0] == 200

    def test_the_certificate_stands_in_for_a_key(self, stack: Stack) -> None:
        """No key: the client certificate's subject is the 'billing' key (check only)."""
        authz = apb_grpc.AuthorizationServiceStub(stack.channel())
        r_type, _, r_id = FLOW.partition(":")
        resp = authz.Check(apb.CheckRequest(
            subject=apb.ObjectReference(type="user", id="uma"), action="delete",
            resource=apb.ObjectReference(type=r_type, id=r_id)), timeout=10)
        assert resp.decision == apb.DECISION_DENY
        graph = pb_grpc.GraphServiceStub(stack.channel())
        with pytest.raises(grpc.RpcError) as err:
            graph.WriteRelationships(pb.WriteRelationshipsRequest(
                updates=[update("workspace:acme#guest@user:prod-nobody")]), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'billing'" in str(err.value.details())

    def test_a_write_reaches_the_replica_and_is_read_back(self, stack: Stack) -> None:
        """A keyed write is acknowledged once the replica holds it (WAIT 1), is audited as
        a write, and a check at its revision sees it."""
        user = f"prod-{uuid.uuid4().hex[:8]}"
        meta = (("authorization", f"Bearer {APP_KEY}"),)
        w = pb_grpc.GraphServiceStub(stack.channel()).WriteRelationships(
            pb.WriteRelationshipsRequest(updates=[update(f"workspace:acme#guest@user:{user}")]),
            metadata=meta, timeout=10)
        resp = apb_grpc.AuthorizationServiceStub(stack.channel()).Check(apb.CheckRequest(
            subject=apb.ObjectReference(type="user", id=user), action="view",
            resource=apb.ObjectReference(type="workspace", id="acme"),
            consistency=apb.Consistency(at_least_as_fresh=w.revision)),
            metadata=meta, timeout=10)
        assert resp.decision == apb.DECISION_ALLOW
        wait_until(lambda: any(
            f"user:{user}" in json.dumps(json.loads(line).get("touched", []))
            for line in stack.audit.read_text().splitlines()), "the write's audit line")

    def test_without_a_client_certificate_nothing_is_answered(self, stack: Stack) -> None:
        """TLS without a client certificate: the handshake fails, key or not."""
        creds = grpc.ssl_channel_credentials(stack.certs.ca.issued.cert_pem)
        with grpc.secure_channel(localhost(stack.server.address), creds) as ch, \
                pytest.raises(grpc.RpcError) as err:
            apb_grpc.AuthorizationServiceStub(ch).Check(apb.CheckRequest(
                subject=apb.ObjectReference(type="user", id="ben"), action="delete",
                resource=apb.ObjectReference(type="data_flow", id="acme-sales-pipeline")),
                metadata=(("authorization", f"Bearer {APP_KEY}"),), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
