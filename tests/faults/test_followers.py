"""Several gatehouse processes on one Redis: a follower that falls behind the trimmed
changelog, a server started while a writer hammers, and the new-enemy case."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import redis as redis_py

from gatehouse.runtime.follower import IndexFollower
from gatehouse.server import Server, ServerConfig, build_runtime, transport_options
from gatehouse.transport import open_transport
from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import graph_pb2 as gpb
from tests.conftest import free_port
from tests.e2e.test_graph_service import ref, update
from tests.faults.harness import (
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
    stored_relationships,
    verify,
    wait_until,
)


def test_changelog_trimmed_behind_a_slow_follower(tmp_path: Path) -> None:
    """Server B is paused while A writes and the changelog is trimmed past B's revision
    (what ``XADD MAXLEN ~ CHANGELOG_MAXLEN`` in graph/redis.py does once a follower is a
    million changes behind): B must rebuild from a snapshot, not skip the trimmed changes."""
    redis = fault_redis(tmp_path)
    prefix = new_prefix()
    a = serve(tmp_path, redis, prefix)
    b = serve(tmp_path, redis, prefix)
    try:
        sa, sb = Stubs(a.channel()), Stubs(b.channel())
        tenant = make_tenant(sa)
        ledger = Ledger()
        b.proc.send_signal(signal.SIGSTOP)
        load = Load([a], tenant, ledger).start()
        time.sleep(1.5)
        load.stop()
        client = redis_py.Redis(host="127.0.0.1", port=redis.port)
        try:
            client.xtrim(f"{prefix}:log", maxlen=3, approximate=False)
        finally:
            client.close()
        b.proc.send_signal(signal.SIGCONT)
        recovery = wait_until(lambda: "trimmed" in b.logs(), what="b to notice the gap")
        ws = f"workspace:{tenant.workspace}"
        truth = {r for r in redis_relationships(redis, prefix) if r.startswith(f"{ws}#guest@")}
        assert stored_relationships(sb, ws, "guest") == truth
        # B's index holds every acknowledged write at its revision, without a restart.
        for text, events in list(ledger.rels.items())[:40]:
            if ledger.certain(text):
                res, subj = text.partition("#")[0], text.rpartition("@")[2]
                resp = sb.authz.Check(apb.CheckRequest(
                    subject=ref(subj), action="view", resource=ref(res),
                    consistency=apb.Consistency(at_least_as_fresh=str(events[-1].revision))),
                    timeout=5)
                assert (resp.decision == apb.DECISION_ALLOW) == ledger.final(text), text
        wait_until(recovered(sb), what="b to write again")
        figures = verify(ledger, sb, tenant)
        print(f"\n[faults] trimmed changelog: b rebuilt in {recovery:.2f} s; {figures}; "
              f"{ledger.summary()}")
    finally:
        b.proc.send_signal(signal.SIGCONT)
        a.stop()
        b.stop()
        redis.stop()


def test_a_write_racing_the_start_up_snapshot_still_appears(tmp_path: Path) -> None:
    """A server starts while writers hammer: it builds its index from a snapshot and
    follows the changelog from the snapshot's revision, so every write acknowledged before,
    during and after its start is visible there at a revision at least the write's."""
    redis = fault_redis(tmp_path)
    prefix = new_prefix()
    a = serve(tmp_path, redis, prefix)
    b = None
    try:
        sa = Stubs(a.channel())
        tenant = make_tenant(sa)
        ledger = Ledger()
        load = Load([a], tenant, ledger, pace=0.0).start()
        time.sleep(0.5)
        b = serve(tmp_path, redis, prefix)
        sb = Stubs(b.channel())
        late = Load([b], tenant, ledger, tag="late").start()
        time.sleep(1.0)
        load.stop()
        late.stop()
        for text, events in ledger.rels.items():
            if not ledger.certain(text):
                continue
            res, subj = text.partition("#")[0], text.rpartition("@")[2]
            for event in events:
                resp = sb.authz.Check(apb.CheckRequest(
                    subject=ref(subj), action="view", resource=ref(res),
                    consistency=apb.Consistency(at_least_as_fresh=str(event.revision))),
                    timeout=5)
                assert int(resp.revision) >= (event.revision or 0)
                assert (resp.decision == apb.DECISION_ALLOW) == \
                    ledger.present_at(text, int(resp.revision)), (text, event)
        figures = verify(ledger, sb, tenant)
        print(f"\n[faults] start-up race: {figures}; {ledger.summary()}")
    finally:
        a.stop()
        if b is not None:
            b.stop()
        redis.stop()


# -- the new-enemy case ----------------------------------------------------------


def test_new_enemy_a_revoke_on_one_server_holds_on_another(tmp_path: Path) -> None:
    """Revoke through A, an unrelated grant through B, then Check through B with B's
    revision: B must deny (the token orders the revoke before the grant)."""
    redis = fault_redis(tmp_path)
    prefix = new_prefix()
    a = serve(tmp_path, redis, prefix)
    b = serve(tmp_path, redis, prefix)
    try:
        sa, sb = Stubs(a.channel()), Stubs(b.channel())
        tenant = make_tenant(sa)
        ws = f"workspace:{tenant.workspace}"
        for i in range(30):
            victim = f"{ws}#guest@user:enemy{i}"
            token = sa.graph.WriteRelationships(gpb.WriteRelationshipsRequest(
                updates=[update(victim)]), timeout=5).revision
            assert allowed(sb, f"user:enemy{i}", ws, token)
            sa.graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[update(
                victim, gpb.RelationshipUpdate.OPERATION_DELETE)]), timeout=5)
            token = sb.graph.WriteRelationships(gpb.WriteRelationshipsRequest(
                updates=[update(f"{ws}#guest@user:bystander{i}")]), timeout=5).revision
            assert not allowed(sb, f"user:enemy{i}", ws, token)
    finally:
        a.stop()
        b.stop()
        redis.stop()


def allowed(stubs: Stubs, subject: str, resource: str, token: str) -> bool:
    return stubs.authz.Check(apb.CheckRequest(
        subject=ref(subject), action="view", resource=ref(resource),
        consistency=apb.Consistency(at_least_as_fresh=token)),
        timeout=3).decision == apb.DECISION_ALLOW


@contextmanager
def inprocess_server(redis_url: str, prefix: str) -> Iterator[tuple[str, IndexFollower]]:
    """A gatehouse server in this process (on its own loop thread), so a test can reach
    into its follower."""
    address = f"127.0.0.1:{free_port()}"
    config = ServerConfig(listen=address, redis_url=redis_url, redis_prefix=prefix,
                          watch_policy=False, grace_seconds=0.5)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> Server:
        runtime = await build_runtime(config)
        transport = await open_transport(config.transport, transport_options(config))
        server = Server(config, runtime, transport)
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield address, server.runtime.follower
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.mark.parametrize("freshness_wait", [True, False], ids=["wait", "control-no-wait"])
def test_new_enemy_positive_control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    freshness_wait: bool) -> None:
    """The same sequence against a server B whose follower is held still (it lags): with
    the freshness wait B refuses to answer at a revision it has not reached; with the wait
    switched off (the bug) B answers allow from before the revoke — so the test above
    would catch a server that ignored the token."""
    redis = fault_redis(tmp_path)
    prefix = f"e{uuid.uuid4().hex[:8]}"
    a = serve(tmp_path, redis, prefix)
    try:
        sa = Stubs(a.channel())
        tenant = make_tenant(sa)
        ws = f"workspace:{tenant.workspace}"
        victim = f"{ws}#guest@user:enemy"
        sa.graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[update(victim)]),
                                    timeout=5)

        async def lagging(self: IndexFollower) -> None:  # B's index stays at its snapshot
            await asyncio.Event().wait()

        monkeypatch.setattr(IndexFollower, "_follow_loop", lagging)
        with inprocess_server(redis.url, prefix) as (address, _follower):
            if not freshness_wait:
                async def no_wait(self: IndexFollower, *_: object) -> None:
                    return None
                monkeypatch.setattr(IndexFollower, "ensure", no_wait)
                monkeypatch.setattr(IndexFollower, "fresh_enough", lambda self, c: True)
            with grpc.insecure_channel(address) as channel:
                sb = Stubs(channel)
                sa.graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[update(
                    victim, gpb.RelationshipUpdate.OPERATION_DELETE)]), timeout=5)
                token = sb.graph.WriteRelationships(gpb.WriteRelationshipsRequest(
                    updates=[update(f"{ws}#guest@user:bystander")]), timeout=5).revision
                try:
                    answer = "ALLOW" if allowed(sb, "user:enemy", ws, token) else "DENY"
                except grpc.RpcError as exc:
                    answer = code_of(exc).name
        if freshness_wait:
            assert answer in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, answer
        else:
            assert answer == "ALLOW", "the control no longer shows the bug it guards against"
    finally:
        a.stop()
        redis.stop()


def test_fully_consistent_never_answers_from_an_index_of_lost_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis loses its data and counts again from 0 while a server's follower has not yet
    noticed (held still here): a fully consistent Check must not answer from the old index,
    whose revision is above the new head (regression: it allowed a grant Redis no longer
    held)."""
    redis = fault_redis(tmp_path)
    prefix = new_prefix()
    a = serve(tmp_path, redis, prefix)
    try:
        sa = Stubs(a.channel())
        tenant = make_tenant(sa)
        ws = f"workspace:{tenant.workspace}"
        for i in range(5):
            sa.graph.WriteRelationships(gpb.WriteRelationshipsRequest(
                updates=[update(f"{ws}#guest@user:old{i}")]), timeout=5)

        async def lagging(self: IndexFollower) -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(IndexFollower, "_follow_loop", lagging)
        with inprocess_server(redis.url, prefix) as (address, _follower):
            redis.flushall()
            sa.graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[
                update("workspace:fresh#parent@organization:neworg")]), timeout=5)
            with grpc.insecure_channel(address) as channel:
                sb = Stubs(channel)
                try:
                    resp = sb.authz.Check(apb.CheckRequest(
                        subject=ref("user:old0"), action="view", resource=ref(ws),
                        consistency=apb.Consistency(fully_consistent=True)), timeout=2)
                    answer = apb.Decision.Name(resp.decision)
                except grpc.RpcError as exc:
                    answer = code_of(exc).name
        assert answer in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, answer
    finally:
        a.stop()
        redis.stop()
