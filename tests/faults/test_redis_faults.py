"""Redis fails under a running gatehouse with a mixed load: killed, paused, wiped, torn.

Each test ends with ``harness.verify``: documented statuses only, every acknowledged
write present, every Check answer true at the revision it claims, and recovery
without restarting gatehouse. Recovery times are printed (``-s``) for
docs/reliability/faults.md, never asserted.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import grpc

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import graph_pb2 as gpb
from tests.e2e.test_graph_service import ref, update
from tests.faults.harness import (
    CALL_TIMEOUT,
    Ledger,
    Load,
    Stubs,
    code_of,
    fault_redis,
    make_tenant,
    new_prefix,
    recovered,
    redis_relationships,
    serve,
    steady,
    stored_relationships,
    verify,
    wait_until,
)
from tests.redis_server import RedisServer

LOAD_SECONDS = 1.5


def report(name: str, ledger: Ledger, recovery: float, figures: dict[str, int]) -> None:
    print(f"\n[faults] {name}: recovered in {recovery:.2f} s; {figures}; {ledger.summary()}")


def test_redis_sigkill_and_restart_from_aof(tmp_path: Path) -> None:
    """SIGKILL loses nothing acknowledged (appendfsync always); the server reconnects."""
    redis = fault_redis(tmp_path)
    server = serve(tmp_path, redis, new_prefix())
    try:
        stubs = Stubs(server.channel())
        tenant = make_tenant(stubs)
        ledger = Ledger()
        load = Load([server], tenant, ledger).start()
        time.sleep(LOAD_SECONDS)
        redis.kill()
        time.sleep(LOAD_SECONDS)
        redis.start()
        recovery = wait_until(recovered(stubs), what="recovery after restart")
        time.sleep(LOAD_SECONDS / 2)
        load.stop()
        report("sigkill", ledger, recovery, verify(ledger, stubs, tenant))
        steady([server], tenant)
    finally:
        server.stop()
        redis.stop()


def test_redis_sigstop_longer_than_the_deadlines(tmp_path: Path) -> None:
    """A paused Redis: calls end with DEADLINE_EXCEEDED or UNAVAILABLE, never hang or lie;
    after SIGCONT everything acknowledged is there and the server serves again."""
    redis = fault_redis(tmp_path)
    server = serve(tmp_path, redis, new_prefix())
    try:
        stubs = Stubs(server.channel())
        tenant = make_tenant(stubs)
        ledger = Ledger()
        load = Load([server], tenant, ledger).start()
        time.sleep(LOAD_SECONDS)
        redis.pause()
        time.sleep(CALL_TIMEOUT + 1.5)
        redis.resume()
        recovery = wait_until(recovered(stubs), what="recovery after SIGCONT")
        time.sleep(LOAD_SECONDS / 2)
        load.stop()
        report("sigstop", ledger, recovery, verify(ledger, stubs, tenant))
        steady([server], tenant)
        assert ledger.statuses[("write", "DEADLINE_EXCEEDED")] + \
            ledger.statuses[("write", "UNAVAILABLE")] > 0, ledger.summary()
    finally:
        redis.resume()
        server.stop()
        redis.stop()


def test_redis_restarted_empty_serves_no_stale_allow(tmp_path: Path) -> None:
    """Redis comes back with no data (a new epoch): the index rebuilds, and no Check that
    asks for freshness (fully consistent, or a revision of the new data set) answers from
    the old index in the meantime."""
    redis = fault_redis(tmp_path)
    server = serve(tmp_path, redis, new_prefix())
    try:
        stubs = Stubs(server.channel())
        old = make_tenant(stubs)
        grant = f"workspace:{old.workspace}#guest@user:stale"
        stubs.graph.WriteRelationships(gpb.WriteRelationshipsRequest(
            updates=[update(grant)]), timeout=5)
        ledger = Ledger()
        load = Load([server], old, ledger).start()
        time.sleep(LOAD_SECONDS)
        load.stop()
        redis.kill()
        redis.wipe()
        redis.start()
        started = time.monotonic()
        # Hammer the old grant while the server finds out: a fresh-enough read must never
        # allow it (the new data set has no such relationship).
        seen: Counter[str] = Counter()
        token = ""
        while time.monotonic() - started < 2.5:
            for req in fresh_requests(grant, token):
                try:
                    resp = stubs.authz.Check(req, timeout=CALL_TIMEOUT)
                except grpc.RpcError as exc:
                    seen[code_of(exc).name] += 1
                    continue
                assert resp.decision != apb.DECISION_ALLOW, (
                    f"stale allow from the old index at revision {resp.revision} "
                    f"({req.consistency})")
                seen["DENY"] += 1
            if not token:
                try:
                    token = stubs.graph.WriteRelationships(gpb.WriteRelationshipsRequest(
                        updates=[update("workspace:fresh#parent@organization:neworg"),
                                 update("workspace:fresh#guest@user:new-epoch")]),
                        timeout=CALL_TIMEOUT).revision
                except grpc.RpcError as exc:
                    seen[f"write {code_of(exc).name}"] += 1
        assert set(seen) <= {"DENY", "UNAVAILABLE", "DEADLINE_EXCEEDED",
                             "write UNAVAILABLE"}, seen
        recovery = wait_until(recovered(stubs), what="recovery on the empty store")
        assert "rebuilding the index" in server.logs()
        # A new tenant on the new data set, under load, loses nothing acknowledged.
        tenant = make_tenant(stubs)
        ledger = steady([server], tenant, LOAD_SECONDS)
        report("restarted empty", ledger, recovery, verify(ledger, stubs, tenant))
        print(f"[faults] restarted empty: probes {dict(seen)}")
    finally:
        server.stop()
        redis.stop()


def fresh_requests(grant: str, token: str) -> list[apb.CheckRequest]:
    res, _, subj = grant.partition("#")[0], None, grant.rpartition("@")[2]
    full = apb.CheckRequest(subject=ref(subj), action="view", resource=ref(res),
                            consistency=apb.Consistency(fully_consistent=True))
    out = [full]
    if token:
        out.append(apb.CheckRequest(subject=ref(subj), action="view", resource=ref(res),
                                    consistency=apb.Consistency(at_least_as_fresh=token)))
    return out


def truncate_aof(redis: RedisServer, drop: int) -> None:
    """Cut the AOF of a stopped Redis inside its ``drop``-th last transaction, as a crash
    that tore the file would (Redis logs each script's effects as MULTI ... EXEC)."""
    files = sorted((redis.dir / "appendonlydir").glob("*.incr.aof"))
    path = files[-1]
    data = path.read_bytes()
    marker = b"*1\r\n$5\r\nMULTI\r\n"
    starts = [i for i in range(len(data)) if data.startswith(marker, i)]
    assert len(starts) > drop, "too few transactions in the AOF"
    cut = starts[-drop] + len(marker) + 7  # a torn command inside the transaction
    path.write_bytes(data[:cut])


def test_redis_restarted_from_a_truncated_aof(tmp_path: Path) -> None:
    """Redis loads an AOF whose tail was torn off: the revision goes back. A second server
    paused across the restart, whose index is ahead of the store and whose revision the
    store then reaches again with other changes, must rebuild rather than mix the two
    histories; both servers end with exactly what Redis holds."""
    redis = fault_redis(tmp_path)
    prefix = new_prefix()
    a = serve(tmp_path, redis, prefix)
    c = serve(tmp_path, redis, prefix)
    try:
        sa, sc = Stubs(a.channel()), Stubs(c.channel())
        tenant = make_tenant(sa)
        ledger = Ledger()
        load = Load([a, c], tenant, ledger).start()
        time.sleep(LOAD_SECONDS)
        load.stop()
        ws = f"workspace:{tenant.workspace}"
        kept = int(sa.graph.WriteRelationships(gpb.WriteRelationshipsRequest(
            updates=[update(f"{ws}#guest@user:kept")]), timeout=5).revision)
        lost = [f"{ws}#guest@user:lost{i}" for i in range(5)]
        for text in lost:
            rev = sa.graph.WriteRelationships(gpb.WriteRelationshipsRequest(
                updates=[update(text)]), timeout=5).revision
        wait_until(lambda: sc.authz.Check(apb.CheckRequest(
            subject=ref("user:lost4"), action="view", resource=ref(ws),
            consistency=apb.Consistency(at_least_as_fresh=rev)),
            timeout=5).decision == apb.DECISION_ALLOW, what="c to apply the last write")
        c.proc.send_signal(signal.SIGSTOP)
        redis.kill()
        truncate_aof(redis, len(lost))
        redis.start()
        wait_until(recovered(sa), what="a to recover")
        # Other changes take the numbers the lost ones had, and more.
        again = [f"{ws}#guest@user:again{i}" for i in range(len(lost) + 3)]
        for text in again:
            sa.graph.WriteRelationships(gpb.WriteRelationshipsRequest(
                updates=[update(text)]), timeout=5)
        c.proc.send_signal(signal.SIGCONT)
        recovery = wait_until(recovered(sc), what="c to recover")
        truth = {r for r in redis_relationships(redis, prefix) if r.startswith(f"{ws}#guest@")}
        assert f"{ws}#guest@user:kept" in truth
        assert not truth & set(lost)
        for stubs in (sa, sc):
            assert stored_relationships(stubs, ws, "guest") == truth
        report("truncated aof", ledger, recovery, verify(ledger, sc, tenant, lost_after=kept))
        steady([a, c], tenant)
        assert "went back" in c.logs() or "behind the index" in c.logs()
    finally:
        c.proc.send_signal(signal.SIGCONT)
        a.stop()
        c.stop()
        redis.stop()
