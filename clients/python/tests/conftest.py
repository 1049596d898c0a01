"""Fixtures for the client's tests: real gatehouse servers on loopback.

The servers are this repository's own (``python -m gatehouse.cli serve``),
started as child processes; the client under test never imports them.
``ScriptedServer`` is a real gRPC server whose answers a test decides
(statuses, delays, TLS), for what a healthy gatehouse never does on demand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # for the repository's test helpers (Redis, certificates)
    sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, wait_serving  # noqa: E402 - needs the path above
from tests.redis_server import RedisServer  # noqa: E402
from tests.tls_certs import TlsCerts, make_certs  # noqa: E402

COUPLER = ("--policy", "policies/coupler", "--data", "examples/coupler.data.yaml")


@dataclass
class Gatehouse:
    """A `gatehouse serve` child process on ``port``; ``restart`` reuses the port."""

    directory: Path
    args: tuple[str, ...]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    credentials: grpc.ChannelCredentials | None = None
    """How the start-up health check reaches a server given --tls-cert (None: plaintext)."""

    def logs(self) -> str:
        return "".join(p.read_text() for p in sorted(
            self.directory.glob(f"server-{self.port}-*.log")))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Gatehouse:
        log = (self.directory / f"server-{self.port}-{uuid.uuid4().hex[:6]}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gatehouse.cli", "serve", "--listen", self.address,
             *self.args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_serving(self.address, self.proc, Path(log.name), credentials=self.credentials)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def gatehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatehouse]:
    """The embedded default (coupler policy, sample data, memory store), shared by tests
    that each write under their own ids."""
    server = Gatehouse(tmp_path_factory.mktemp("gatehouse"), COUPLER).start()
    yield server
    server.stop()


@pytest.fixture
def own_gatehouse(tmp_path: Path) -> Iterator[Gatehouse]:
    """A server for one test alone (stopped and restarted by it)."""
    server = Gatehouse(tmp_path, COUPLER).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_gatehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatehouse]:
    """Coupler on a private Redis: writes reach the index through the changelog."""
    redis = RedisServer(tmp_path_factory.mktemp("client-redis")).start()
    prefix = f"c{uuid.uuid4().hex[:8]}"
    server = Gatehouse(tmp_path_factory.mktemp("gatehouse-redis"),
                       (*COUPLER, "--redis-url", redis.url, "--redis-prefix", prefix)).start()
    yield server
    server.stop()
    redis.stop()


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> TlsCerts:
    """The repository's test certificates: a CA, a server certificate for localhost and
    127.0.0.1, a client certificate (``TlsCerts.CLIENT_SUBJECT``), an untrusted one."""
    return make_certs(tmp_path_factory.mktemp("tls"))


# -- a scripted gRPC server ------------------------------------------------------

# Unary methods answer bytes; streams a list of messages, optionally followed by
# a status to end with: ([msg, ...], code, details).
Answer = Callable[[bytes, grpc.ServicerContext],
                  "bytes | list[bytes] | tuple[list[bytes], grpc.StatusCode, str]"]


@dataclass
class Call:
    method: str
    metadata: dict[str, str]


class ScriptedServer:
    """A real gRPC server on loopback answering every method with ``answer``.

    ``answer(request_bytes, context)`` returns the response bytes or aborts
    with a status. Every call is recorded (method, metadata), so a test can
    count attempts and read what the client sent.
    """

    def __init__(self, answer: Answer, credentials: grpc.ServerCredentials | None = None,
                 ) -> None:
        self.answer = answer
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers((_Handler(self),))
        if credentials is None:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self._server.add_secure_port("127.0.0.1:0", credentials)
        self._server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def record(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls.append(Call(method, {k: v for k, v in context.invocation_metadata()
                                            if isinstance(v, str)}))

    def methods(self) -> list[str]:
        with self._lock:
            return [c.method.rsplit("/", 1)[-1] for c in self.calls]

    def stop(self) -> None:
        self._server.stop(None)


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, owner: ScriptedServer) -> None:
        self.owner = owner

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(details.method)

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.owner.record(method, context)
            answer = self.owner.answer(request, context)
            assert isinstance(answer, bytes)
            return answer

        def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            self.owner.record(method, context)
            answer = self.owner.answer(request, context)
            if isinstance(answer, bytes):
                answer = [answer]
            if isinstance(answer, tuple):
                messages, code, details = answer
                yield from messages
                context.abort(code, details)
            yield from answer

        if method.endswith(("/ListAccessible", "/ReadRelationships", "/Watch")):
            return grpc.unary_stream_rpc_method_handler(stream)
        return grpc.unary_unary_rpc_method_handler(unary)


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(answer: Answer, credentials: grpc.ServerCredentials | None = None,
             ) -> ScriptedServer:
        server = ScriptedServer(answer, credentials)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
