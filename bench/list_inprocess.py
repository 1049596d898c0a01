"""ListAccessible server-side cost, in process (no gRPC).

Builds the Coupler graph at 10x scale (2,000 orgs x 5 workspaces x 20 members
from a 60-person pool per org x 50 flows per workspace) and adds two people:

  * a consultant who is admin in 100 workspaces across organizations, and so
    reaches 5,000 flows;
  * a guest who owns 10 flows in one workspace, and reaches exactly those.

Times a full listing for each (page size 10,000), median of --runs, and shows
that the small listing costs the same on a graph 10x smaller.

    .venv/bin/python bench/list_inprocess.py [--scale 10] [--runs 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from gatehouse.engine.listing import list_accessible  # noqa: E402
from gatehouse.graph.changes import Change, TouchRelationship  # noqa: E402
from gatehouse.graph.index import GraphIndex  # noqa: E402
from gatehouse.graph.model import ObjectRef, Relationship  # noqa: E402
from gatehouse.policy import load_policy  # noqa: E402

POLICY = load_policy(ROOT / "policies/coupler")


def rel(res: str, relation: str, subj: str) -> TouchRelationship:
    rt, _, ri = res.partition(":")
    st, _, si = subj.partition(":")
    return TouchRelationship(Relationship(ObjectRef(rt, ri), relation, ObjectRef(st, si)))


def build(scale: int, seed: int = 11) -> GraphIndex:
    rnd = random.Random(seed)
    ops = []
    orgs = 200 * scale
    for o in range(orgs):
        org = f"organization:o{o}"
        pool = [f"user:o{o}p{i}" for i in range(60)]
        ops.append(rel(org, "owner", pool[0]))
        for w in range(5):
            ws = f"workspace:o{o}w{w}"
            ops.append(rel(ws, "parent", org))
            members = rnd.sample(pool, 20)
            for m in members:
                ops.append(rel(ws, rnd.choice(["admin", "user", "guest"]), m))
            for f in range(50):
                flow = f"data_flow:o{o}w{w}f{f}"
                ops.append(rel(flow, "parent", ws))
                ops.append(rel(flow, "owner", rnd.choice(members)))
    for k in range(100):  # the consultant: admin in 100 workspaces
        ops.append(rel(f"workspace:o{(k * 7) % orgs}w{k % 5}", "admin", "user:consultant"))
    ops.append(rel("workspace:o3w1", "guest", "user:guest10"))
    for f in range(10):
        ops.append(rel(f"data_flow:o3w1f{f}", "owner", "user:guest10"))
    index = GraphIndex()
    index.apply([Change(1, tuple(ops))])
    return index


def timed(index: GraphIndex, subject: str, runs: int) -> tuple[float, int]:
    samples = []
    n = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        page = list_accessible(POLICY, index, subject, "view", "data_flow", limit=10_000)
        samples.append((time.perf_counter() - t0) * 1000)
        assert page.complete
        n = len(page.ids)
    return statistics.median(samples), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    rows = []
    for scale in sorted({max(1, args.scale // 10), args.scale}):
        t0 = time.perf_counter()
        index = build(scale)
        built = time.perf_counter() - t0
        big_ms, big_n = timed(index, "user:consultant", args.runs)
        small_ms, small_n = timed(index, "user:guest10", args.runs * 10)
        rows.append((scale, index.relationship_count, built, big_n, big_ms, small_n, small_ms))
    print("scale  relationships  build s  | listed  median ms | listed  median ms")
    for scale, rels, built, big_n, big_ms, small_n, small_ms in rows:
        print(f"{scale:>4}x  {rels:>13,}  {built:>7.1f}  | {big_n:>6,}  {big_ms:>9.2f} | "
              f"{small_n:>6,}  {small_ms:>9.3f}")
    print("targets: 5,000 flows < 50 ms; 10 flows < 1 ms regardless of graph size")


if __name__ == "__main__":
    main()
