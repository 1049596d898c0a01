#!/usr/bin/env python3
"""Soak: minutes of mixed traffic at a share of measured peak against a real server.

Starts a private Redis (AOF, ``appendfsync always``) and one ``gatehouse serve``
as production would run it (API keys on every call, ``--metrics-listen``, the
audit log sampling 1 % of Checks, the policy folder watched), seeds a few dozen
Coupler organizations, then:

1. **calibrates**: the full mix, closed loop, as fast as it goes for
   ``--calibrate`` seconds; the calls/s it reaches is the peak;
2. **soaks**: the same mix paced at ``--load`` (default 0.7) of that peak for
   ``--minutes``, from ``--clients`` client processes (grpc.aio), while the
   main process edits a copy of the policy folder every ``--reload-every``
   seconds — a good edit, then a broken one that must be refused with the old
   policy serving — and records every ``--interval`` seconds: calls/s, errors
   by status and latency p50/p99/max per kind, server RSS, Redis
   ``used_memory``, the index revision and the number of metric series;
3. **checks**: every acknowledged relationship write present (and every
   acknowledged delete absent), usage counters equal to the acknowledged
   events, and a sample of Checks answered the same by the soaked server and
   by a second server started fresh on the same Redis (its index rebuilt
   from Redis).

The mix (per call): Check 72 %, CheckBulk of 20 items 15 %, relationship
writes 6 % (a new flow in, the oldest soak flow out, so the graph stays the
same size), RecordUsage 4 % (one event; one in twenty repeats an earlier
event id and must come back ``duplicate``), ListAccessible 2 %, tenancy 1 %
(per organization, a cycle CreateWorkspace → InviteMember →
AcceptInvitation → SetRole → RemoveMember → DeleteWorkspace). Writes and
tenancy steps are followed now and then by a Check at the write's revision
(read your writes): a wrong answer there is counted, not just an error.

    .venv/bin/python bench/soak.py --minutes 10            # make soak
    .venv/bin/python bench/soak.py --minutes 2 --json out.json

Prints a report (markdown tables) and writes it as JSON with ``--json``. Exits
1 when an unexpected error, a wrong answer, a lost write or memory growth
above ``--max-growth`` MiB/min was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, wait_serving  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

KINDS = ("Check", "CheckBulk", "ListAccessible", "WriteRelationships", "RecordUsage",
         "CreateWorkspace", "InviteMember", "AcceptInvitation", "SetRole", "RemoveMember",
         "DeleteWorkspace", "ReadYourWrite")
MIX = (("Check", 0.72), ("CheckBulk", 0.15), ("WriteRelationships", 0.06),
       ("RecordUsage", 0.04), ("ListAccessible", 0.02), ("Tenancy", 0.01))
TENANCY_STEPS = ("CreateWorkspace", "InviteMember", "AcceptInvitation", "SetRole",
                 "RemoveMember", "DeleteWorkspace")
SERVER_COMMAND = (os.environ.get("GATEHOUSE_SOAK_SERVER", "").split()
                  or [sys.executable, "-m", "gatehouse.cli"])
"""How to start the server; the variable lets an investigation wrap it (e.g. tracemalloc)."""
BULK_ITEMS = 20
MEMBERS = 8          # seeded workspace members per organization
POOL = 3             # people per organization the tenancy cycle invites in turn
SEED_FLOWS = 30      # seeded flows per organization
WINDOW = 40          # soak flows kept per organization (the oldest is deleted)
ACTIONS = ("view", "run", "edit", "delete")
ROLES = ("admin", "user", "user", "guest")
CALL_TIMEOUT = 10.0  # seconds: a call slower than this is a DEADLINE_EXCEEDED error
# Statuses a call of this kind may answer by design (a domain refusal, not a fault).
EXPECTED: dict[str, frozenset[str]] = {
    # Another write touched the tenant after every retry: the caller is told to retry.
    kind: frozenset({"ABORTED"}) for kind in TENANCY_STEPS
}


@dataclass(frozen=True, slots=True)
class SoakConfig:
    minutes: float = 10.0
    load: float = 0.7
    calibrate_s: float = 30.0
    interval_s: float = 15.0
    clients: int = 2
    orgs: int = 30
    reload_every_s: float = 30.0
    concurrency: int = 48       # calls in flight per client process
    compare_sample: int = 3000  # Checks compared with a fresh server at the end
    max_growth_mib_per_min: float = 1.0
    rate: float = 0.0           # calls/s to drive without calibrating (0: calibrate)
    seed: int = 12


# -- the world the clients act on ---------------------------------------------------


def _ref(key: str) -> Any:
    from gatehouse.v1 import authorization_pb2 as apb

    t, _, i = key.partition(":")
    return apb.ObjectReference(type=t, id=i)


@dataclass(slots=True)
class Org:
    id: str
    owner: str
    workspace: str              # the primary workspace id
    members: list[str]          # user keys with a role in the primary workspace
    flow_owners: list[str]      # members with the user or guest role (own their flows)
    pool: list[str]             # people the tenancy cycle invites
    flows: list[str] = field(default_factory=list)


def _email(user: str) -> str:
    return f"{user.partition(':')[2]}@soak.example"


async def seed(address: str, key: str, orgs: int, rnd: random.Random) -> list[Org]:
    """Organizations with an owner, members in the primary workspace and flows."""
    from google.protobuf.struct_pb2 import Struct

    from gatehouse.v1 import graph_pb2 as gpb
    from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
    from gatehouse.v1 import tenancy_pb2 as tpb
    from gatehouse.v1 import tenancy_pb2_grpc as tpb_grpc

    md = (("authorization", f"Bearer {key}"),)
    out: list[Org] = []
    async with grpc.aio.insecure_channel(address) as ch:
        graph = gpb_grpc.GraphServiceStub(ch)
        tenancy = tpb_grpc.TenancyServiceStub(ch)
        for o in range(orgs):
            owner = f"user:o{o}own"
            members = [f"user:o{o}m{i}" for i in range(MEMBERS)]
            pool = [f"user:o{o}p{i}" for i in range(POOL)]
            updates = []
            for user in (owner, *members, *pool):
                attrs = Struct()
                attrs.update({"email": _email(user)})
                updates.append(gpb.ObjectUpdate(operation=gpb.ObjectUpdate.OPERATION_PUT,
                                                object=_ref(user), attributes=attrs))
            await graph.WriteObjects(gpb.WriteObjectsRequest(updates=updates), metadata=md)
            r = await tenancy.CreateOrganization(tpb.CreateOrganizationRequest(
                actor=_ref(owner), organization_id=f"so{o}", name=f"Soak {o}",
                plan="enterprise"), metadata=md)
            ws = f"workspace:{r.workspace_id}"
            roles = [ROLES[i % len(ROLES)] for i in range(MEMBERS)]
            org = Org(r.organization_id, owner, r.workspace_id, members,
                      [m for m, role in zip(members, roles, strict=True) if role != "admin"],
                      pool)
            rels = [(ws, role, m) for m, role in zip(members, roles, strict=True)]
            for f in range(SEED_FLOWS):
                flow = f"data_flow:o{o}f{f}"
                org.flows.append(flow)
                rels += [(flow, "parent", ws), (flow, "owner", rnd.choice(members))]
            await graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[
                gpb.RelationshipUpdate(operation=gpb.RelationshipUpdate.OPERATION_TOUCH,
                                       relationship=gpb.Relationship(
                                           resource=_ref(res), relation=rel,
                                           subject=_ref(sub)))
                for res, rel, sub in rels]), metadata=md)
            out.append(org)
    return out


def check_requests(orgs: Sequence[Org], n: int, rnd: random.Random,
                   extra_flows: Sequence[str] = ()) -> list[tuple[str, str, str]]:
    """(subject, action, resource): mostly within the subject's organization, some across."""
    out = []
    for _ in range(n):
        org = rnd.choice(orgs)
        subject = rnd.choice([org.owner, *org.members])
        target = org if rnd.random() < 0.85 else rnd.choice(orgs)
        flows = target.flows if not extra_flows or rnd.random() < 0.8 else extra_flows
        out.append((subject, rnd.choice(ACTIONS), rnd.choice(flows)))
    return out


# -- statistics ------------------------------------------------------------------------


@dataclass(slots=True)
class KindStats:
    """One kind's calls in one interval."""

    calls: int = 0
    latency_us: array = field(default_factory=lambda: array("I"))  # type: ignore[type-arg]
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)

    def merge(self, other: dict[str, Any]) -> None:
        self.calls += other["calls"]
        self.latency_us.frombytes(other["latency_us"])
        self.errors.update(other["errors"])
        self.first_errors.extend(other["first_errors"][:3 - len(self.first_errors)])

    def dump(self) -> dict[str, Any]:
        return {"calls": self.calls, "latency_us": self.latency_us.tobytes(),
                "errors": dict(self.errors), "first_errors": self.first_errors}


def pct(sorted_us: Sequence[int], p: float) -> float:
    """The p-th percentile in milliseconds (nearest rank)."""
    if not sorted_us:
        return float("nan")
    k = min(len(sorted_us) - 1, max(0, math.ceil(p / 100 * len(sorted_us)) - 1))
    return sorted_us[k] / 1000


# -- the client processes --------------------------------------------------------------


@dataclass(slots=True)
class Ledger:
    """What the server acknowledged to this client, to check at the end."""

    present: dict[str, tuple[str, str]] = field(default_factory=dict)  # flow -> (ws, owner)
    deleted: list[str] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)       # flows of failed writes
    usage: dict[str, list[float]] = field(default_factory=dict)  # org -> [count, credits]
    usage_uncertain: set[str] = field(default_factory=set)
    deleted_workspaces: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)       # wrong answers seen during the run


class Client:
    """One process's share of the load (its own organizations for writes and tenancy)."""

    def __init__(self, index: int, address: str, key: str, orgs: list[Org], own: list[Org],
                 seed_: int, phase: str) -> None:
        from gatehouse.v1 import authorization_pb2 as apb
        from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
        from gatehouse.v1 import graph_pb2 as gpb
        from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
        from gatehouse.v1 import tenancy_pb2 as tpb
        from gatehouse.v1 import tenancy_pb2_grpc as tpb_grpc
        from gatehouse.v1 import usage_pb2 as upb
        from gatehouse.v1 import usage_pb2_grpc as upb_grpc

        self.apb, self.gpb, self.tpb, self.upb = apb, gpb, tpb, upb
        self.index = index
        self.tag = f"{phase}{index}"   # ids are unique per phase and client
        self.rnd = random.Random(seed_ * 1000 + index)
        self.md = (("authorization", f"Bearer {key}"),)
        self.orgs, self.own = orgs, own
        self.channel = grpc.aio.insecure_channel(address)
        self.authz = apb_grpc.AuthorizationServiceStub(self.channel)
        self.graph = gpb_grpc.GraphServiceStub(self.channel)
        self.tenancy = tpb_grpc.TenancyServiceStub(self.channel)
        self.usage = upb_grpc.UsageServiceStub(self.channel)
        self.ledger = Ledger()
        self.stats: dict[str, KindStats] = {}
        self.flow_seq = 0
        self.event_seq = 0
        self.events: list[tuple[str, str]] = []   # (org, event id) acknowledged as new
        self.windows: dict[str, list[str]] = {o.id: [] for o in own}
        self.cycle: dict[str, int] = {o.id: 0 for o in own}
        self.cycle_state: dict[str, dict[str, str]] = {o.id: {} for o in own}
        self.busy: set[str] = set()
        self.checks = [self._check(*c) for c in check_requests(orgs, 4000, self.rnd)]
        self.bulks = [self._bulk(orgs) for _ in range(400)]
        self.kinds = [k for k, _ in MIX]
        self.weights = [w for _, w in MIX]

    def _check(self, subject: str, action: str, resource: str,
               at: str | None = None) -> Any:
        apb = self.apb
        consistency = apb.Consistency(at_least_as_fresh=at) if at else None
        return apb.CheckRequest(subject=_ref(subject), action=action, resource=_ref(resource),
                                consistency=consistency)

    def _bulk(self, orgs: Sequence[Org]) -> Any:
        org = self.rnd.choice(orgs)
        subject = self.rnd.choice([org.owner, *org.members])
        return self.apb.CheckBulkRequest(items=[
            self._check(subject, self.rnd.choice(ACTIONS), self.rnd.choice(org.flows))
            for _ in range(BULK_ITEMS)])

    # each call: returns the kind it was recorded under

    async def timed(self, kind: str, call: Callable[[], Awaitable[Any]]) -> Any:
        t0 = time.perf_counter_ns()
        try:
            result = await call()
        except grpc.aio.AioRpcError as exc:
            # Looked up after the call: an interval may have ended while it ran.
            stats = self.stats.setdefault(kind, KindStats())
            stats.calls += 1
            code = exc.code().name
            stats.errors[code] += 1
            if len(stats.first_errors) < 3:
                stats.first_errors.append(f"{code}: {(exc.details() or '')[:160]}")
            raise
        stats = self.stats.setdefault(kind, KindStats())
        stats.calls += 1
        stats.latency_us.append(min((time.perf_counter_ns() - t0) // 1000, 2**32 - 1))
        return result

    async def one(self) -> None:
        kind = self.rnd.choices(self.kinds, self.weights)[0]
        with contextlib.suppress(grpc.aio.AioRpcError):
            if kind == "Check":
                req = self.rnd.choice(self.checks)
                await self.timed(kind, lambda: self.authz.Check(
                    req, metadata=self.md, timeout=CALL_TIMEOUT))
            elif kind == "CheckBulk":
                req = self.rnd.choice(self.bulks)
                await self.timed(kind, lambda: self.authz.CheckBulk(
                    req, metadata=self.md, timeout=CALL_TIMEOUT))
            elif kind == "ListAccessible":
                await self.list_accessible()
            elif kind == "WriteRelationships":
                await self.write()
            elif kind == "RecordUsage":
                await self.record_usage()
            else:
                await self.tenancy_step()

    async def list_accessible(self) -> None:
        org = self.rnd.choice(self.orgs)
        req = self.apb.ListAccessibleRequest(
            subject=_ref(self.rnd.choice(org.members)), resource_type="data_flow",
            action="view", within=_ref(f"organization:{org.id}"))

        async def call() -> int:
            n = 0
            async for resp in self.authz.ListAccessible(req, metadata=self.md,
                                                        timeout=CALL_TIMEOUT):
                n += len(resp.resource_ids)
            return n

        await self.timed("ListAccessible", call)

    async def read_your_write(self, subject: str, action: str, resource: str, revision: str,
                              expect: bool, what: str) -> None:
        req = self._check(subject, action, resource, at=revision)
        resp = await self.timed("ReadYourWrite", lambda: self.authz.Check(
            req, metadata=self.md, timeout=CALL_TIMEOUT))
        if (resp.decision == self.apb.DECISION_ALLOW) != expect:
            self.ledger.wrong.append(f"{what}: Check({subject}, {action}, {resource}) at "
                                     f"{revision} answered {resp.decision}, expected "
                                     f"{'allow' if expect else 'deny'}")

    async def write(self) -> None:
        gpb = self.gpb
        org = self.rnd.choice(self.own)
        self.flow_seq += 1
        flow = f"data_flow:{self.tag}x{self.flow_seq}"
        owner = self.rnd.choice(org.flow_owners)
        ws = f"workspace:{org.workspace}"
        touch, delete = (gpb.RelationshipUpdate.OPERATION_TOUCH,
                         gpb.RelationshipUpdate.OPERATION_DELETE)
        updates = [(touch, flow, "parent", ws), (touch, flow, "owner", owner)]
        window = self.windows[org.id]
        old = window.pop(0) if len(window) >= WINDOW else None
        if old is not None:
            old_ws, old_owner = self.ledger.present.pop(old)
            updates += [(delete, old, "parent", old_ws), (delete, old, "owner", old_owner)]
        req = gpb.WriteRelationshipsRequest(updates=[
            gpb.RelationshipUpdate(operation=op, relationship=gpb.Relationship(
                resource=_ref(res), relation=rel, subject=_ref(sub)))
            for op, res, rel, sub in updates])
        try:
            resp = await self.timed("WriteRelationships", lambda: self.graph.WriteRelationships(
                req, metadata=self.md, timeout=CALL_TIMEOUT))
        except grpc.aio.AioRpcError:
            self.ledger.unknown.add(flow)
            if old is not None:
                self.ledger.unknown.add(old)
            raise
        self.ledger.present[flow] = (ws, owner)
        window.append(flow)
        if old is not None:
            self.ledger.deleted.append(old)
        if self.flow_seq % 4 == 0:
            await self.read_your_write(owner, "delete", flow, resp.revision, True, "new flow")
        elif old is not None and self.flow_seq % 4 == 1:
            await self.read_your_write(old_owner, "view", old, resp.revision, False,
                                       "deleted flow")

    async def record_usage(self) -> None:
        upb = self.upb
        repeat = bool(self.events) and self.rnd.random() < 0.05
        if repeat:
            org_id, event_id = self.rnd.choice(self.events)
            org = next(o for o in self.own if o.id == org_id)
        else:
            org = self.rnd.choice(self.own)
            self.event_seq += 1
            event_id = f"{self.tag}e{self.event_seq}"
        # Even event numbers count an insight generation, odd ones spend 2 credits; a
        # repeat sends the same event again, so the same metric.
        metric = ("ai_insights_generations" if int(event_id.rpartition("e")[2]) % 2 == 0
                  else "llm_credits")
        req = upb.RecordUsageRequest(organization_id=org.id, events=[upb.UsageEvent(
            event_id=event_id, workspace_id=org.workspace, metric=metric,
            amount=0.0 if metric == "ai_insights_generations" else 2.0)])
        try:
            resp = await self.timed("RecordUsage", lambda: self.usage.RecordUsage(
                req, metadata=self.md, timeout=CALL_TIMEOUT))
        except grpc.aio.AioRpcError:
            self.ledger.usage_uncertain.add(org.id)
            raise
        duplicate = resp.results[0].duplicate
        if duplicate != repeat:
            self.ledger.wrong.append(f"RecordUsage {event_id}: duplicate={duplicate}, "
                                     f"expected {repeat}")
        if not repeat:
            self.events.append((org.id, event_id))
            totals = self.ledger.usage.setdefault(org.id, [0.0, 0.0])
            if metric == "ai_insights_generations":
                totals[0] += 1
            else:
                totals[1] += 2.0

    async def tenancy_step(self) -> None:
        free = [o for o in self.own if o.id not in self.busy]
        if not free:
            req = self.rnd.choice(self.checks)
            await self.timed("Check", lambda: self.authz.Check(
                req, metadata=self.md, timeout=CALL_TIMEOUT))
            return
        org = self.rnd.choice(free)
        self.busy.add(org.id)
        try:
            await self._tenancy(org)
        except grpc.aio.AioRpcError:
            # The step's outcome is unknown (a deadline may have passed after it
            # committed): leave this workspace as it is and start the next cycle.
            self.cycle[org.id] += -self.cycle[org.id] % len(TENANCY_STEPS) or len(
                TENANCY_STEPS)
            raise
        finally:
            self.busy.discard(org.id)

    async def _tenancy(self, org: Org) -> None:
        tpb = self.tpb
        step = TENANCY_STEPS[self.cycle[org.id] % len(TENANCY_STEPS)]
        st = self.cycle_state[org.id]
        owner = _ref(org.owner)
        opts: dict[str, Any] = {"metadata": self.md, "timeout": CALL_TIMEOUT}
        if step == "CreateWorkspace":
            n = self.cycle[org.id] // len(TENANCY_STEPS)
            name = f"Soak team {self.tag}-{n}"
            r = await self.timed(step, lambda: self.tenancy.CreateWorkspace(
                tpb.CreateWorkspaceRequest(actor=owner, organization_id=org.id, name=name),
                **opts))
            st.clear()
            st.update(ws=r.workspace_id, name=name,
                      person=org.pool[n % len(org.pool)])
        elif step == "InviteMember":
            r = await self.timed(step, lambda: self.tenancy.InviteMember(tpb.InviteMemberRequest(
                actor=owner, scope=_ref(f"workspace:{st['ws']}"), email=_email(st["person"]),
                role="user"), **opts))
            st["token"] = r.token
        elif step == "AcceptInvitation":
            r = await self.timed(step, lambda: self.tenancy.AcceptInvitation(
                tpb.AcceptInvitationRequest(token=st["token"], subject=_ref(st["person"])),
                **opts))
            await self.read_your_write(st["person"], "view", f"workspace:{st['ws']}",
                                       r.revision, True, "accepted invitation")
        elif step == "SetRole":
            r = await self.timed(step, lambda: self.tenancy.SetRole(tpb.SetRoleRequest(
                actor=owner, scope=_ref(f"workspace:{st['ws']}"), subject=_ref(st["person"]),
                role="admin"), **opts))
            await self.read_your_write(st["person"], "manage_members", f"workspace:{st['ws']}",
                                       r.revision, True, "role set to admin")
        elif step == "RemoveMember":
            r = await self.timed(step, lambda: self.tenancy.RemoveMember(tpb.RemoveMemberRequest(
                actor=owner, scope=_ref(f"workspace:{st['ws']}"), member=_ref(st["person"]),
                reassign_to=owner), **opts))
            await self.read_your_write(st["person"], "view", f"workspace:{st['ws']}",
                                       r.revision, False, "removed member")
        else:
            await self.timed(step, lambda: self.tenancy.DeleteWorkspace(
                tpb.DeleteWorkspaceRequest(actor=owner, workspace_id=st["ws"],
                                           confirm_name=st["name"]), **opts))
            self.ledger.deleted_workspaces.append(st["ws"])
        self.cycle[org.id] += 1

    def take_stats(self) -> dict[str, Any]:
        out = {k: s.dump() for k, s in self.stats.items()}
        self.stats = {}
        return out


async def _client_main(spec: dict[str, Any], queue: Any, go: Any) -> None:
    orgs = [Org(**o) for o in spec["orgs"]]
    own = [o for i, o in enumerate(orgs) if i % spec["clients"] == spec["index"]]
    client = Client(spec["index"], spec["address"], spec["key"], orgs, own, spec["seed"],
                    spec["phase"])
    rate: float | None = spec["rate"]
    interval = spec["interval"]
    await asyncio.wait_for(client.channel.channel_ready(), 30)
    queue.put(("ready", spec["index"]))
    # Every client starts at the same moment, so their intervals line up.
    start, end = await asyncio.get_running_loop().run_in_executor(None, go.get)
    await asyncio.sleep(max(0.0, start - time.time()))
    next_slot = start
    missed_slots = 0
    cpu0 = time.process_time()

    async def worker() -> None:
        nonlocal next_slot, missed_slots
        while True:
            now = time.time()
            if now >= end:
                return
            if rate is not None:
                slot = next_slot
                next_slot += 1 / rate
                if slot > now:
                    await asyncio.sleep(slot - now)
                elif now - slot > 1.0:
                    # More than a second behind: drop the missed slots rather than
                    # burst to catch up (they are counted, not sent).
                    missed = int((now - slot) * rate)
                    missed_slots += missed
                    next_slot = max(next_slot, now)
                if slot >= end:
                    return
            await client.one()

    async def reporter() -> None:
        k = 0
        while True:
            k += 1
            boundary = start + k * interval
            await asyncio.sleep(max(0.0, boundary - time.time()))
            if boundary > end + 1e-6:
                return
            queue.put(("interval", spec["index"], k - 1, client.take_stats()))

    async with client.channel:
        rep = asyncio.create_task(reporter())
        await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
        await rep
    ledger = client.ledger
    queue.put(("done", spec["index"], {
        "rest": client.take_stats(), "missed_slots": missed_slots,
        "client_cpu_s": time.process_time() - cpu0,
        "present": ledger.present, "deleted": ledger.deleted,
        "unknown": sorted(ledger.unknown), "usage": ledger.usage,
        "usage_uncertain": sorted(ledger.usage_uncertain),
        "deleted_workspaces": ledger.deleted_workspaces, "wrong": ledger.wrong,
        "soak_flows": list(ledger.present)}))


def _client_entry(spec: dict[str, Any], queue: Any, go: Any) -> None:
    try:
        asyncio.run(_client_main(spec, queue, go))
    except BaseException as exc:  # the parent reports it; a silent child would hang it
        queue.put(("failed", spec["index"], f"{type(exc).__name__}: {exc}"))
        raise


# -- the server side -------------------------------------------------------------------


@dataclass(slots=True)
class Rig:
    """Redis, the server, its keys and policy copy, all under one temporary folder."""

    dir: Path
    redis: RedisServer
    policy: Path
    keys_file: Path
    app_key: str
    ops_key: str
    prefix: str = "soak"
    procs: list[tuple[subprocess.Popen[bytes], str, str]] = field(default_factory=list)

    def serve(self, name: str, audit: bool = True) -> tuple[subprocess.Popen[bytes], str, str]:
        """Start one `gatehouse serve`; (process, gRPC address, metrics address)."""
        address = f"127.0.0.1:{free_port()}"
        metrics = f"127.0.0.1:{free_port()}"
        log = self.dir / f"{name}.log"
        args = [*SERVER_COMMAND, "serve", "--listen", address,
                "--policy", str(self.policy), "--redis-url", self.redis.url,
                "--redis-prefix", self.prefix, "--api-keys", str(self.keys_file),
                "--metrics-listen", metrics, "--log-level", "warning"]
        if audit:
            args += ["--audit-log", str(self.dir / f"{name}.audit.jsonl"),
                     "--audit-sample-checks", "0.01"]
        proc = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                cwd=self.dir)
        self.procs.append((proc, address, metrics))
        _wait_health(address, proc, log)
        return proc, address, metrics

    def close(self) -> None:
        for proc, _, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.redis.stop()


def _wait_health(address: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    wait_serving(address, proc, log, timeout=90)  # type: ignore[arg-type]


def _new_key(name: str, scopes: str) -> tuple[str, str]:
    """(key, its keys-file entry) from `gatehouse keys new`."""
    out = subprocess.run([sys.executable, "-m", "gatehouse.cli", "keys", "new", name,
                          "--scopes", scopes], check=True, capture_output=True,
                         text=True).stdout
    first, _, rest = out.partition("\n")
    entry = "\n".join(line for line in rest.splitlines() if not line.startswith("#"))
    return first.strip(), entry


def make_rig(directory: Path) -> Rig:
    redis = RedisServer(directory / "redis").start()
    policy = directory / "policy"
    shutil.copytree(ROOT / "policies/coupler", policy)
    app_key, app_entry = _new_key("soak-app", "check,read,write")
    ops_key, ops_entry = _new_key("soak-ops", "admin,read")
    keys_file = directory / "keys.yaml"
    keys_file.write_text(f"keys:\n{app_entry}\n{ops_entry}\n")
    return Rig(directory, redis, policy, keys_file, app_key, ops_key)


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` and its direct children (``--workers``), MiB."""
    total = 0
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    pids.append(int(entry))
    for p in pids:
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def metric_series(metrics_address: str) -> int:
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


class Admin:
    """The ops key's view of one server: policy status and forced reloads."""

    def __init__(self, address: str, key: str) -> None:
        from gatehouse.v1 import admin_pb2, admin_pb2_grpc

        self.pb = admin_pb2
        self.channel = grpc.insecure_channel(address)
        self.stub = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.md = (("authorization", f"Bearer {key}"),)

    def status(self) -> Any:
        return self.stub.GetPolicyStatus(self.pb.GetPolicyStatusRequest(), metadata=self.md,
                                         timeout=30)

    def revision(self) -> str:
        """The index revision, or the status code when the server did not answer."""
        try:
            return str(self.status().index_revision)
        except grpc.RpcError as exc:
            return f"error {exc.code().name}"  # type: ignore[attr-defined]


GOOD_MARK = "description: Organization owner plus workspace admin / user / guest roles."
BROKEN_LINE = "      roles: [organization.owner, workspace.admin]"


class PolicyEditor:
    """Edits the served policy copy: a good edit (a new description), then a broken one
    (a permission naming an undeclared role), in turn."""

    def __init__(self, policy_dir: Path, admin: Admin) -> None:
        self.file = policy_dir / "policy.yaml"
        self.original = self.file.read_text()
        if GOOD_MARK not in self.original or BROKEN_LINE not in self.original:
            raise RuntimeError("the coupler policy changed: update bench/soak.py's edits")
        self.admin = admin
        self.n = 0
        self.results: list[dict[str, Any]] = []

    def _write(self, text: str) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.file)   # an editor's atomic save

    def edit(self, t: float) -> dict[str, Any]:
        self.n += 1
        before = self.admin.status()
        good = self.n % 2 == 1
        if good:
            text = self.original.replace(GOOD_MARK, f"{GOOD_MARK[:-1]} (soak edit {self.n}).")
        else:
            text = self.original.replace(
                BROKEN_LINE, "      roles: [organization.owner, workspace.nonesuch]", 1)
        self._write(text)
        deadline = time.monotonic() + 20
        status = before
        while time.monotonic() < deadline:
            status = self.admin.status()
            if good and status.policy_version != before.policy_version:
                break
            if not good and status.reload_failures > before.reload_failures:
                break
            time.sleep(0.2)  # poll interval of a bounded wait
        if good:
            ok = status.policy_version != before.policy_version and not status.last_reload_error
        else:
            ok = (status.reload_failures == before.reload_failures + 1
                  and status.policy_version == before.policy_version
                  and "nonesuch" in status.last_reload_error)
        result = {"t_s": round(t, 1), "edit": "good" if good else "broken", "ok": ok,
                  "version": status.policy_version[:12], "failures": status.reload_failures}
        self.results.append(result)
        return result

    def restore(self) -> None:
        """Back to a good policy (the last edit may have been the broken one)."""
        before = self.admin.status()
        if not before.last_reload_error:
            return
        self._write(self.original.replace(GOOD_MARK, f"{GOOD_MARK[:-1]} (soak end)."))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.admin.status().last_reload_error:
            time.sleep(0.2)  # poll interval of a bounded wait


# -- the run ---------------------------------------------------------------------------


def _org_dicts(orgs: Sequence[Org]) -> list[dict[str, Any]]:
    return [asdict(o) for o in orgs]


def run_clients(ctx: Any, rig: Rig, address: str, orgs: Sequence[Org], cfg: SoakConfig,
                rate: float | None, seconds: float,
                on_interval: Callable[[int, dict[str, KindStats], float], None] | None = None,
                tick: Callable[[float], None] | None = None
                ) -> tuple[dict[int, dict[str, KindStats]], list[dict[str, Any]]]:
    """Run the client processes for ``seconds``; per-interval stats and their final reports."""
    queue = ctx.Queue()
    interval = cfg.interval_s if on_interval else seconds
    procs = []
    for i in range(cfg.clients):
        spec = {"index": i, "clients": cfg.clients, "address": address, "key": rig.app_key,
                "orgs": _org_dicts(orgs), "seed": cfg.seed, "concurrency": cfg.concurrency,
                "rate": None if rate is None else rate / cfg.clients,
                "interval": interval, "phase": "s" if on_interval else "c"}
        go = ctx.Queue()
        p = ctx.Process(target=_client_entry, args=(spec, queue, go), daemon=True)
        p.start()
        procs.append((p, go))
    ready = 0
    while ready < cfg.clients:
        what, index, *rest = queue.get(timeout=120)
        if what == "failed":
            raise RuntimeError(f"client {index} failed: {rest[0]}")
        ready += what == "ready"
    start = time.time() + 0.2
    end = start + seconds
    for _, go in procs:
        go.put((start, end))
    intervals: dict[int, dict[str, KindStats]] = {}
    seen: Counter[int] = Counter()
    finals: list[dict[str, Any]] = []
    next_tick = start
    try:
        while len(finals) < cfg.clients:
            try:
                msg = queue.get(timeout=0.5)
            except Exception:  # queue.Empty
                msg = None
                if any(p.exitcode not in (None, 0) for p, _ in procs) and \
                        time.time() > end + 60:
                    raise RuntimeError("a client process died") from None
            now = time.time()
            if tick is not None and now >= next_tick and now < end:
                tick(now - start)
                next_tick = now + 1.0
            if msg is None:
                continue
            what, _index, *rest = msg
            if what == "failed":
                raise RuntimeError(f"client {_index} failed: {rest[0]}")
            if what == "interval":
                k, stats = rest
                bucket = intervals.setdefault(k, {})
                for kind, d in stats.items():
                    bucket.setdefault(kind, KindStats()).merge(d)
                seen[k] += 1
                if seen[k] == cfg.clients and on_interval is not None:
                    on_interval(k, bucket, interval)
            else:
                finals.append(rest[0])
    finally:
        for p, _ in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    return intervals, finals


def classify(kind: str, code: str) -> str:
    if code in EXPECTED.get(kind, frozenset()):
        return "expected"
    if code in ("DEADLINE_EXCEEDED", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED"):
        return "overload or transport"
    return "unexpected"


def slope_per_min(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) in value per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return 0.0
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx * 60


def final_checks(rig: Rig, address_a: str, orgs: Sequence[Org],
                 finals: Sequence[dict[str, Any]], cfg: SoakConfig) -> dict[str, Any]:
    """Acknowledged writes present, usage as acknowledged, decisions equal to a fresh index's."""
    from gatehouse.v1 import authorization_pb2 as apb
    from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
    from gatehouse.v1 import graph_pb2 as gpb
    from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
    from gatehouse.v1 import usage_pb2 as upb
    from gatehouse.v1 import usage_pb2_grpc as upb_grpc

    _proc_b, address_b, _ = rig.serve("fresh", audit=False)
    md = (("authorization", f"Bearer {rig.app_key}"),)
    fresh = apb.Consistency(fully_consistent=True)
    problems: list[str] = []
    with grpc.insecure_channel(address_a) as ch_a, grpc.insecure_channel(address_b) as ch_b:
        graph_b = gpb_grpc.GraphServiceStub(ch_b)

        def relations(resource: str) -> set[tuple[str, str]]:
            f = gpb.RelationshipFilter(resource_type=resource.partition(":")[0],
                                       resource_id=resource.partition(":")[2])
            out = set()
            for resp in graph_b.ReadRelationships(gpb.ReadRelationshipsRequest(
                    filter=f, consistency=fresh), metadata=md, timeout=30):
                if resp.HasField("relationship"):
                    r = resp.relationship
                    out.add((r.relation, f"{r.subject.type}:{r.subject.id}"))
            return out

        present = deleted = 0
        rnd = random.Random(cfg.seed)
        for fin in finals:
            for flow, (ws, owner) in fin["present"].items():
                present += 1
                got = relations(flow)
                if got != {("parent", ws), ("owner", owner)}:
                    problems.append(f"acknowledged write of {flow} reads back as {sorted(got)}")
            gone = fin["deleted"]
            for flow in rnd.sample(gone, min(len(gone), 1000)):
                if flow in fin["unknown"]:
                    continue
                deleted += 1
                if relations(flow):
                    problems.append(f"acknowledged delete of {flow} still present")
            for ws in fin["deleted_workspaces"][-50:]:
                if relations(f"workspace:{ws}"):
                    problems.append(f"deleted workspace {ws} still has relationships")
        usage_b = upb_grpc.UsageServiceStub(ch_b)
        usage_checked = 0
        acked: dict[str, list[float]] = {}
        uncertain: set[str] = set()
        for fin in finals:
            uncertain.update(fin["usage_uncertain"])
            for org_id, (count, credits) in fin["usage"].items():
                total = acked.setdefault(org_id, [0.0, 0.0])
                total[0] += count
                total[1] += credits
        for org_id, (count, credits) in sorted(acked.items()):
            if org_id not in uncertain:
                usage_checked += 1
                r = usage_b.ComputeUsage(upb.ComputeUsageRequest(
                    organization_id=org_id, consistency=fresh,
                    metrics=["ai_insights_generations", "llm_credits"]), metadata=md,
                    timeout=30)
                got = {m.name: m.value for m in r.metrics}
                if got.get("ai_insights_generations") != count or \
                        got.get("llm_credits") != credits:
                    problems.append(f"usage of {org_id}: {got}, acknowledged "
                                    f"{count:g} events and {credits:g} credits")
        soak_flows = [f for fin in finals for f in fin["soak_flows"]]
        sample = check_requests(orgs, cfg.compare_sample, random.Random(cfg.seed + 1),
                                soak_flows)
        a, b = apb_grpc.AuthorizationServiceStub(ch_a), apb_grpc.AuthorizationServiceStub(ch_b)
        differ = allowed = 0
        rev_a = rev_b = ""
        for subject, action, resource in sample:
            req = apb.CheckRequest(subject=_ref(subject), action=action,
                                   resource=_ref(resource), consistency=fresh)
            ra = a.Check(req, metadata=md, timeout=30)
            rb = b.Check(req, metadata=md, timeout=30)
            rev_a, rev_b = ra.revision, rb.revision
            allowed += ra.decision == apb.DECISION_ALLOW
            if ra.decision != rb.decision:
                differ += 1
                if differ <= 5:
                    problems.append(f"Check({subject}, {action}, {resource}): soaked server "
                                    f"{ra.decision}, fresh server {rb.decision}")
    return {"writes_present_checked": present, "deletes_checked": deleted,
            "usage_orgs_checked": usage_checked, "checks_compared": len(sample),
            "checks_allowed": allowed, "checks_differing": differ,
            "revision_soaked": rev_a, "revision_fresh": rev_b, "problems": problems}


def run_soak(cfg: SoakConfig, workdir: Path, log: Callable[[str], None] = print
             ) -> dict[str, Any]:
    """The whole soak; returns the report (see ``render``)."""
    ctx = mp.get_context("spawn")
    rig = make_rig(workdir)
    try:
        proc, address, metrics = rig.serve("server")
        admin = Admin(address, rig.ops_key)
        log(f"server pid {proc.pid} on {address}; Redis on {rig.redis.port} (AOF always)")
        orgs = asyncio.run(seed(address, rig.app_key, cfg.orgs, random.Random(cfg.seed)))
        log(f"seeded {len(orgs)} organizations; calibrating for {cfg.calibrate_s:g} s")
        if cfg.rate:
            peak, rate, cal_finals = float("nan"), cfg.rate, []
        else:
            cal, cal_finals = run_clients(ctx, rig, address, orgs, cfg, None, cfg.calibrate_s)
            cal_calls = sum(s.calls for b in cal.values() for s in b.values())
            peak = cal_calls / cfg.calibrate_s
            rate = peak * cfg.load
        log(f"peak {peak:,.0f} calls/s with the mix; soaking at {rate:,.0f} calls/s "
            f"for {cfg.minutes:g} min")

        editor = PolicyEditor(rig.policy, admin)
        rows: list[dict[str, Any]] = []
        next_reload = cfg.reload_every_s
        redis_client = rig.redis.client()

        def tick(t: float) -> None:
            nonlocal next_reload
            if t >= next_reload:
                try:
                    r = editor.edit(t)
                except grpc.RpcError as exc:  # the report shows it; the load goes on
                    r = {"t_s": round(t, 1), "edit": "status call failed", "ok": False,
                         "error": exc.code().name}  # type: ignore[attr-defined]
                    editor.results.append(r)
                log(f"  reload at {t:.0f} s: {r['edit']} edit -> "
                    f"{'as expected' if r['ok'] else 'NOT AS EXPECTED'}")
                next_reload += cfg.reload_every_s

        def on_interval(k: int, bucket: dict[str, KindStats], interval: float) -> None:
            row: dict[str, Any] = {"t_s": round((k + 1) * interval, 1), "kinds": {}}
            for kind, s in sorted(bucket.items()):
                lat = sorted(s.latency_us)
                row["kinds"][kind] = {
                    "calls_per_s": s.calls / interval, "errors": dict(s.errors),
                    "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                    "max_ms": (lat[-1] / 1000) if lat else float("nan"),
                    "first_errors": s.first_errors}
            row["calls_per_s"] = sum(s.calls for s in bucket.values()) / interval
            row["rss_mib"] = rss_mib(proc.pid)
            row["redis_used_mib"] = int(redis_client.info("memory")["used_memory"]) / 2**20
            row["index_revision"] = admin.revision()
            row["metric_series"] = metric_series(metrics)
            with open("/proc/loadavg") as f:
                row["load1"] = float(f.read().split()[0])
            rows.append(row)
            chk = row["kinds"].get("Check", {})
            log(f"  t={row['t_s']:>6.0f}s {row['calls_per_s']:>7,.0f} calls/s  Check p50 "
                f"{chk.get('p50_ms', float('nan')):.2f} ms p99 "
                f"{chk.get('p99_ms', float('nan')):.2f} ms  RSS {row['rss_mib']:.1f} MiB  "
                f"Redis {row['redis_used_mib']:.1f} MiB  rev {row['index_revision']}")

        rss0 = rss_mib(proc.pid)
        cpu0 = _proc_cpu(proc.pid)
        wall0 = time.time()
        _, finals = run_clients(ctx, rig, address, orgs, cfg, rate, cfg.minutes * 60,
                                on_interval, tick)
        server_cpu = _proc_cpu(proc.pid) - cpu0
        wall = time.time() - wall0
        redis_client.close()
        editor.restore()
        log("load over; checking acknowledged writes and decisions against a fresh server")
        # The calibration's acknowledged writes count as much as the soak's.
        correctness = final_checks(rig, address, orgs, [*cal_finals, *finals], cfg)
        report = summarize(cfg, peak, rate, rows, finals, editor.results, correctness,
                           rss0, server_cpu / wall, cal_finals)
        report["audit_log_mib"] = round(sum(
            p.stat().st_size for p in workdir.glob("server.audit.jsonl*")) / 2**20, 2)
        report["server_log_tail"] = (workdir / "server.log").read_text()[-2000:]
        return report
    finally:
        rig.close()


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(cfg: SoakConfig, peak: float, rate: float, rows: list[dict[str, Any]],
              finals: Sequence[dict[str, Any]], reloads: list[dict[str, Any]],
              correctness: dict[str, Any], rss0: float, server_cpu_share: float,
              cal_finals: Sequence[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, dict[str, Any]] = {}
    errors: dict[str, Counter[str]] = {}
    for row in rows:
        for kind, k in row["kinds"].items():
            t = totals.setdefault(kind, {"calls": 0, "errors": 0})
            t["calls"] += round(k["calls_per_s"] * cfg.interval_s)
            t["errors"] += sum(k["errors"].values())
            for code, n in k["errors"].items():
                errors.setdefault(classify(kind, code), Counter())[f"{kind} {code}"] += n
    calls = sum(t["calls"] for t in totals.values())
    unexpected = sum(errors.get("unexpected", Counter()).values())
    overload = sum(errors.get("overload or transport", Counter()).values())
    expected = sum(errors.get("expected", Counter()).values())
    half = [r for r in rows if r["t_s"] > cfg.minutes * 60 / 2]
    rss_slope = slope_per_min([(r["t_s"], r["rss_mib"]) for r in half])
    redis_slope = slope_per_min([(r["t_s"], r["redis_used_mib"]) for r in half])
    series_growth = (rows[-1]["metric_series"] - rows[0]["metric_series"]) if rows else 0
    wrong = [w for f in finals for w in f["wrong"]]
    reloads_ok = all(r["ok"] for r in reloads)
    verdict = {
        "no_unexpected_errors": unexpected == 0,
        "no_wrong_answers": not wrong,
        "writes_and_decisions_consistent": not correctness["problems"],
        "reloads_as_expected": reloads_ok,
        "memory_flat": rss_slope <= cfg.max_growth_mib_per_min,
    }
    return {
        "config": asdict(cfg), "peak_calls_per_s": peak, "target_calls_per_s": rate,
        "achieved_calls_per_s": (sum(r["calls_per_s"] for r in rows) / len(rows)) if rows
        else 0.0,
        "intervals": rows, "totals": totals, "calls": calls,
        "errors": {c: dict(v) for c, v in errors.items()},
        "error_rate_unexpected": unexpected / calls if calls else 0.0,
        "error_rate_overload": overload / calls if calls else 0.0,
        "expected_refusals": expected,
        "rss_start_mib": rss0,
        "rss_slope_mib_per_min": rss_slope, "redis_slope_mib_per_min": redis_slope,
        "metric_series_growth": series_growth,
        "missed_slots": sum(f["missed_slots"] for f in finals),
        "client_cpu_s": [round(f["client_cpu_s"], 1) for f in finals],
        "calibration_client_cpu_s": [round(f["client_cpu_s"], 1) for f in cal_finals],
        "server_cpu_share": server_cpu_share,
        "wrong_answers": wrong, "reloads": reloads, "correctness": correctness,
        "verdict": verdict, "ok": all(verdict.values()),
    }


# -- output ----------------------------------------------------------------------------


def _f(x: float) -> str:
    return "—" if x != x else (f"{x:.1f}" if x >= 10 else f"{x:.2f}")


def render(report: dict[str, Any]) -> str:
    """Markdown: the summary, one row per interval, latencies per kind per interval."""
    cfg = report["config"]
    lines = [
        f"Peak (calibration, {cfg['calibrate_s']:g} s, closed loop): "
        f"{report['peak_calls_per_s']:,.0f} calls/s; target {cfg['load']:.0%}: "
        f"{report['target_calls_per_s']:,.0f} calls/s; achieved "
        f"{report['achieved_calls_per_s']:,.0f} calls/s over {cfg['minutes']:g} min "
        f"({report['calls']:,} calls; server CPU {report['server_cpu_share']:.0%} of one core; "
        f"client CPU {report['client_cpu_s']} s; {report['missed_slots']:,} paced slots "
        f"dropped when more than 1 s behind).",
        "",
        f"Errors: unexpected {report['error_rate_unexpected']:.4%}, overload/transport "
        f"{report['error_rate_overload']:.4%}, expected refusals {report['expected_refusals']}"
        f" — {report['errors'] or 'none'}. Wrong answers: {len(report['wrong_answers'])}.",
        f"Memory: server RSS {report['rss_start_mib']:.1f} MiB at start, slope over the "
        f"second half {report['rss_slope_mib_per_min']:+.2f} MiB/min; Redis "
        f"{report['redis_slope_mib_per_min']:+.2f} MiB/min; metric series "
        f"{report['metric_series_growth']:+d}. Audit log {report.get('audit_log_mib', 0)} MiB.",
        "",
        "| t (s) | calls/s | Check p50/p99/max ms | CheckBulk p50/p99 ms | writes/s | "
        "write p99 ms | usage/s | tenancy/s | errors | RSS MiB | Redis MiB | index rev | "
        "series | load |",
        "|---:|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["intervals"]:
        k = r["kinds"]
        none: dict[str, Any] = {"calls_per_s": 0.0, "p50_ms": float("nan"),
                                "p99_ms": float("nan"), "max_ms": float("nan"), "errors": {}}
        c, b = k.get("Check", none), k.get("CheckBulk", none)
        w, u = k.get("WriteRelationships", none), k.get("RecordUsage", none)
        ten = sum(k.get(s, none)["calls_per_s"] for s in TENANCY_STEPS)
        errs = Counter[str]()
        for kind, v in k.items():
            for code, n in v["errors"].items():
                errs[f"{kind} {code}"] += n
        lines.append(
            f"| {r['t_s']:.0f} | {r['calls_per_s']:,.0f} | {_f(c['p50_ms'])} / "
            f"{_f(c['p99_ms'])} / {_f(c['max_ms'])} | {_f(b['p50_ms'])} / {_f(b['p99_ms'])} | "
            f"{w['calls_per_s']:.0f} | {_f(w['p99_ms'])} | {u['calls_per_s']:.0f} | "
            f"{ten:.1f} | {', '.join(f'{e} {n}' for e, n in errs.items()) or '0'} | "
            f"{r['rss_mib']:.1f} | {r['redis_used_mib']:.1f} | {r['index_revision']} | "
            f"{r['metric_series']} | {r.get('load1', 0):.1f} |")
    lines += ["", "| kind | calls | errors | p50 ms (first → last interval) | p99 ms | max ms |",
              "|---|---:|---:|---|---|---:|"]
    rows = report["intervals"]
    for kind in KINDS:
        t = report["totals"].get(kind)
        if not t or not rows:
            continue
        first = next((r["kinds"][kind] for r in rows if kind in r["kinds"]), None)
        last = next((r["kinds"][kind] for r in reversed(rows) if kind in r["kinds"]), None)
        worst = max((r["kinds"][kind]["max_ms"] for r in rows if kind in r["kinds"]
                     and r["kinds"][kind]["max_ms"] == r["kinds"][kind]["max_ms"]),
                    default=float("nan"))
        if first is None or last is None:
            continue
        lines.append(f"| {kind} | {t['calls']:,} | {t['errors']} | {_f(first['p50_ms'])} → "
                     f"{_f(last['p50_ms'])} | {_f(first['p99_ms'])} → {_f(last['p99_ms'])} | "
                     f"{_f(worst)} |")
    corr = report["correctness"]
    lines += ["", f"Policy reloads: {len(report['reloads'])} "
                  f"({sum(r['ok'] for r in report['reloads'])} as expected: good edits "
                  f"served, broken ones refused with the old policy serving).",
              f"End checks: {corr['writes_present_checked']} acknowledged flows read back, "
              f"{corr['deletes_checked']} acknowledged deletes absent, "
              f"{corr['usage_orgs_checked']} organizations' usage equal to the acknowledged "
              f"events, {corr['checks_compared']} Checks compared with a fresh server "
              f"({corr['checks_allowed']} allowed): {corr['checks_differing']} differ. "
              f"Problems: {corr['problems'] or 'none'}.",
              f"Verdict: {report['verdict']} -> {'PASS' if report['ok'] else 'FAIL'}"]
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


@contextlib.contextmanager
def _workdir(keep: str | None) -> Iterator[Path]:
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="gatehouse-soak-") as d:
        yield Path(d)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    d = SoakConfig()
    p.add_argument("--minutes", type=float, default=d.minutes)
    p.add_argument("--load", type=float, default=d.load, help="share of the measured peak")
    p.add_argument("--calibrate", type=float, default=d.calibrate_s, help="seconds")
    p.add_argument("--rate", type=float, default=d.rate,
                   help="drive this many calls/s instead of calibrating")
    p.add_argument("--interval", type=float, default=d.interval_s, help="seconds per row")
    p.add_argument("--clients", type=int, default=d.clients, help="client processes")
    p.add_argument("--orgs", type=int, default=d.orgs)
    p.add_argument("--reload-every", type=float, default=d.reload_every_s, help="seconds")
    p.add_argument("--max-growth", type=float, default=d.max_growth_mib_per_min,
                   help="RSS slope (MiB/min, second half) above which memory is flagged")
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--workdir", help="keep Redis, logs and the audit log here")
    args = p.parse_args(argv)
    cfg = replace(d, minutes=args.minutes, load=args.load, calibrate_s=args.calibrate,
                  interval_s=args.interval, clients=args.clients, orgs=args.orgs,
                  reload_every_s=args.reload_every, max_growth_mib_per_min=args.max_growth,
                  rate=args.rate)
    with _workdir(args.workdir) as wd:
        report = run_soak(cfg, wd, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(_jsonable(report), indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
