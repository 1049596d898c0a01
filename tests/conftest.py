"""Shared fixtures: real gatehouse server processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.redis_server import RedisServer
from tests.tls_certs import TlsCerts, make_certs

ROOT = Path(__file__).resolve().parent.parent
GATEHOUSE = [sys.executable, "-m", "gatehouse.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A `gatehouse serve` child process and how to reach it."""

    address: str
    proc: subprocess.Popen[str]
    log_path: Path
    channels: list[grpc.Channel] = field(default_factory=list)

    def channel(self) -> grpc.Channel:
        ch = grpc.insecure_channel(self.address)
        self.channels.append(ch)
        return ch

    def logs(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        for ch in self.channels:
            ch.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def wait_serving(address: str, proc: subprocess.Popen[Any], log_path: Path,
                 timeout: float = 30, *,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
    """Wait until the server at ``address`` answers health SERVING (over TLS with
    ``credentials``, reaching it as localhost: the test certificates name it)."""
    deadline = time.monotonic() + timeout
    with (grpc.insecure_channel(address) if credentials is None else
          grpc.secure_channel(localhost(address), credentials)) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)  # poll interval of a bounded wait
    proc.kill()
    raise RuntimeError(f"server did not become healthy:\n{log_path.read_text()}")


def localhost(address: str) -> str:
    """The same port by name: the test server certificate names localhost (and 127.0.0.1)."""
    return f"localhost:{address.rsplit(':', 1)[1]}"


def start_server(tmp: Path, *args: str, cwd: Path = ROOT,
                 credentials: grpc.ChannelCredentials | None = None,
                 env: Mapping[str, str] | None = None) -> ServerProcess:
    """Start `gatehouse serve` with ``args`` on a free port and wait until it serves
    (over TLS with ``credentials``, for a server given --tls-cert); ``env`` adds
    environment variables."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    log_path = tmp / f"server-{port}.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [*GATEHOUSE, "serve", "--listen", address, *args],
        cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    wait_serving(address, proc, log_path, credentials=credentials)
    return ServerProcess(address, proc, log_path)


def start_on_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                   store: str, *args: str) -> ServerProcess:
    """Start a server on the memory store, or on the session's Redis under a fresh prefix."""
    extra: list[str] = []
    if store == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        extra = ["--redis-url", redis.url, "--redis-prefix", f"t{uuid.uuid4().hex[:8]}"]
    return start_server(tmp_path_factory.mktemp(store), *args, *extra)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private Redis for the session; tests isolate themselves by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def coupler_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The embedded default: coupler policy and the sample data, as `make serve` runs it."""
    server = start_server(tmp_path_factory.mktemp("coupler"), "--policy", "policies/coupler",
                          "--data", "examples/coupler.data.yaml")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> TlsCerts:
    """A CA, a server certificate for localhost/127.0.0.1, a client one, an untrusted CA's."""
    return make_certs(tmp_path_factory.mktemp("tls"))
