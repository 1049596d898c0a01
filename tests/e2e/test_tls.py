"""The gatehouse server over TLS and mTLS, as operators run it and SREs call it.

Three ways in: ``gatehouse serve`` child processes (start-up refusals, a
Check over TLS, grpcurl), an in-process gatehouse ``Server`` with a recording
pre-call hook (what the hooks see of an mTLS caller, what ``gatehouse check``
sends), and ``gatehouse check`` itself. Both transports serve every case.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from gatehouse.server import Server, ServerConfig, build_runtime
from gatehouse.transport import CallInfo, open_transport
from gatehouse.transport.tls import TlsFiles
from gatehouse.v1 import authorization_pb2 as pb
from gatehouse.v1 import authorization_pb2_grpc as pb_grpc
from tests.conftest import GATEHOUSE, ROOT, ServerProcess, free_port, localhost, start_server
from tests.e2e.test_grpcurl import run as grpcurl
from tests.test_tls import OWN_CONNECTION, presented, replace
from tests.tls_certs import Issued, TlsCerts

TRANSPORTS = ("core", "aio")
KEY = "gh_test_9c2f4e1a7b"
FLOW = "data_flow:acme-sales-pipeline"


def credentials(certs: TlsCerts, client: Issued | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(certs.ca.issued.cert_pem,
                                        client.key_pem if client else None,
                                        client.cert_pem if client else None)


def check(channel: grpc.Channel, subject: str = "ben") -> pb.CheckResponse:
    r_type, _, r_id = FLOW.partition(":")
    return pb_grpc.AuthorizationServiceStub(channel).Check(pb.CheckRequest(
        subject=pb.ObjectReference(type="user", id=subject), action="delete",
        resource=pb.ObjectReference(type=r_type, id=r_id)), timeout=5)


def start_tls_server(tmp: Path, certs: TlsCerts, *args: str,
                     client: Issued | None = None) -> ServerProcess:
    """`gatehouse serve` with ``args`` on a free port, waited for over TLS."""
    return start_server(tmp, "--policy", "policies/coupler", "--data",
                        "examples/coupler.data.yaml", *args,
                        credentials=credentials(certs, client))


def tls_args(certs: TlsCerts, kind: str, mutual: bool) -> list[str]:
    args = ["--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key),
            "--transport", kind]
    return [*args, "--tls-client-ca", str(certs.ca.issued.cert)] if mutual else args


def gatehouse_check(*args: str, env: dict[str, str] | None = None
                    ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    return subprocess.run([*GATEHOUSE, "check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**clean, **(env or {})})


# -- gatehouse serve over TLS --------------------------------------------------------


@pytest.fixture(scope="module", params=TRANSPORTS)
def tls_server(request: pytest.FixtureRequest, tls_certs: TlsCerts,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`gatehouse serve` with TLS (no client certificates) on each transport."""
    server = start_tls_server(tmp_path_factory.mktemp("tls"), tls_certs,
                              *tls_args(tls_certs, request.param, mutual=False))
    yield server
    server.stop()


class TestServeTls:
    def test_a_check_over_tls_is_decided(self, tls_server: ServerProcess,
                                         tls_certs: TlsCerts) -> None:
        """Check over TLS answers as over plaintext; the log says TLS and the transport."""
        with grpc.secure_channel(localhost(tls_server.address),
                                 credentials(tls_certs)) as channel:
            assert check(channel, "ben").decision == pb.DECISION_ALLOW
            assert check(channel, "uma").decision == pb.DECISION_DENY
        serving = [json.loads(line) for line in tls_server.logs().splitlines()
                   if '"msg": "serving"' in line]
        assert serving[0]["tls"] == "tls"

    def test_a_plaintext_client_is_refused(self, tls_server: ServerProcess) -> None:
        """A plaintext client cannot talk to the TLS port: UNAVAILABLE."""
        with grpc.insecure_channel(tls_server.address, OWN_CONNECTION) as channel, \
                pytest.raises(grpc.RpcError) as err:
            check(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    def test_gatehouse_check_over_tls(self, tls_server: ServerProcess,
                                      tls_certs: TlsCerts) -> None:
        """`gatehouse check --tls-ca` decides over TLS; without it, loopback means plaintext."""
        out = gatehouse_check("user:ben", "delete", FLOW, "--address",
                              localhost(tls_server.address), "--tls-ca",
                              str(tls_certs.ca.issued.cert), "--explain")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"ALLOW  user:ben delete {FLOW}")
        assert "why: allow by" in out.stdout
        out = gatehouse_check("user:ben", "delete", FLOW, "--address",
                              localhost(tls_server.address))
        assert out.returncode == 2 and "UNAVAILABLE" in out.stderr

    def test_gatehouse_check_verifies_the_name_it_is_told(self, tls_server: ServerProcess,
                                                          tls_certs: TlsCerts) -> None:
        """--tls-server-name sets the name the certificate must carry: a wrong one fails."""
        args = ("user:ben", "delete", FLOW, "--address", tls_server.address, "--tls-ca",
                str(tls_certs.ca.issued.cert), "--tls-server-name")
        assert gatehouse_check(*args, "localhost").returncode == 0
        wrong = gatehouse_check(*args, "billing.example")
        assert wrong.returncode == 2 and "UNAVAILABLE" in wrong.stderr

    def test_grpcurl_over_tls(self, tls_server: ServerProcess, tls_certs: TlsCerts) -> None:
        """grpcurl -cacert lists the services and runs a Check through reflection."""
        address = localhost(tls_server.address)
        ca = str(tls_certs.ca.issued.cert)
        out = grpcurl("-cacert", ca, address, "list")
        assert out.returncode == 0, out.stderr
        assert "gatehouse.v1.AuthorizationService" in out.stdout.split()
        body = {"subject": {"type": "user", "id": "ben"}, "action": "delete",
                "resource": {"type": "data_flow", "id": "acme-sales-pipeline"}}
        out = grpcurl("-cacert", ca, "-d", json.dumps(body), address,
                      "gatehouse.v1.AuthorizationService/Check")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["decision"] == "DECISION_ALLOW"


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_mtls_server_and_grpcurl_with_a_client_certificate(
        kind: str, tls_certs: TlsCerts, tmp_path: Path) -> None:
    """`serve --tls-client-ca`: grpcurl with -cert/-key gets in; without, or a stranger's, not."""
    server = start_tls_server(tmp_path, tls_certs, *tls_args(tls_certs, kind, mutual=True),
                              client=tls_certs.client)
    try:
        address, ca = localhost(server.address), str(tls_certs.ca.issued.cert)
        good = grpcurl("-cacert", ca, "-cert", str(tls_certs.client.cert),
                       "-key", str(tls_certs.client.key), address, "grpc.health.v1.Health/Check")
        assert good.returncode == 0, good.stderr
        assert json.loads(good.stdout)["status"] == "SERVING"
        none = grpcurl("-cacert", ca, address, "grpc.health.v1.Health/Check")
        assert none.returncode != 0
        stranger = grpcurl("-cacert", ca, "-cert", str(tls_certs.stranger.cert),
                           "-key", str(tls_certs.stranger.key), address,
                           "grpc.health.v1.Health/Check")
        assert stranger.returncode != 0
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_serve_reloads_a_replaced_certificate(kind: str, tls_certs: TlsCerts,
                                              tmp_path: Path) -> None:
    """Replacing the certificate files of a running `gatehouse serve` changes what new
    connections get, logged with the new fingerprint; Checks go on answering."""
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    replace(cert, tls_certs.server.cert)
    replace(key, tls_certs.server.key)
    server = start_tls_server(tmp_path, tls_certs, "--tls-cert", str(cert), "--tls-key",
                              str(key), "--transport", kind)
    try:
        fresh = tls_certs.ca.issue(tmp_path / "next", "server", "gatehouse-next.test",
                                   server=True, serial=777)
        replace(key, fresh.key)
        replace(cert, fresh.cert)
        assert presented(server.address, tls_certs).serial_number == 777
        with grpc.secure_channel(localhost(server.address), credentials(tls_certs),
                                 OWN_CONNECTION) as channel:
            assert check(channel).decision == pb.DECISION_ALLOW
        reloaded = [json.loads(line) for line in server.logs().splitlines()
                    if "TLS certificate reloaded" in line]
        assert len(reloaded) == 1 and len(reloaded[0]["fingerprint"]) == 64
    finally:
        assert server.stop() == 0


class TestStartupRefusals:
    """`gatehouse serve` with unusable TLS settings exits before listening, naming the cause."""

    def serve(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*GATEHOUSE, "serve", "--listen", f"127.0.0.1:{free_port()}",
                               *args], cwd=ROOT, capture_output=True, text=True, timeout=60)

    @pytest.mark.parametrize(("given", "missing"), [
        ("--tls-cert", "--tls-key"), ("--tls-key", "--tls-cert"),
        ("--tls-client-ca", "--tls-cert")])
    def test_half_a_pair_is_a_usage_error(self, given: str, missing: str,
                                          tls_certs: TlsCerts) -> None:
        """One of cert/key alone (or a client CA alone) exits 2 naming the missing flag."""
        out = self.serve(given, str(tls_certs.server.cert))
        assert out.returncode == 2
        name = given.removeprefix("--").replace("-", "_")
        assert f"{name} ({given}): needs {missing.removeprefix('--').replace('-', '_')}" \
            in out.stderr

    def test_a_missing_certificate_file_is_named(self, tls_certs: TlsCerts,
                                                 tmp_path: Path) -> None:
        """A certificate path that does not exist: exit 1, one line naming it, no traceback."""
        missing = tmp_path / "gone.crt"
        out = self.serve("--tls-cert", str(missing), "--tls-key", str(tls_certs.server.key))
        assert out.returncode == 1
        assert f"gatehouse: --tls-cert {missing}: cannot read it" in out.stderr
        assert "Traceback" not in out.stderr

    def test_an_invalid_key_is_named(self, tls_certs: TlsCerts, tmp_path: Path) -> None:
        """A key file holding a certificate instead of a key: exit 1 naming the key file."""
        out = self.serve("--tls-cert", str(tls_certs.server.cert),
                         "--tls-key", str(tls_certs.server.cert))
        assert out.returncode == 1
        assert f"--tls-key {tls_certs.server.cert}: no PEM private key" in out.stderr
        assert "Traceback" not in out.stderr

    def test_an_invalid_client_ca_is_named(self, tls_certs: TlsCerts, tmp_path: Path) -> None:
        """A client CA file without a certificate: exit 1 naming it, from env variables too."""
        bad = tmp_path / "ca.pem"
        bad.write_text("not a certificate\n")
        out = subprocess.run(
            [*GATEHOUSE, "serve", "--listen", f"127.0.0.1:{free_port()}"], cwd=ROOT,
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "GATEHOUSE_TLS_CERT": str(tls_certs.server.cert),
                 "GATEHOUSE_TLS_KEY": str(tls_certs.server.key),
                 "GATEHOUSE_TLS_CLIENT_CA": str(bad)})
        assert out.returncode == 1
        assert f"--tls-client-ca {bad}: no PEM certificate" in out.stderr
        assert "Traceback" not in out.stderr


# -- the gatehouse server in process, with a recording hook ---------------------------------


@dataclass
class Recorder:
    seen: list[CallInfo] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def before(self, info: CallInfo) -> None:
        with self.lock:
            self.seen.append(info)

    def calls(self, method: str) -> list[CallInfo]:
        with self.lock:
            return [i for i in self.seen if i.method == method]


@dataclass
class InProcess:
    address: str
    recorder: Recorder


@pytest.fixture(scope="module", params=TRANSPORTS)
def mtls_gatehouse(request: pytest.FixtureRequest, tls_certs: TlsCerts) -> Iterator[InProcess]:
    """The real gatehouse Server (coupler policy and data) with mTLS and a recording hook."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    recorder = Recorder()
    config = ServerConfig(
        listen="127.0.0.1:0", policy_dir=ROOT / "policies/coupler",
        data_file=ROOT / "examples/coupler.data.yaml", watch_policy=False,
        transport=request.param,
        tls=TlsFiles(tls_certs.server.cert, tls_certs.server.key, tls_certs.ca.issued.cert))

    async def build() -> Server:
        runtime = await build_runtime(config)
        transport = await open_transport(config.transport)
        server = Server(config, runtime, transport)
        server.grpc.add_hooks(recorder.before)
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(build(), loop).result(60)
    assert server.grpc.name == request.param
    yield InProcess(f"localhost:{server.port}", recorder)
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


CHECK = "/gatehouse.v1.AuthorizationService/Check"


class TestMutualTlsThroughTheServer:
    def test_the_hook_sees_the_client_certificate_subject(self, mtls_gatehouse: InProcess,
                                                           tls_certs: TlsCerts) -> None:
        """An mTLS Check is decided, and the pre-call hook sees the caller's subject."""
        before = len(mtls_gatehouse.recorder.calls(CHECK))
        with grpc.secure_channel(mtls_gatehouse.address,
                                 credentials(tls_certs, tls_certs.client)) as channel:
            assert check(channel).decision == pb.DECISION_ALLOW
        seen = mtls_gatehouse.recorder.calls(CHECK)[before:]
        assert [i.client_subject for i in seen] == [TlsCerts.CLIENT_SUBJECT]

    @pytest.mark.parametrize("who", ["stranger", "nobody"])
    def test_untrusted_or_missing_client_certificates_are_refused(
            self, who: str, mtls_gatehouse: InProcess, tls_certs: TlsCerts) -> None:
        """A stranger's certificate or none: UNAVAILABLE at handshake; no call reaches a hook."""
        before = len(mtls_gatehouse.recorder.seen)
        client = tls_certs.stranger if who == "stranger" else None
        with grpc.secure_channel(mtls_gatehouse.address, credentials(tls_certs, client),
                                 OWN_CONNECTION) as channel, \
                pytest.raises(grpc.RpcError) as err:
            check(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(mtls_gatehouse.recorder.seen) == before

    def test_gatehouse_check_sends_the_key_from_the_environment(
            self, mtls_gatehouse: InProcess, tls_certs: TlsCerts) -> None:
        """`gatehouse check` over mTLS sends GATEHOUSE_API_KEY as a bearer token, prints no key."""
        before = len(mtls_gatehouse.recorder.calls(CHECK))
        out = gatehouse_check(
            "user:ben", "delete", FLOW, "--address", mtls_gatehouse.address,
            env={"GATEHOUSE_API_KEY": KEY, "GATEHOUSE_TLS_CA": str(tls_certs.ca.issued.cert),
                 "GATEHOUSE_TLS_CLIENT_CERT": str(tls_certs.client.cert),
                 "GATEHOUSE_TLS_CLIENT_KEY": str(tls_certs.client.key)})
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"ALLOW  user:ben delete {FLOW}")
        assert KEY not in out.stdout + out.stderr
        seen = mtls_gatehouse.recorder.calls(CHECK)[before:]
        assert len(seen) == 1
        assert dict(seen[0].metadata)["authorization"] == f"Bearer {KEY}"
        assert seen[0].client_subject == TlsCerts.CLIENT_SUBJECT

    def test_gatehouse_check_reads_the_key_from_a_file(
            self, mtls_gatehouse: InProcess, tls_certs: TlsCerts, tmp_path: Path) -> None:
        """--api-key-file (trailing newline trimmed) beats GATEHOUSE_API_KEY."""
        key_file = tmp_path / "key"
        key_file.write_text(KEY + "-file\n")
        before = len(mtls_gatehouse.recorder.calls(CHECK))
        out = gatehouse_check(
            "user:uma", "delete", FLOW, "--address", mtls_gatehouse.address,
            "--api-key-file", str(key_file), "--tls-ca", str(tls_certs.ca.issued.cert),
            "--tls-cert", str(tls_certs.client.cert), "--tls-key", str(tls_certs.client.key),
            env={"GATEHOUSE_API_KEY": "not-this-one"})
        assert out.returncode == 1, out.stderr  # uma may not delete the flow
        assert out.stdout.startswith("DENY")
        seen = mtls_gatehouse.recorder.calls(CHECK)[before:]
        assert dict(seen[0].metadata)["authorization"] == f"Bearer {KEY}-file"

    def test_gatehouse_check_without_a_client_certificate_is_refused(
            self, mtls_gatehouse: InProcess, tls_certs: TlsCerts) -> None:
        """`gatehouse check` with the CA but no certificate: exit 2 and UNAVAILABLE."""
        out = gatehouse_check("user:ben", "delete", FLOW, "--address", mtls_gatehouse.address,
                              "--tls-ca", str(tls_certs.ca.issued.cert))
        assert out.returncode == 2
        assert "UNAVAILABLE" in out.stderr


class TestCheckOptions:
    """`gatehouse check` refuses unusable key and TLS options before calling anything."""

    def test_an_empty_key_file_is_refused(self, tmp_path: Path) -> None:
        """An empty --api-key-file is exit 2 naming it (no anonymous call by accident)."""
        empty = tmp_path / "key"
        empty.write_text("\n")
        out = gatehouse_check("user:ben", "view", FLOW, "--api-key-file", str(empty))
        assert out.returncode == 2
        assert f"--api-key-file {empty}: empty" in out.stderr

    def test_a_missing_key_file_is_exit_2_without_repeating_it(self, tmp_path: Path) -> None:
        """A key file that does not exist is exit 2 naming the flag; what was given is
        not repeated, since it may be the key itself typed in the file's place."""
        out = gatehouse_check("user:ben", "view", FLOW, "--api-key-file",
                              str(tmp_path / "nope"))
        assert out.returncode == 2
        assert "--api-key-file: no such file" in out.stderr
        assert "nope" not in out.stderr

    def test_a_key_with_spaces_is_refused_without_echoing_it(self) -> None:
        """A key that is not one printable token is refused; the key is not printed."""
        out = gatehouse_check("user:ben", "view", FLOW,
                              env={"GATEHOUSE_API_KEY": "two words-secretpart"})
        assert out.returncode == 2
        assert "GATEHOUSE_API_KEY" in out.stderr and "secretpart" not in out.stderr

    def test_a_client_certificate_needs_its_key(self, tls_certs: TlsCerts) -> None:
        """--tls-cert without --tls-key is exit 2 naming both."""
        out = gatehouse_check("user:ben", "view", FLOW, "--tls-cert",
                              str(tls_certs.client.cert))
        assert out.returncode == 2
        assert "--tls-cert and --tls-key" in out.stderr

    def test_no_key_on_the_command_line(self) -> None:
        """There is no flag taking the key itself (it would show in ps and shell history)."""
        out = gatehouse_check("user:ben", "view", FLOW, "--api-key", KEY)
        assert out.returncode == 2
        assert "unrecognized arguments" in out.stderr
