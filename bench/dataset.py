#!/usr/bin/env python3
"""Deterministic Coupler dataset and request mix for the gRPC load benchmarks.

The graph (fixed seed): ``orgs`` organizations (200 by default, ``--scale 10``
for 2,000), each with one owner and a pool of 60 people; per organization 5
workspaces, each with 20 members drawn from the pool (roles mixed: about 2
admins, 13 users and 5 guests per workspace; people sit in several
workspaces), and per workspace 50 data flows, each owned by a member of that
workspace.

Two files are written under ``bench/.data/`` (git-ignored):

* ``coupler-<orgs>o-<seed>.data.json`` — a gatehouse data file (``--data``).
  JSON is a subset of YAML, so the server's YAML loader reads it; it is
  written in flow style, which that loader parses faster than block YAML.
* ``coupler-<orgs>o-<seed>.mix.json`` — the request mix, built before any
  timing: ``requests`` (single checks) and ``batches`` (50 checks by one
  subject on flows of one workspace, the shape Cerbos's CheckResources takes:
  one principal, many resources). Each carries what Cerbos needs to decide
  without the graph: the subject's role(s) in the flow's workspace, whether
  the subject owns the flow's organization, the flow's owner and workspace,
  and the decision an independent model of the Coupler table expects.

    .venv/bin/python bench/dataset.py               # default (200 orgs)
    .venv/bin/python bench/dataset.py --scale 10    # 2,000 orgs
    .venv/bin/python bench/dataset.py --orgs 10     # small (smoke runs)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "bench" / ".data"
DEFAULT_SEED = 20240601
FORMAT = 2  # bump when the files' content changes, so stale files are rebuilt

ROLE_WEIGHTS = {"admin": 2, "user": 13, "guest": 5}  # per workspace of 20: ~2 / 13 / 5
OWNER_WEIGHTS = {"admin": 3, "user": 3, "guest": 1}  # who creates flows
ACTION_WEIGHTS = {"view": 40, "edit": 25, "run": 15, "delete": 20}
# Who asks, relative to the flow's workspace W and organization O.
SUBJECT_WEIGHTS = {
    "flow_owner": 15,  # the member who created the flow
    "ws_admin": 10,  # admins / users / guests of W who do not own the flow
    "ws_user": 25,
    "ws_guest": 12,
    "org_owner": 8,  # the owner of O
    "same_org_other_ws": 12,  # a member of another workspace of O only
    "other_org_member": 10,  # a member of another organization
    "other_org_owner": 8,  # the owner of another organization
}
NO_ROLE = "none"  # the role a Cerbos principal gets when it holds none in the workspace
BULK_SIZE = 50


@dataclass(frozen=True, slots=True)
class Shape:
    orgs: int = 200
    workspaces: int = 5
    members: int = 20
    pool: int = 60
    flows: int = 50
    seed: int = DEFAULT_SEED


@dataclass(slots=True)
class Workspace:
    id: str
    org: Org
    members: dict[str, str] = field(default_factory=dict)  # user id -> role
    flows: list[tuple[str, str]] = field(default_factory=list)  # (flow id, owner id)


@dataclass(slots=True)
class Org:
    id: str
    owner: str
    workspaces: list[Workspace] = field(default_factory=list)


def generate_graph(shape: Shape) -> tuple[dict[str, Any], list[Org]]:
    """The data file's content and a model of the tenancy for the request mix."""
    rng = random.Random(shape.seed)
    objects: dict[str, dict[str, Any]] = {}
    rels: list[str] = []
    roles, role_w = list(ROLE_WEIGHTS), list(ROLE_WEIGHTS.values())
    orgs: list[Org] = []
    for o in range(shape.orgs):
        org = Org(f"org-{o}", f"o{o}-owner")
        orgs.append(org)
        objects[f"organization:{org.id}"] = {"name": f"Org {o}", "plan": "pro"}
        objects[f"user:{org.owner}"] = {"email": f"{org.owner}@example.com"}
        rels.append(f"organization:{org.id}#owner@user:{org.owner}")
        pool = [f"o{o}-u{i}" for i in range(shape.pool)]
        for uid in pool:
            objects[f"user:{uid}"] = {"email": f"{uid}@example.com"}
        for w in range(shape.workspaces):
            ws = Workspace(f"o{o}-w{w}", org)
            org.workspaces.append(ws)
            objects[f"workspace:{ws.id}"] = {"name": f"Workspace {w}", "slug": f"w{w}"}
            rels.append(f"workspace:{ws.id}#parent@organization:{org.id}")
            for uid in rng.sample(pool, shape.members):
                role = rng.choices(roles, role_w)[0]
                ws.members[uid] = role
                rels.append(f"workspace:{ws.id}#{role}@user:{uid}")
            member_ids = list(ws.members)
            owner_w = [OWNER_WEIGHTS[ws.members[u]] for u in member_ids]
            for f in range(shape.flows):
                flow = f"{ws.id}-f{f}"
                by = rng.choices(member_ids, owner_w)[0]
                rels.append(f"data_flow:{flow}#parent@workspace:{ws.id}")
                rels.append(f"data_flow:{flow}#owner@user:{by}")
                ws.flows.append((flow, by))
    return {"objects": objects, "relationships": rels}, orgs


def expected_decision(action: str, *, org_owner: bool, roles: list[str], owns: bool) -> bool:
    """The Coupler data_flow table, written independently of the engine and of Cerbos."""
    if org_owner or "admin" in roles:
        return True
    if "user" in roles and action != "delete":
        return True
    return owns and ("user" in roles or "guest" in roles)


def _pick(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), list(weights.values()))[0]


def _subject(rng: random.Random, orgs: list[Org], org: Org, ws: Workspace, cat: str,
             flow_owner: str | None) -> str | None:
    """A subject of category ``cat`` for workspace ``ws``, or None if there is none."""
    if cat == "flow_owner":
        return flow_owner
    if cat.startswith("ws_"):
        role = cat[3:]
        cands = [u for u, r in ws.members.items() if r == role and u != flow_owner]
        return rng.choice(cands) if cands else None
    if cat == "org_owner":
        return org.owner
    if cat == "same_org_other_ws":
        others = sorted({u for w in org.workspaces if w is not ws for u in w.members
                         if u not in ws.members})
        return rng.choice(others) if others else None
    other = rng.choice(orgs)
    if other is org:
        return None
    if cat == "other_org_owner":
        return other.owner
    return rng.choice(list(rng.choice(other.workspaces).members))


def _facts(org: Org, ws: Workspace, subject: str) -> dict[str, Any]:
    role = ws.members.get(subject)
    return {"roles": [role] if role else [], "org_owner": subject == org.owner}


def request_mix(orgs: list[Org], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` single checks on data flows, with the facts Cerbos needs and the expected answer."""
    rng = random.Random(seed + 1)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        org = rng.choice(orgs)
        ws = rng.choice(org.workspaces)
        flow, owner = rng.choice(ws.flows)
        action = _pick(rng, ACTION_WEIGHTS)
        cat = _pick(rng, SUBJECT_WEIGHTS)
        subject = _subject(rng, orgs, org, ws, cat, owner)
        if subject is None:
            continue  # no such person for this workspace: draw again
        facts = _facts(org, ws, subject)
        out.append({
            "subject": subject, "action": action, "flow": flow, "workspace": ws.id,
            "flow_owner": owner, **facts, "category": cat,
            "expected": expected_decision(action, owns=subject == owner, **facts),
        })
    return out


def batch_mix(orgs: list[Org], n: int, seed: int, size: int = BULK_SIZE) -> list[dict[str, Any]]:
    """``n`` batches of ``size`` checks: one subject, flows of one workspace, mixed actions."""
    rng = random.Random(seed + 2)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        org = rng.choice(orgs)
        ws = rng.choice(org.workspaces)
        cat = _pick(rng, SUBJECT_WEIGHTS)
        if cat == "flow_owner":  # someone who owns flows here, asking about them and others
            subject: str | None = rng.choice(sorted({o for _, o in ws.flows}))
        else:
            subject = _subject(rng, orgs, org, ws, cat, None)
        if subject is None:
            continue
        facts = _facts(org, ws, subject)
        flows = rng.sample(ws.flows, min(size, len(ws.flows)))
        while len(flows) < size:
            flows.append(rng.choice(ws.flows))
        items = []
        for flow, owner in flows:
            action = _pick(rng, ACTION_WEIGHTS)
            items.append({"action": action, "flow": flow, "flow_owner": owner,
                          "expected": expected_decision(action, owns=subject == owner,
                                                        **facts)})
        out.append({"subject": subject, "workspace": ws.id, **facts, "category": cat,
                    "items": items})
    return out


def paths(shape: Shape) -> tuple[Path, Path]:
    stem = f"coupler-{shape.orgs}o-{shape.seed}"
    return DATA_DIR / f"{stem}.data.json", DATA_DIR / f"{stem}.mix.json"


def ensure(shape: Shape, requests: int = 20_000, batches: int = 1_000,
           progress: Any = None) -> tuple[Path, Path]:
    """Write the data file and mix for ``shape`` unless up-to-date ones exist; their paths."""
    data_path, mix_path = paths(shape)
    meta = {"format": FORMAT, "shape": asdict(shape), "requests": requests, "batches": batches}
    if data_path.exists() and mix_path.exists():
        with mix_path.open() as f:
            if json.load(f).get("meta") == meta:
                return data_path, mix_path
    t0 = time.perf_counter()
    data, orgs = generate_graph(shape)
    mix = {"meta": meta, "requests": request_mix(orgs, requests, shape.seed),
           "batches": batch_mix(orgs, batches, shape.seed)}
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for path, value in ((data_path, data), (mix_path, mix)):
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(value, f, separators=(",", ":"))
        tmp.replace(path)
    if progress:
        progress(f"dataset: {len(data['objects']):,} objects, "
                 f"{len(data['relationships']):,} relationships, {requests:,} requests, "
                 f"{batches:,} batches of {BULK_SIZE} -> {data_path.relative_to(ROOT)} "
                 f"({time.perf_counter() - t0:.1f} s)")
    return data_path, mix_path


def load_mix(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return json.load(f)  # type: ignore[no-any-return]


def shape_from_args(args: argparse.Namespace) -> Shape:
    orgs = args.orgs if args.orgs else round(200 * args.scale)
    return Shape(orgs=orgs, seed=args.seed)


def add_shape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the number of organizations (default 1 = 200 orgs)")
    p.add_argument("--orgs", type=int, help="number of organizations (overrides --scale)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_shape_args(p)
    p.add_argument("--requests", type=int, default=20_000, help="single checks in the mix")
    p.add_argument("--batches", type=int, default=1_000, help="50-check batches in the mix")
    args = p.parse_args(argv)
    shape = shape_from_args(args)
    data_path, mix_path = ensure(shape, args.requests, args.batches,
                                 progress=lambda m: print(m, file=sys.stderr))
    print(data_path)
    print(mix_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
