#!/usr/bin/env python3
"""Engine-only Check benchmark: ``engine.check`` in a tight loop, no gRPC.

Two graphs, both with the Coupler policy set (``policies/coupler``):

* ``sample`` — ``examples/coupler.data.yaml``, the embedded default;
* ``generated`` — a deterministic Coupler tenancy (fixed seed): 200
  organizations x 5 workspaces x 20 members (admin/user/guest, some members
  in several workspaces and a few consultants in several organizations), an
  owner per organization, 50 data flows and 10 connections (shared or not)
  per workspace, each owned by a member, each flow using a connection.

For each graph it measures the index build (``GraphIndex.from_snapshot``,
the server's start-up path) and the memory the index holds (tracemalloc
around a separate build), then times a request mix built before any timing:
one thread, ``time.perf_counter`` around the whole loop, median of N runs.
On the generated graph every request's expected decision is computed by an
independent model of the Coupler role table (DESIGN.md §9) and compared with
the engine's answer once, outside the timed loop.

    .venv/bin/python bench/check_inprocess.py            # full run (make bench)
    .venv/bin/python bench/check_inprocess.py --quick    # short smoke run
    .venv/bin/python bench/check_inprocess.py --json     # machine-readable
    .venv/bin/python bench/check_inprocess.py --breakdown  # ns/check per request kind
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _table import print_rows

from gatehouse.engine import check
from gatehouse.graph.changes import Operation, PutObject, TouchRelationship
from gatehouse.graph.datafile import load_data_file
from gatehouse.graph.index import GraphIndex
from gatehouse.graph.model import ObjectRecord, ObjectRef, Relationship, Snapshot
from gatehouse.graph.schema import object_problems, relationship_problem
from gatehouse.names import object_key, type_of
from gatehouse.policy import CompiledPolicy, load_policy

ROOT = Path(__file__).resolve().parent.parent
POLICY_DIR = ROOT / "policies" / "coupler"
SAMPLE_DATA = ROOT / "examples" / "coupler.data.yaml"
TARGET = 200_000  # engine-only checks per second on one core
DEFAULT_SEED = 20240601

# A request as the timed loop sees it: (subject key, action, resource type, resource key).
Request = tuple[str, str, str, str]


# -- graphs -----------------------------------------------------------------


@dataclass(slots=True)
class Workspace:
    key: str
    org: Org
    members: dict[str, str] = field(default_factory=dict)  # user key -> role
    flows: list[tuple[str, str]] = field(default_factory=list)  # (flow key, owner key)
    conns: list[tuple[str, str, bool]] = field(default_factory=list)  # (key, owner, shared)


@dataclass(slots=True)
class Org:
    key: str
    owner: str
    workspaces: list[Workspace] = field(default_factory=list)


@dataclass(slots=True)
class Shape:
    orgs: int = 200
    workspaces: int = 5
    members: int = 20
    flows: int = 50
    connections: int = 10
    seed: int = DEFAULT_SEED


ROLE_WEIGHTS = {"admin": 2, "user": 13, "guest": 5}  # per workspace of 20: ~2 / 13 / 5
OWNER_WEIGHTS = {"admin": 3, "user": 3, "guest": 1}  # who creates flows and connections
SHARED_RATIO = 0.4
CONSULTANT_RATIO = 0.02  # memberships held by people who work for several organizations
SOURCE_TYPES = ("hubspot", "google_ads", "asana", "csv", "salesforce", "bigquery")


def generate_graph(shape: Shape) -> tuple[list[Operation], list[Org]]:
    """A deterministic Coupler tenancy: write operations plus a model for the mix."""
    rng = random.Random(shape.seed)
    ops: list[Operation] = []

    def put(type_: str, id_: str, **attrs: Any) -> ObjectRef:
        ref = ObjectRef(type_, id_)
        ops.append(PutObject(ref, attrs))
        return ref

    def rel(resource: ObjectRef, relation: str, subject: ObjectRef) -> None:
        ops.append(TouchRelationship(Relationship(resource, relation, subject)))

    users: dict[str, ObjectRef] = {}

    def user(id_: str) -> ObjectRef:
        ref = users.get(id_)
        if ref is None:
            ref = users[id_] = put("user", id_, email=f"{id_}@example.com")
        return ref

    consultants = [f"consultant-{i}" for i in range(max(1, shape.orgs // 4))]
    pool_size = shape.members * 3 // 2  # people in an org: some are in several workspaces
    roles, role_w = list(ROLE_WEIGHTS), list(ROLE_WEIGHTS.values())
    orgs: list[Org] = []
    for o in range(shape.orgs):
        org_ref = put("organization", f"org-{o}", name=f"Org {o}", plan="pro")
        owner = user(f"o{o}-owner")
        rel(org_ref, "owner", owner)
        org = Org(org_ref.key, owner.key)
        orgs.append(org)
        pool = [f"o{o}-u{i}" for i in range(pool_size)]
        for w in range(shape.workspaces):
            ws_ref = put("workspace", f"o{o}-w{w}", name=f"Workspace {w}", slug=f"w{w}")
            rel(ws_ref, "parent", org_ref)
            ws = Workspace(ws_ref.key, org)
            org.workspaces.append(ws)
            for uid in rng.sample(pool, shape.members):
                if rng.random() < CONSULTANT_RATIO:
                    uid = rng.choice(consultants)
                role = rng.choices(roles, role_w)[0]
                if user(uid).key in ws.members:
                    continue
                rel(ws_ref, role, users[uid])
                ws.members[users[uid].key] = role
            member_keys = list(ws.members)
            owner_w = [OWNER_WEIGHTS[ws.members[k]] for k in member_keys]
            conn_refs: list[ObjectRef] = []
            for c in range(shape.connections):
                shared = rng.random() < SHARED_RATIO
                ref = put("connection", f"o{o}-w{w}-c{c}", shared=shared,
                          source_type=rng.choice(SOURCE_TYPES), credential_id=f"cred-{o}-{w}-{c}")
                rel(ref, "parent", ws_ref)
                by = rng.choices(member_keys, owner_w)[0]
                rel(ref, "owner", ObjectRef.parse(by))
                ws.conns.append((ref.key, by, shared))
                conn_refs.append(ref)
            for f in range(shape.flows):
                ref = put("data_flow", f"o{o}-w{w}-f{f}", name=f"Flow {f}")
                rel(ref, "parent", ws_ref)
                by = rng.choices(member_keys, owner_w)[0]
                rel(ref, "owner", ObjectRef.parse(by))
                if conn_refs:
                    rel(ref, "uses", rng.choice(conn_refs))
                ws.flows.append((ref.key, by))
    return ops, orgs


def validate_ops(policy: CompiledPolicy, ops: Iterable[Operation]) -> None:
    """The generated graph must be one the policy accepts (as a data file would be)."""
    for op in ops:
        if isinstance(op, PutObject):
            problems = object_problems(policy, op.ref, op.attributes)
            if problems:
                raise SystemExit(f"generated object {op.ref}: {problems[0]}")
        elif isinstance(op, TouchRelationship):
            problem = relationship_problem(policy, op.relationship)
            if problem:
                raise SystemExit(f"generated relationship {op.relationship}: {problem}")


def snapshot_of(ops: Sequence[Operation]) -> Snapshot:
    objects = tuple(ObjectRecord(op.ref, op.attributes) for op in ops if isinstance(op, PutObject))
    rels = tuple(op.relationship for op in ops if isinstance(op, TouchRelationship))
    return Snapshot(revision=1, objects=objects, relationships=rels)


# -- request mixes -----------------------------------------------------------

DATA_FLOW_ACTIONS = {"view": 40, "edit": 25, "run": 15, "delete": 20}
CONNECTION_ACTIONS = {"use": 60, "edit": 40}
RESOURCE_WEIGHTS = {"data_flow": 65, "connection": 35}
# Who asks, relative to the resource's workspace W and organization O.
SUBJECT_WEIGHTS = {
    "resource_owner": 15,  # the member who created the resource
    "ws_admin": 10,  # admins / users / guests of W (not the resource's owner)
    "ws_user": 25,
    "ws_guest": 12,
    "org_owner": 8,  # the owner of O
    "same_org_other_ws": 12,  # a member of another workspace of O only
    "other_org_member": 10,  # a member of another organization
    "other_org_owner": 6,  # the owner of another organization
    "missing_resource": 2,  # a resource id that is not in the graph
}


def expected_decision(kind: str, action: str, *, org_owner: bool, role: str | None,
                      owns: bool, shared: bool) -> bool:
    """The Coupler role x action table (DESIGN.md §9), written independently of the engine."""
    if org_owner:
        return True
    if kind == "data_flow":
        if role == "admin" or (role == "user" and action != "delete"):
            return True
        return owns and role in ("user", "guest")
    if role in ("admin", "user"):
        return (owns or shared) if action == "use" else (owns and not shared)
    return owns and role == "guest"


def pick(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), list(weights.values()))[0]


def generated_mix(orgs: list[Org], n: int, seed: int) -> tuple[list[Request], list[bool],
                                                                 list[str]]:
    """``n`` requests with their expected decisions and subject categories."""
    rng = random.Random(seed + 1)
    reqs: list[Request] = []
    expected: list[bool] = []
    cats: list[str] = []
    while len(reqs) < n:
        org = rng.choice(orgs)
        ws = rng.choice(org.workspaces)
        kind = pick(rng, RESOURCE_WEIGHTS)
        action = pick(rng, DATA_FLOW_ACTIONS if kind == "data_flow" else CONNECTION_ACTIONS)
        if kind == "data_flow":
            resource, owner = rng.choice(ws.flows)
            shared = False
        else:
            resource, owner, shared = rng.choice(ws.conns)
        cat = pick(rng, SUBJECT_WEIGHTS)
        subject: str | None = None
        if cat == "resource_owner":
            subject = owner
        elif cat.startswith("ws_"):
            role = cat[3:]
            cands = [u for u, r in ws.members.items() if r == role and u != owner]
            subject = rng.choice(cands) if cands else None
        elif cat == "org_owner":
            subject = org.owner
        elif cat == "same_org_other_ws":
            others = [u for w in org.workspaces if w is not ws for u in w.members
                      if u not in ws.members]
            subject = rng.choice(others) if others else None
        elif cat in ("other_org_member", "other_org_owner"):
            other = rng.choice(orgs)
            if other is not org:
                if cat == "other_org_owner":
                    subject = other.owner
                else:
                    cands = [u for u in rng.choice(other.workspaces).members
                             if u not in ws.members]
                    subject = rng.choice(cands) if cands else None
        else:  # missing_resource
            subject = rng.choice(list(ws.members))
            resource = object_key(kind, f"{type_of(resource)}-missing-{len(reqs)}")
        if subject is None:
            continue  # no such person for this workspace: draw again
        if cat == "missing_resource":
            allow = False
        else:
            allow = expected_decision(kind, action, org_owner=subject == org.owner,
                                      role=ws.members.get(subject),
                                      owns=subject == owner, shared=shared)
        reqs.append((subject, action, kind, resource))
        expected.append(allow)
        cats.append(cat)
    return reqs, expected, cats


def sample_mix(policy: CompiledPolicy, index: GraphIndex, n: int, seed: int) -> tuple[
        list[Request], list[str]]:
    """Every user x every object x every action of its type, shuffled and cycled to ``n``."""
    keys = sorted(index.up)
    users = [k for k in keys if type_of(k) in policy.subject_types]
    combos: list[Request] = []
    for resource in keys:
        rtype = type_of(resource)
        if rtype in policy.subject_types:
            continue
        for action in policy.types[rtype].actions:
            combos.extend((u, action, rtype, resource) for u in users)
    rng = random.Random(seed + 2)
    reqs: list[Request] = []
    while len(reqs) < n:
        rng.shuffle(combos)
        reqs.extend(combos[: n - len(reqs)])
    return reqs, [r[2] for r in reqs]


# -- measurements ------------------------------------------------------------


def build_seconds(snapshot: Snapshot, budget: float) -> tuple[float, GraphIndex]:
    """Median wall time of ``GraphIndex.from_snapshot`` (repeated within ``budget``)."""
    times: list[float] = []
    index = GraphIndex()
    while not times or (sum(times) < budget and len(times) < 200):
        del index  # drop the previous build before timing the next
        gc.collect()
        t0 = time.perf_counter()
        index = GraphIndex.from_snapshot(snapshot)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), index


def index_bytes(snapshot: Snapshot) -> tuple[int, int]:
    """(bytes the built index holds, peak bytes during the build), by tracemalloc.

    Counts everything the build allocates and keeps: the dicts and sets of the
    index, its ``type:id`` key strings, and attribute dicts (the attribute
    values themselves are shared with the snapshot and not counted).
    """
    gc.collect()
    tracemalloc.start()
    try:
        index = GraphIndex.from_snapshot(snapshot)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del index
    gc.collect()
    return held, peak


def time_loop(fn: Callable[..., Any], policy: CompiledPolicy, index: GraphIndex,
              reqs: Sequence[Request]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    for s, a, rt, r in reqs:
        fn(policy, index, s, a, rt, r)
    return time.perf_counter() - t0


def _noop(policy: Any, index: Any, s: str, a: str, rt: str, r: str) -> bool:
    return False


@dataclass(slots=True)
class Result:
    graph: str
    objects: int
    relationships: int
    build_ms: float
    index_bytes: int
    build_peak_bytes: int
    requests: int
    runs: list[float]
    allow_ratio: float
    loop_overhead_ns: float
    mismatches: int | None = None
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def as_json(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "objects": self.objects,
            "relationships": self.relationships,
            "build_ms": round(self.build_ms, 3),
            "build_us_per_relationship": round(self.build_ms * 1000 / self.relationships, 3),
            "index_bytes": self.index_bytes,
            "index_bytes_per_relationship": round(self.index_bytes / self.relationships, 1),
            "build_peak_bytes": self.build_peak_bytes,
            "requests": self.requests,
            "checks_per_s_runs": [round(r) for r in self.runs],
            "checks_per_s_median": round(self.median),
            "ns_per_check_median": round(1e9 / self.median, 1),
            "loop_overhead_ns_per_check": round(self.loop_overhead_ns, 1),
            "allow_ratio": round(self.allow_ratio, 4),
            "mismatches_vs_model": self.mismatches,
            "meets_target": self.median >= TARGET,
            **({"breakdown": self.breakdown} if self.breakdown else {}),
        }


def measure(name: str, policy: CompiledPolicy, ops: Sequence[Operation],
            mix: Callable[[GraphIndex], tuple[list[Request], list[bool] | None, list[str]]],
            runs: int, breakdown: bool, progress: Callable[[str], None]) -> Result:
    snapshot = snapshot_of(ops)
    progress(f"{name}: {len(snapshot.objects):,} objects, "
             f"{len(snapshot.relationships):,} relationships; measuring index memory")
    held, peak = index_bytes(snapshot)
    progress(f"{name}: timing the index build")
    build, index = build_seconds(snapshot, budget=1.0)
    progress(f"{name}: building the request mix")
    reqs, expected, cats = mix(index)  # built before any timing; keys interned like the index's
    decisions = [check(policy, index, s, a, rt, r) for s, a, rt, r in reqs]
    mismatches = None
    if expected is not None:
        mismatches = sum(d != e for d, e in zip(decisions, expected, strict=True))
    overhead = statistics.median(time_loop(_noop, policy, index, reqs) for _ in range(3))
    rates: list[float] = []
    for i in range(runs):
        dt = time_loop(check, policy, index, reqs)
        rates.append(len(reqs) / dt)
        progress(f"{name}: run {i + 1}/{runs}: {len(reqs) / dt:,.0f} checks/s")
    result = Result(
        graph=name,
        objects=len(index.up),
        relationships=index.relationship_count,
        build_ms=build * 1000,
        index_bytes=held,
        build_peak_bytes=peak,
        requests=len(reqs),
        runs=rates,
        allow_ratio=sum(decisions) / len(decisions),
        loop_overhead_ns=overhead * 1e9 / len(reqs),
        mismatches=mismatches,
    )
    if breakdown:
        result.breakdown = kind_breakdown(policy, index, reqs, decisions, cats)
    return result


def kind_breakdown(policy: CompiledPolicy, index: GraphIndex, reqs: list[Request],
                   decisions: list[bool], cats: list[str]) -> dict[str, dict[str, float]]:
    """ns/check per (resource type, action, subject category, decision), each timed alone."""
    groups: dict[str, list[Request]] = {}
    for req, allowed, cat in zip(reqs, decisions, cats, strict=True):
        label = f"{req[2]}.{req[1]} {cat} {'allow' if allowed else 'deny'}"
        groups.setdefault(label, []).append(req)
    out: dict[str, dict[str, float]] = {}
    for label, group in sorted(groups.items()):
        reps = max(1, 20_000 // len(group))
        batch = group * reps
        dt = min(time_loop(check, policy, index, batch) for _ in range(3))
        out[label] = {"share": round(len(group) / len(reqs), 4),
                      "ns_per_check": round(dt * 1e9 / len(batch), 1)}
    return out


# -- output ------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / (1 << 20):.2f}"


def print_table(results: list[Result], meta: dict[str, Any]) -> None:
    print(f"gatehouse engine-only Check benchmark — Python {meta['python']}, "
          f"one thread, {meta['runs']} runs (median), policy {meta['policy_version']}")
    head = ("graph", "objects", "relationships", "build ms", "index MiB", "B/rel",
            "requests", "checks/s", "ns/check", "allow %")
    rows = [head]
    for r in results:
        rows.append((r.graph, f"{r.objects:,}", f"{r.relationships:,}", f"{r.build_ms:,.1f}",
                     mib(r.index_bytes), f"{r.index_bytes / r.relationships:,.0f}",
                     f"{r.requests:,}", f"{r.median:,.0f}", f"{1e9 / r.median:,.0f}",
                     f"{100 * r.allow_ratio:.1f}"))
    print_rows(rows)
    print()
    for r in results:
        spread = f"{min(r.runs):,.0f} to {max(r.runs):,.0f}"
        line = (f"{r.graph}: runs {spread} checks/s; loop + call overhead alone "
                f"{r.loop_overhead_ns:.0f} ns/check; build peak {mib(r.build_peak_bytes)} MiB")
        if r.mismatches is not None:
            line += f"; {r.mismatches} decision(s) differ from the Coupler table model"
        print(line)
    worst = min(r.median for r in results)
    verdict = "met" if worst >= TARGET else "NOT met"
    print(f"target ≥ {TARGET:,} checks/s on one core: {verdict} (slowest median {worst:,.0f})")
    for r in results:
        if r.breakdown:
            print(f"\n{r.graph}: ns/check by request kind (each kind timed alone)")
            for label, v in sorted(r.breakdown.items(), key=lambda kv: -kv[1]["ns_per_check"]):
                print(f"  {v['ns_per_check']:7.0f} ns  {100 * v['share']:5.1f}%  {label}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true",
                   help="short run: 20 orgs, 20,000 requests, 3 runs")
    p.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    p.add_argument("--breakdown", action="store_true",
                   help="also time each request kind alone (ns/check per kind)")
    p.add_argument("--requests", type=int, help="requests per run (default 100,000)")
    p.add_argument("--runs", type=int, help="timed runs per graph (default 5)")
    p.add_argument("--orgs", type=int, help="organizations in the generated graph (default 200)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help="random seed (default %(default)s)")
    p.add_argument("--pin", type=int, metavar="CPU", help="pin the process to this CPU")
    p.add_argument("--graph", choices=("sample", "generated", "both"), default="both")
    args = p.parse_args(argv)

    n = args.requests or (20_000 if args.quick else 100_000)
    runs = args.runs or (3 if args.quick else 5)
    shape = Shape(orgs=args.orgs or (20 if args.quick else 200), seed=args.seed)
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})

    def progress(msg: str) -> None:
        if not args.json:
            print(f"… {msg}", file=sys.stderr, flush=True)

    policy = load_policy(POLICY_DIR)
    results: list[Result] = []
    if args.graph in ("sample", "both"):
        ops = load_data_file(SAMPLE_DATA, policy)

        def smix(index: GraphIndex) -> tuple[list[Request], None, list[str]]:
            reqs, cats = sample_mix(policy, index, n, args.seed)
            return reqs, None, cats

        results.append(measure("sample", policy, ops, smix, runs, args.breakdown, progress))
    if args.graph in ("generated", "both"):
        progress(f"generating {shape.orgs} orgs x {shape.workspaces} workspaces x "
                 f"{shape.members} members x {shape.flows} flows (seed {shape.seed})")
        gops, orgs = generate_graph(shape)
        validate_ops(policy, gops)

        def gmix(index: GraphIndex) -> tuple[list[Request], list[bool], list[str]]:
            return generated_mix(orgs, n, shape.seed)

        results.append(measure("generated", policy, gops, gmix, runs, args.breakdown, progress))

    meta = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "runs": runs,
        "requests": n,
        "seed": shape.seed,
        "generated_shape": {"orgs": shape.orgs, "workspaces_per_org": shape.workspaces,
                            "members_per_workspace": shape.members,
                            "flows_per_workspace": shape.flows,
                            "connections_per_workspace": shape.connections},
        "policy_version": policy.version,
        "target_checks_per_s": TARGET,
    }
    if args.json:
        print(json.dumps({**meta, "results": [r.as_json() for r in results]}, indent=2))
    else:
        print_table(results, meta)
    bad = sum(r.mismatches or 0 for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
