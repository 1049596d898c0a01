"""`gatehouse serve --workers N`: several processes on one port, one Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from tests.conftest import ROOT, free_port, wait_serving
from tests.e2e.test_graph_service import check, update
from tests.redis_server import RedisServer


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append(int(entry.name))
    return out


class TestWorkers:
    def test_workers_share_the_port_and_stop_together(self, tmp_path: Path,
                                                      redis_server: RedisServer) -> None:
        """Two workers serve one address with the data loaded once; a write on one is seen
        at its revision on any connection; SIGTERM stops them all cleanly."""
        address = f"127.0.0.1:{free_port()}"
        log = tmp_path / "workers.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "gatehouse.cli", "serve", "--listen", address,
             "--workers", "2", "--policy", "policies/coupler",
             "--data", "examples/coupler.data.yaml", "--redis-url", redis_server.url,
             "--redis-prefix", f"wk{uuid.uuid4().hex[:6]}"],
            cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_serving(address, proc, log)
            deadline = time.monotonic() + 20
            while len(children_of(proc.pid)) < 2:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)  # poll interval of a bounded wait
            workers = children_of(proc.pid)
            assert len(workers) == 2
            for pid in workers:  # settings on argv; the Redis URL only in the environment
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                assert b"--workers=1" in argv and b"--reuse-port" in argv
                assert not any(redis_server.url.encode() in a for a in argv)
                assert f"GATEHOUSE_REDIS_URL={redis_server.url}".encode() in \
                    Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            # Each new channel is a new connection; the kernel spreads them.
            for i in range(12):
                with grpc.insecure_channel(address) as ch:
                    w = gpb_grpc.GraphServiceStub(ch).WriteRelationships(
                        gpb.WriteRelationshipsRequest(
                            updates=[update(f"workspace:globex#guest@user:wk{i}")]))
                with grpc.insecure_channel(address) as ch:
                    stub = apb_grpc.AuthorizationServiceStub(ch)
                    assert check(stub, f"user:wk{i}", "view", "workspace:globex",
                                 at=w.revision).decision == apb.DECISION_ALLOW
                    assert check(stub, "user:ben", "delete", "data_flow:acme-sales-pipeline"
                                 ).decision == apb.DECISION_ALLOW
            logs = log.read_text()
            assert logs.count('"msg": "serving"') == 2  # both workers served
            assert logs.count('"msg": "data file loaded"') == 1  # loaded once, by the parent
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or \
                "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
