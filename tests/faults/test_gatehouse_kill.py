"""gatehouse SIGKILLed in the middle of write batches and tenancy operations: each is
one Lua script in Redis, so the store holds all of it or none of it."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path

import grpc

from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import tenancy_pb2 as tpb
from tests.e2e.test_graph_service import ref, update
from tests.faults.harness import (
    DOCUMENTED,
    Stubs,
    code_of,
    fault_redis,
    make_tenant,
    make_user,
    new_prefix,
    recovered,
    redis_relationships,
    serve,
    wait_until,
)

BATCH = 300


def test_sigkill_mid_batch_and_mid_tenancy_is_all_or_nothing(tmp_path: Path) -> None:
    redis = fault_redis(tmp_path)
    prefix = new_prefix()
    victim = serve(tmp_path, redis, prefix)
    survivor = serve(tmp_path, redis, prefix)
    try:
        sv, ss = Stubs(victim.channel()), Stubs(survivor.channel())
        tenant = make_tenant(ss)
        owner = make_user(ss)
        ws = f"workspace:{tenant.workspace}"
        batches: dict[str, str] = {}  # tag -> "ok" | status name
        orgs: dict[str, str] = {}
        stop = threading.Event()

        def write_batches() -> None:
            while not stop.is_set():
                tag = uuid.uuid4().hex[:8]
                try:
                    sv.graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[
                        update(f"{ws}#guest@user:{tag}-{i}") for i in range(BATCH)]),
                        timeout=5)
                    batches[tag] = "OK"
                except grpc.RpcError as exc:
                    batches[tag] = code_of(exc).name

        def create_orgs() -> None:
            while not stop.is_set():
                org = f"o{uuid.uuid4().hex[:8]}"
                try:
                    sv.tenancy.CreateOrganization(tpb.CreateOrganizationRequest(
                        actor=ref(owner), organization_id=org, name="Killed",
                        plan="enterprise"), timeout=5)
                    orgs[org] = "OK"
                except grpc.RpcError as exc:
                    orgs[org] = code_of(exc).name

        threads = [threading.Thread(target=f, daemon=True)
                   for f in (write_batches, write_batches, create_orgs, create_orgs)]
        for th in threads:
            th.start()
        time.sleep(1.5)
        victim.proc.send_signal(signal.SIGKILL)  # calls in flight, channels left open
        stop.set()
        for th in threads:
            th.join(10)
        assert {s for s in [*batches.values(), *orgs.values()]} <= \
            {c.name for c in DOCUMENTED}, (batches, orgs)

        truth = redis_relationships(redis, prefix)
        for tag, status in batches.items():
            present = sum(f"{ws}#guest@user:{tag}-{i}" in truth for i in range(BATCH))
            assert present in (0, BATCH), f"batch {tag} half applied: {present}/{BATCH}"
            if status == "OK":
                assert present == BATCH, f"acknowledged batch {tag} lost"
        for org, status in orgs.items():
            owned = f"organization:{org}#owner@{owner}" in truth
            children = [r for r in truth if r.endswith(f"#parent@organization:{org}")]
            assert owned == (len(children) == 1), f"organization {org} half created"
            if status == "OK":
                assert owned, f"acknowledged organization {org} lost"
        # The survivor serves on, and sees the same store.
        wait_until(recovered(ss), what="the survivor to write")
        applied = sum(1 for s in batches.values() if s == "OK")
        print(f"\n[faults] gatehouse sigkill: batches {len(batches)} (acked {applied}), "
              f"organizations {len(orgs)} (acked {sum(s == 'OK' for s in orgs.values())}), "
              f"statuses {sorted(set(batches.values()) | set(orgs.values()))}")
    finally:
        victim.stop()
        survivor.stop()
        redis.stop()
