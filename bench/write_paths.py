"""Both single-item write paths over gRPC, side by side, against a private Redis.

Starts a private Redis (AOF, ``appendfsync always``), seeds one Coupler
organization of --workspaces workspaces, starts ``gatehouse serve
--redis-url`` and then, round after round (the two phases interleaved so that
drift on a shared machine spreads over both), keeps --inflight calls in flight
from a client process (--clients N: spread over N, each with its own channel)
for --seconds each:

  * RecordUsage with one event per call (a new event id every call);
  * WriteRelationships with one relationship per call (TOUCH of a new
    ``workspace:wN#guest@user:...`` every call).

Requests are built and serialized before the timed window; the timed loop
sends bytes and takes bytes (as ``load.py`` does), so the client's share of
the two cores is as small as it can be. For each phase it prints the median
over the rounds of calls/s, p50 and p99 latency, and the CPU time per call
of the server, of Redis and of the clients (utime + stime; on a busy shared
machine CPU per call moves less than calls/s does), and how many calls one
EVALSHA carried on average (Redis's commandstats).

``--baseline [NAME=]SRC`` (repeatable) also serves the same load from another
checkout's ``src`` folder (for example the commit before a change), on its
own Redis prefix of the same Redis, and interleaves its rounds with ours:
before and after measured in one run. (``git archive <commit> src | tar -x
-C DIR`` and a copy of the generated ``src/gatehouse/v1`` make such a folder.)
``--server-env NAME=VALUE`` passes an environment variable to our server
only. ``--profile DIR`` records py-spy's collapsed stacks of every server
during each phase of the first round (``--profile-gil``: of the thread
holding the GIL only, which shows where the Python time goes).

    .venv/bin/python bench/write_paths.py [--quick] [--json] [--baseline /path/to/src]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gatehouse.graph.changes import Operation, PutObject, TouchRelationship  # noqa: E402
from gatehouse.graph.model import ObjectRef, Relationship  # noqa: E402
from gatehouse.graph.redis import RedisGraphStore  # noqa: E402
from gatehouse.policy import load_policy  # noqa: E402
from gatehouse.v1 import graph_pb2, usage_pb2  # noqa: E402
from tests.conftest import free_port, wait_serving  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

POLICY_DIR = ROOT / "policies/coupler"
RECORD = "/gatehouse.v1.UsageService/RecordUsage"
WRITE = "/gatehouse.v1.GraphService/WriteRelationships"
PHASES = {"record": RECORD, "write": WRITE}


def seed_ops(workspaces: int) -> list[Operation]:
    org = ObjectRef("organization", "big")
    ops: list[Operation] = [PutObject(org, {"plan": "business"}),
                            TouchRelationship(Relationship(org, "owner", ObjectRef("user", "o")))]
    ops += [TouchRelationship(Relationship(ObjectRef("workspace", f"w{w}"), "parent", org))
            for w in range(workspaces)]
    return ops


async def seed(url: str, prefix: str, workspaces: int) -> None:
    store = RedisGraphStore(url, prefix)
    await store.write(seed_ops(workspaces), (), load_policy(POLICY_DIR).write_rules)
    await store.close()


def record_requests(n: int, workspaces: int) -> list[bytes]:
    run = uuid.uuid4().hex[:8]
    out = []
    for i in range(n):
        req = usage_pb2.RecordUsageRequest(organization_id="big", events=[usage_pb2.UsageEvent(
            event_id=f"{run}-{i}", workspace_id=f"w{i % workspaces}", metric="llm_credits",
            amount=1.0)])
        out.append(req.SerializeToString())
    return out


def write_requests(n: int, workspaces: int) -> list[bytes]:
    run = uuid.uuid4().hex[:8]
    touch = graph_pb2.RelationshipUpdate.OPERATION_TOUCH
    out = []
    for i in range(n):
        req = graph_pb2.WriteRelationshipsRequest(updates=[graph_pb2.RelationshipUpdate(
            operation=touch, relationship=graph_pb2.Relationship(
                resource={"type": "workspace", "id": f"w{i % workspaces}"}, relation="guest",
                subject={"type": "user", "id": f"g{run}{i}"}))])
        out.append(req.SerializeToString())
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def script_calls(redis_url: str) -> int:
    """EVALSHA calls Redis has run so far (each carries one or more items)."""
    import redis as redis_sync

    client = redis_sync.Redis.from_url(redis_url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def _client(address: str, method: str, requests: list[bytes], inflight: int,
                  t_open: float, t_close: float) -> dict[str, Any]:
    """One client process's share: ``inflight`` callers until ``t_close`` (wall clock)."""
    async with grpc.aio.insecure_channel(address) as ch:
        call = ch.unary_unary(method)
        it = iter(requests)
        lat: list[float] = []
        done = 0
        errors = 0
        cpu: dict[str, float] = {}

        async def worker() -> None:
            nonlocal done, errors
            for raw in it:
                t0 = time.time()
                if t0 >= t_close:
                    return
                try:
                    await call(raw)
                except grpc.aio.AioRpcError:
                    errors += 1
                t1 = time.time()
                if t_open <= t1 < t_close:
                    done += 1
                    if t0 >= t_open:
                        lat.append(t1 - t0)

        async def stamps() -> None:
            await asyncio.sleep(max(0.0, t_open - time.time()))
            cpu["open"] = sum(os.times()[:2])
            await asyncio.sleep(max(0.0, t_close - time.time()))
            cpu["close"] = sum(os.times()[:2])

        await asyncio.gather(stamps(), *(worker() for _ in range(inflight)))
    return {"done": done, "errors": errors, "lat": lat, "cpu": cpu["close"] - cpu["open"],
            "left": next(it, None) is not None}


def _client_process(args: tuple[str, str, list[bytes], int, float, float]) -> dict[str, Any]:
    return asyncio.run(_client(*args))


def drive(address: str, method: str, requests: list[bytes], seconds: float, inflight: int,
          warmup: float, pid: int, redis_pid: int, redis_url: str,
          clients: int = 1) -> dict[str, float]:
    """``inflight`` callers, spread over ``clients`` processes (each its own channel), for
    warmup + seconds; figures from the window after warm-up."""
    import concurrent.futures
    import multiprocessing

    start = time.time() + 2.0  # the client processes start meanwhile
    t_open, t_close = start + warmup, start + warmup + seconds
    shares = [inflight // clients + (1 if k < inflight % clients else 0) for k in range(clients)]
    parts = [requests[k::clients] for k in range(clients)]
    with concurrent.futures.ProcessPoolExecutor(
            clients, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_client_process, (address, method, parts[k], shares[k],
                                                 t_open, t_close)) for k in range(clients)]
        time.sleep(max(0.0, t_open - time.time()))
        cpu = {"open": cpu_seconds(pid), "redis_open": cpu_seconds(redis_pid),
               "scripts_open": script_calls(redis_url)}
        time.sleep(max(0.0, t_close - time.time()))
        cpu.update({"close": cpu_seconds(pid), "redis_close": cpu_seconds(redis_pid),
                    "scripts_close": script_calls(redis_url)})
        results = [f.result() for f in futures]
    errors = sum(r["errors"] for r in results)
    if errors:
        raise SystemExit(f"{errors} calls of {method} failed")
    if not all(r["left"] for r in results):
        raise SystemExit("ran out of prepared requests; raise --max-rate")
    done = sum(r["done"] for r in results)
    lat = sorted(x for r in results for x in r["lat"])
    return {"calls_per_s": done / seconds,
            "p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
            "server_us_per_call": (cpu["close"] - cpu["open"]) / max(done, 1) * 1e6,
            "redis_us_per_call": (cpu["redis_close"] - cpu["redis_open"]) / max(done, 1) * 1e6,
            "client_us_per_call": sum(r["cpu"] for r in results) / max(done, 1) * 1e6,
            "calls_per_script": done / max(cpu["scripts_close"] - cpu["scripts_open"], 1)}


class Server:
    def __init__(self, name: str, src: Path, redis_url: str, prefix: str, tmp: Path,
                 env: dict[str, str]) -> None:
        self.name, self.prefix = name, prefix
        self.address = f"127.0.0.1:{free_port()}"
        log = tmp / f"server-{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gatehouse.cli", "serve", "--listen", self.address,
             "--policy", str(POLICY_DIR), "--redis-url", redis_url, "--redis-prefix", prefix,
             "--no-watch", "--log-level", "warning"],
            stdout=log.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, **env, "PYTHONPATH": str(src)}, cwd=tmp)
        wait_serving(self.address, self.proc, log, timeout=60)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def profiled(out: Path | None, pid: int, seconds: float, gil: bool
             ) -> subprocess.Popen[bytes] | None:
    if out is None:
        return None
    spy = str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                             "--rate", "200", "--format", "raw", "--output", str(out),
                             "--nonblocking", *(["--gil"] if gil else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--clients", type=int, default=1,
                    help="client processes sharing the --inflight calls (default 1)")
    ap.add_argument("--workspaces", type=int, default=100)
    ap.add_argument("--max-rate", type=int, default=15000,
                    help="requests prepared per second of a phase (default 15,000)")
    ap.add_argument("--baseline", action="append", default=[], metavar="[NAME=]SRC",
                    help="another checkout's src folder to compare (repeatable; NAME "
                         "defaults to before)")
    ap.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--profile", type=Path, metavar="DIR")
    ap.add_argument("--profile-gil", action="store_true",
                    help="profile only the thread holding the GIL (where Python time goes)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 3, 1
    env = dict(item.split("=", 1) for item in args.server_env)
    builders: dict[str, Callable[[int, int], list[bytes]]] = {
        "record": record_requests, "write": write_requests}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        redis = RedisServer(tmp / "redis").start()
        servers: list[Server] = []
        assert redis.proc is not None
        redis_pid = redis.proc.pid
        try:
            targets: list[tuple[str, Path, str, dict[str, str]]] = []
            for k, spec in enumerate(args.baseline):
                name, _, src = spec.rpartition("=")
                targets.append((name or "before", Path(src).resolve(), f"wb{k}", {}))
            targets.append(("after", ROOT / "src", "wa", env))
            for name, src, prefix, extra in targets:
                asyncio.run(seed(redis.url, prefix, args.workspaces))
                servers.append(Server(name, src, redis.url, prefix, tmp, extra))
            n = int(args.max_rate * (args.seconds + args.warmup))
            for r in range(args.rounds):
                for phase, method in PHASES.items():
                    for server in servers:
                        requests = builders[phase](n, args.workspaces)
                        spy = profiled(args.profile / f"{server.name}-{phase}.txt"
                                       if args.profile and r == 0 else None,
                                       server.proc.pid, args.warmup + args.seconds,
                                       args.profile_gil)
                        figures = drive(server.address, method, requests, args.seconds,
                                        args.inflight, args.warmup, server.proc.pid, redis_pid,
                                        redis.url, args.clients)
                        if spy is not None:
                            spy.wait(30)
                        rows.append({"round": r + 1, "server": server.name, "phase": phase,
                                     **figures})
                        print(f"round {r + 1} {server.name:<8} {phase:<6} "
                              f"{figures['calls_per_s']:8,.0f} calls/s  p50 "
                              f"{figures['p50_ms']:6.2f} ms  p99 {figures['p99_ms']:6.2f} ms  "
                              f"CPU µs/call: server {figures['server_us_per_call']:3.0f}, redis "
                              f"{figures['redis_us_per_call']:3.0f}, client "
                              f"{figures['client_us_per_call']:3.0f}; "
                              f"{figures['calls_per_script']:.1f} calls per script call",
                              file=sys.stderr)
        finally:
            for server in servers:
                server.stop()
            redis.stop()
    summary: dict[str, dict[str, float]] = {}
    for server in dict.fromkeys(row["server"] for row in rows):
        for phase in PHASES:
            mine = [row for row in rows if row["server"] == server and row["phase"] == phase]
            if mine:
                summary[f"{server}-{phase}"] = {
                    key: statistics.median(row[key] for row in mine)
                    for key in ("calls_per_s", "p50_ms", "p99_ms", "server_us_per_call",
                                "redis_us_per_call", "client_us_per_call",
                                "calls_per_script")}
    if args.json:
        print(json.dumps({"rounds": rows, "medians": summary, "inflight": args.inflight,
                          "seconds": args.seconds}, indent=2))
        return
    names = {"record": "RecordUsage, 1 event per call",
             "write": "WriteRelationships, 1 relationship per call"}
    print(f"{args.inflight} in flight, {args.rounds} rounds x {args.seconds:g} s, medians")
    print(f"{'server':<9} {'call':<44} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'CPU µs/call: server':>20} {'redis':>6} {'client':>7} {'calls/script':>13}")
    for key, fig in summary.items():
        server, phase = key.split("-", 1)
        print(f"{server:<9} {names[phase]:<44} {fig['calls_per_s']:>8,.0f} "
              f"{fig['p50_ms']:>7.2f} {fig['p99_ms']:>7.2f} {fig['server_us_per_call']:>20.0f} "
              f"{fig['redis_us_per_call']:>6.0f} {fig['client_us_per_call']:>7.0f} "
              f"{fig['calls_per_script']:>13.1f}")


if __name__ == "__main__":
    main()
