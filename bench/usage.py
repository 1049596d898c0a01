"""Usage benchmark: ComputeUsage on a large organization, RecordUsage throughput.

Builds, in a private Redis, one Coupler organization of --workspaces
workspaces (default 1,000) with --members member relationships (default
20,000, drawn from a pool of 8,000 people, so de-duplication matters) and
--connections connections (default 50,000, mixed source types), then starts a
real `gatehouse serve --redis-url ...` and measures over gRPC:

  * ComputeUsage at organization level: the first call (cold: every
    workspace computed), repeated calls (warm), and calls right after a
    write into one workspace (only that workspace recomputed);
  * RecordUsage: calls/s with --inflight calls in flight from a client process.

    .venv/bin/python bench/usage.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gatehouse.graph.changes import Operation, PutObject, TouchRelationship  # noqa: E402
from gatehouse.graph.model import ObjectRef, Relationship  # noqa: E402
from gatehouse.graph.redis import RedisGraphStore  # noqa: E402
from gatehouse.policy import load_policy  # noqa: E402
from gatehouse.v1 import graph_pb2, graph_pb2_grpc, usage_pb2, usage_pb2_grpc  # noqa: E402
from tests.conftest import free_port, wait_serving  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

POLICY = load_policy(ROOT / "policies/coupler")
SOURCES = [("google_ads", "tenant"), ("asana", "connection"), ("hubspot", "connection"),
           ("csv", "url"), ("ga4", "tenant")]


def ref(key: str) -> ObjectRef:
    t, _, i = key.partition(":")
    return ObjectRef(t, i)


def rel(res: str, relation: str, subj: str) -> TouchRelationship:
    return TouchRelationship(Relationship(ref(res), relation, ref(subj)))


def build_ops(workspaces: int, members: int, connections: int, seed: int = 7) -> list[Operation]:
    rnd = random.Random(seed)
    org = "organization:big"
    ops: list[Operation] = [PutObject(ref(org), {"plan": "business"}),
                            rel(org, "owner", "user:p0")]
    pool = 8000
    ops += [PutObject(ref(f"user:p{i}"), {"email": f"p{i}@big.example"}) for i in range(pool)]
    for w in range(workspaces):
        ops.append(rel(f"workspace:w{w}", "parent", org))
    for m in range(members):
        ops.append(rel(f"workspace:w{m % workspaces}", rnd.choice(["admin", "user", "guest"]),
                       f"user:p{rnd.randrange(pool)}"))
    for c in range(connections):
        ws = f"workspace:w{c % workspaces}"
        source, kind = rnd.choice(SOURCES)
        attrs: dict[str, object] = {"source_type": source, "shared": rnd.random() < 0.5,
                                    "credential_id": f"cred-{rnd.randrange(connections // 3)}"}
        if kind == "tenant":
            attrs["tenants"] = [f"t{rnd.randrange(200)}" for _ in range(rnd.randrange(1, 4))]
        ops.append(rel(f"connection:c{c}", "parent", ws))
        ops.append(PutObject(ref(f"connection:c{c}"), attrs))
    for f in range(workspaces * 10):
        key = f"data_flow:f{f}"
        ops.append(rel(key, "parent", f"workspace:w{f % workspaces}"))
        ops.append(PutObject(ref(key), {"destination_type": rnd.choice(
            ["google_sheets", "bigquery", "looker", "excel", "snowflake"])}))
    # Random members repeat; a write batch names each relationship once.
    return list({(op.relationship if isinstance(op, TouchRelationship) else op.ref): op
                 for op in ops}.values())


async def load(url: str, prefix: str, ops: list[Operation]) -> None:
    store = RedisGraphStore(url, prefix)
    def is_parent(op: Operation) -> bool:
        return isinstance(op, TouchRelationship) and op.relationship.relation == "parent"

    parents = [op for op in ops if is_parent(op)]
    rest = [op for op in ops if not is_parent(op)]
    parents.sort(key=lambda op: op.relationship.resource.type != "workspace")
    for batch in (parents, rest):
        for i in range(0, len(batch), 2000):
            await store.write(batch[i:i + 2000], (), POLICY.write_rules)
    await store.close()


def timed(fn, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def record_load(address: str, seconds: float, inflight: int, workspaces: int,
                      per_call: int = 1) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = usage_pb2_grpc.UsageServiceStub(ch)
        lat: list[float] = []
        stop = time.perf_counter() + seconds
        run = uuid.uuid4().hex[:8]
        counter = iter(range(10**9))

        async def worker() -> None:
            while time.perf_counter() < stop:
                events = []
                for _ in range(per_call):
                    i = next(counter)
                    events.append(usage_pb2.UsageEvent(
                        event_id=f"{run}-{i}", workspace_id=f"w{i % workspaces}",
                        metric="llm_credits", amount=1.0))
                t0 = time.perf_counter()
                await stub.RecordUsage(usage_pb2.RecordUsageRequest(
                    organization_id="big", events=events))
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        elapsed = time.perf_counter() - t0
    lat.sort()
    return {"calls_per_s": len(lat) / elapsed, "events_per_s": len(lat) * per_call / elapsed,
            "p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[int(len(lat) * 0.99)] * 1000}


async def record_store(url: str, seconds: float, inflight: int, workspaces: int
                       ) -> dict[str, float]:
    """The store alone (no gRPC): one event per call, as the RPC makes them."""
    from gatehouse.usage.events import UsageEvent
    from gatehouse.usage.redis import RedisUsageStore

    metric = POLICY.usage.metrics["llm_credits"]
    store = RedisUsageStore(url, "bu")
    done = 0
    stop = time.perf_counter() + seconds
    run = uuid.uuid4().hex[:8]

    async def worker(k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < stop:
            await store.record(UsageEvent(f"s{run}-{i}", "organization:big",
                                          f"w{i % workspaces}", metric, 1.0, "", time.time()),
                               35 * 86400)
            done += 1
            i += inflight

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(inflight)))
    elapsed = time.perf_counter() - t0
    await store.close()
    return {"store_record_calls_per_s": done / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workspaces", type=int, default=1000)
    ap.add_argument("--members", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=50000)
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    if args.quick:
        args.workspaces, args.members, args.connections, args.seconds = 100, 2000, 5000, 3
    results: dict[str, float] = {"workspaces": args.workspaces, "members": args.members,
                                 "connections": args.connections}
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        server = None
        try:
            ops = build_ops(args.workspaces, args.members, args.connections)
            t0 = time.perf_counter()
            asyncio.run(load(redis.url, "bu", ops))
            results["load_s"] = time.perf_counter() - t0
            address = f"127.0.0.1:{free_port()}"
            log = Path(tmp) / "server.log"
            server = subprocess.Popen(
                [sys.executable, "-m", "gatehouse.cli", "serve", "--listen", address,
                 "--policy", str(ROOT / "policies/coupler"), "--redis-url", redis.url,
                 "--redis-prefix", "bu", "--no-watch", "--log-level", "warning"],
                stdout=log.open("w"), stderr=subprocess.STDOUT)
            wait_serving(address, server, log, timeout=120)
            with grpc.insecure_channel(address) as ch:
                usage = usage_pb2_grpc.UsageServiceStub(ch)
                graph = graph_pb2_grpc.GraphServiceStub(ch)
                req = usage_pb2.ComputeUsageRequest(organization_id="big")
                cold = timed(lambda: usage.ComputeUsage(req), 1)[0]
                warm = timed(lambda: usage.ComputeUsage(req), 30)
                resp = usage.ComputeUsage(req)
                values = {m.name: m.value for m in resp.metrics}
                after_write = []
                for i in range(15):
                    upd = graph_pb2.RelationshipUpdate(
                        operation=graph_pb2.RelationshipUpdate.OPERATION_TOUCH,
                        relationship=graph_pb2.Relationship(
                            resource={"type": "workspace", "id": f"w{i * 7}"},
                            relation="guest", subject={"type": "user", "id": f"late{i}"}))
                    w = graph.WriteRelationships(graph_pb2.WriteRelationshipsRequest(
                        updates=[upd]))
                    fresh = usage_pb2.ComputeUsageRequest(organization_id="big")
                    fresh.consistency.at_least_as_fresh = w.revision
                    after_write += timed(lambda fresh=fresh: usage.ComputeUsage(fresh), 1)
            results.update({
                "compute_cold_ms": cold,
                "compute_warm_p50_ms": statistics.median(warm),
                "compute_after_write_p50_ms": statistics.median(after_write),
                "users": values["users"], "accounts": values["accounts"],
            })
            single = asyncio.run(record_load(address, args.seconds, args.inflight,
                                             args.workspaces))
            batched = asyncio.run(record_load(address, args.seconds, 8, args.workspaces, 100))
            results.update({f"rpc_single_{k}": v for k, v in single.items()})
            results.update({f"rpc_batch100_{k}": v for k, v in batched.items()})
            results.update(asyncio.run(record_store(redis.url, args.seconds, args.inflight,
                                                    args.workspaces)))
        finally:
            if server is not None:
                server.terminate()
                server.wait(20)
            redis.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"organization: {args.workspaces:,} workspaces, {args.members:,} member "
          f"relationships, {args.connections:,} connections (users {results['users']:,.0f}, "
          f"accounts {results['accounts']:,.0f}); loaded in {results['load_s']:.1f} s")
    rows = [
        ("ComputeUsage, org level, first call (cold)", f"{results['compute_cold_ms']:.1f} ms"),
        ("ComputeUsage, org level, p50 warm", f"{results['compute_warm_p50_ms']:.1f} ms"),
        ("ComputeUsage, org level, p50 after a write",
         f"{results['compute_after_write_p50_ms']:.1f} ms"),
        ("RecordUsage store.record calls/s (Redis, no gRPC)",
         f"{results['store_record_calls_per_s']:,.0f} ({args.inflight} in flight)"),
        ("RecordUsage RPC, 1 event per call", f"{results['rpc_single_calls_per_s']:,.0f} calls/s "
         f"(p50 {results['rpc_single_p50_ms']:.1f} ms, p99 {results['rpc_single_p99_ms']:.1f} ms, "
         f"{args.inflight} in flight)"),
        ("RecordUsage RPC, 100 events per call",
         f"{results['rpc_batch100_events_per_s']:,.0f} events/s "
         f"(p50 {results['rpc_batch100_p50_ms']:.1f} ms, 8 in flight)"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
