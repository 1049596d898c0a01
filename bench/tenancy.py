"""Tenancy benchmark: lifecycle operations over gRPC on Redis.

Starts a private Redis (AOF, appendfsync always) and `gatehouse serve
--redis-url ... --policy policies/coupler`, then measures, from a grpc.aio
client with --inflight calls in flight:

  * CreateWorkspace, InviteMember, AcceptInvitation and SetRole: p50/p99
    latency and calls/s, each operation on its own organization per client
    task (so the numbers are the operation's, not contention's);
  * RemoveMember of a person owning --owned resources (default 5,000) in one
    workspace: the time of the one atomic write, and Check latency on another
    workspace while it runs.

    .venv/bin/python bench/tenancy.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from google.protobuf.struct_pb2 import Struct  # noqa: E402

from gatehouse.v1 import authorization_pb2 as apb  # noqa: E402
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc  # noqa: E402
from gatehouse.v1 import graph_pb2 as gpb  # noqa: E402
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc  # noqa: E402
from gatehouse.v1 import tenancy_pb2 as pb  # noqa: E402
from gatehouse.v1 import tenancy_pb2_grpc as pb_grpc  # noqa: E402
from tests.conftest import free_port, wait_serving  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


def ref(key: str) -> apb.ObjectReference:
    t, _, i = key.partition(":")
    return apb.ObjectReference(type=t, id=i)


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


class Bench:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.t = pb_grpc.TenancyServiceStub(channel)
        self.g = gpb_grpc.GraphServiceStub(channel)
        self.a = apb_grpc.AuthorizationServiceStub(channel)

    async def users(self, n: int, prefix: str) -> list[str]:
        out = []
        for start in range(0, n, 500):
            updates = []
            for i in range(start, min(n, start + 500)):
                attrs = Struct()
                attrs.update({"email": f"{prefix}{i}@bench.example"})
                updates.append(gpb.ObjectUpdate(operation=gpb.ObjectUpdate.OPERATION_PUT,
                                                object=ref(f"user:{prefix}{i}"),
                                                attributes=attrs))
                out.append(f"user:{prefix}{i}")
            await self.g.WriteObjects(gpb.WriteObjectsRequest(updates=updates))
        return out

    async def org(self, owner: str) -> tuple[str, str]:
        r = await self.t.CreateOrganization(pb.CreateOrganizationRequest(
            actor=ref(owner), name="Bench", plan="enterprise"))
        return r.organization_id, r.workspace_id


async def measure(calls: int, inflight: int,
                  op: Callable[[int], Awaitable[Any]]) -> dict[str, float]:
    lat: list[float] = []
    queue = iter(range(calls))

    async def worker() -> None:
        for i in queue:
            t0 = time.perf_counter()
            await op(i)
            lat.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    elapsed = time.perf_counter() - started
    return {"calls_per_s": calls / elapsed, "p50_ms": quantile(lat, 0.5),
            "p99_ms": quantile(lat, 0.99)}


async def run(address: str, calls: int, inflight: int, owned: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(address) as ch:
        b = Bench(ch)
        owners = await b.users(inflight, "own")
        orgs = [await b.org(o) for o in owners]
        people = await b.users(calls, "p")

        async def create(i: int) -> None:
            k = i % inflight
            await b.t.CreateWorkspace(pb.CreateWorkspaceRequest(
                actor=ref(owners[k]), organization_id=orgs[k][0], name=f"ws {i}"))

        tokens: list[str] = [""] * calls

        async def invite(i: int) -> None:
            k = i % inflight
            r = await b.t.InviteMember(pb.InviteMemberRequest(
                actor=ref(owners[k]), scope=ref(f"workspace:{orgs[k][1]}"),
                email=f"p{i}@bench.example", role="user"))
            tokens[i] = r.token

        async def accept(i: int) -> None:
            await b.t.AcceptInvitation(pb.AcceptInvitationRequest(
                token=tokens[i], subject=ref(people[i])))

        async def set_role(i: int) -> None:
            k = i % inflight
            await b.t.SetRole(pb.SetRoleRequest(
                actor=ref(owners[k]), scope=ref(f"workspace:{orgs[k][1]}"),
                subject=ref(people[i]), role="admin"))

        for name, op in (("CreateWorkspace", create), ("InviteMember", invite),
                         ("AcceptInvitation", accept), ("SetRole", set_role)):
            results[name] = await measure(calls, inflight, op)

        # RemoveMember of someone owning `owned` resources, beside Checks elsewhere.
        owner = owners[0]
        org, primary = orgs[0]
        other = (await b.t.CreateWorkspace(pb.CreateWorkspaceRequest(
            actor=ref(owner), organization_id=org, name="Elsewhere"))).workspace_id
        member = (await b.users(1, f"m{uuid.uuid4().hex[:6]}"))[0]
        await b.g.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[
            gpb.RelationshipUpdate(operation=gpb.RelationshipUpdate.OPERATION_TOUCH,
                                   relationship=gpb.Relationship(
                                       resource=ref(f"workspace:{primary}"), relation="user",
                                       subject=ref(member)))]))
        for start in range(0, owned, 500):
            updates = []
            for i in range(start, min(owned, start + 500)):
                flow = ref(f"data_flow:rm{i}")
                for relation, subject in (("parent", ref(f"workspace:{primary}")),
                                          ("owner", ref(member))):
                    updates.append(gpb.RelationshipUpdate(
                        operation=gpb.RelationshipUpdate.OPERATION_TOUCH,
                        relationship=gpb.Relationship(resource=flow, relation=relation,
                                                      subject=subject)))
            await b.g.WriteRelationships(gpb.WriteRelationshipsRequest(updates=updates))
        check = apb.CheckRequest(subject=ref(owner), action="view",
                                 resource=ref(f"workspace:{other}"))
        lat: list[float] = []
        done = asyncio.Event()

        async def checker() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                await b.a.Check(check)
                lat.append((time.perf_counter() - t0) * 1000)

        task = asyncio.create_task(checker())
        await asyncio.sleep(0.3)
        before = len(lat)
        t0 = time.perf_counter()
        r = await b.t.RemoveMember(pb.RemoveMemberRequest(
            actor=ref(owner), scope=ref(f"workspace:{primary}"), member=ref(member),
            reassign_to=ref(owner)), timeout=60)
        removal = time.perf_counter() - t0
        done.set()
        await task
        during = lat[before:]
        results["RemoveMember"] = {
            "resources": sum(r.reassigned.values()), "seconds": removal,
            "check_during_p50_ms": quantile(during, 0.5),
            "check_during_p99_ms": quantile(during, 0.99), "checks_during": len(during)}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--inflight", type=int, default=16)
    ap.add_argument("--owned", type=int, default=5000)
    args = ap.parse_args()
    calls = 200 if args.quick else 2000
    owned = 500 if args.quick else args.owned
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        redis = RedisServer(tmp).start()
        try:
            address = f"127.0.0.1:{free_port()}"
            log = tmp / "server.log"
            server = subprocess.Popen(
                [sys.executable, "-m", "gatehouse.cli", "serve", "--listen", address,
                 "--policy", str(ROOT / "policies/coupler"), "--redis-url", redis.url,
                 "--redis-prefix", "tb", "--no-watch", "--log-level", "warning"],
                stdout=log.open("w"), stderr=subprocess.STDOUT)
            try:
                wait_serving(address, server, log, timeout=60)
                result = asyncio.run(run(address, calls, args.inflight, owned))
            finally:
                server.terminate()
                server.wait(30)
        finally:
            redis.stop()
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'operation':<18} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8}   "
          f"({args.inflight} in flight, Redis AOF always)")
    for name in ("CreateWorkspace", "InviteMember", "AcceptInvitation", "SetRole"):
        r = result[name]
        print(f"{name:<18} {r['calls_per_s']:>8,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}")
    rm = result["RemoveMember"]
    print(f"RemoveMember of {rm['resources']:,} resources: {rm['seconds']:.2f} s; Check "
          f"elsewhere meanwhile p50 {rm['check_during_p50_ms']:.2f} ms, p99 "
          f"{rm['check_during_p99_ms']:.2f} ms (n={rm['checks_during']})")


if __name__ == "__main__":
    main()
