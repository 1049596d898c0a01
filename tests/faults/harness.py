"""The fault suite's parts: a mixed load from client threads, the ledger of what
was acknowledged, and the checks every scenario ends with.

A scenario starts real `gatehouse serve` processes on a private Redis, runs a
``Load`` against them, injects its fault, heals it, and then asks the ledger:

- every status a client saw is one the API documents for a failing store
  (OK, UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, FAILED_PRECONDITION);
- every acknowledged write is in the store afterwards (and every acknowledged
  delete is not), read back through ReadRelationships, ComputeUsage and
  ReadObject;
- every Check answer agrees with the ledger at the revision the answer claims:
  an allow only while the granting relationship existed, a deny only while it
  did not;
- the server recovers without a restart: health SERVING, writes succeed.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis
from google.protobuf.struct_pb2 import Struct
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from gatehouse.v1 import tenancy_pb2 as tpb
from gatehouse.v1 import tenancy_pb2_grpc as tpb_grpc
from gatehouse.v1 import usage_pb2 as upb
from gatehouse.v1 import usage_pb2_grpc as upb_grpc
from tests.conftest import ServerProcess, start_server
from tests.e2e.test_graph_service import ref, relationship, update
from tests.redis_server import RedisServer

OK = grpc.StatusCode.OK
# What a client may see while the store fails (docs/reliability/faults.md).
DOCUMENTED = frozenset({OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION})
CALL_TIMEOUT = 3.0
METRIC = "ai_insights_generations"


def fault_redis(tmp: Path, name: str = "redis") -> RedisServer:
    """A private Redis with AOF fsynced on every write, which loads a torn AOF tail."""
    return RedisServer(tmp / name, extra_args=("--aof-load-truncated", "yes")).start()


def serve(tmp: Path, redis_server: RedisServer, prefix: str, *extra: str) -> ServerProcess:
    return start_server(tmp, "--policy", "policies/coupler", "--redis-url", redis_server.url,
                        "--redis-prefix", prefix, *extra)


def new_prefix() -> str:
    return f"f{uuid.uuid4().hex[:8]}"


def code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    return exc.code()  # type: ignore[no-any-return,attr-defined]


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.authz = apb_grpc.AuthorizationServiceStub(channel)
        self.graph = gpb_grpc.GraphServiceStub(channel)
        self.tenancy = tpb_grpc.TenancyServiceStub(channel)
        self.usage = upb_grpc.UsageServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)

    def health_of(self, service: str = "gatehouse.v1.GraphService") -> int:
        try:
            return int(self.health.Check(health_pb2.HealthCheckRequest(service=service),
                                         timeout=2).status)
        except grpc.RpcError:
            return -1


def make_user(stubs: Stubs) -> str:
    uid = f"u{uuid.uuid4().hex[:10]}"
    attrs = Struct()
    attrs.update({"email": f"{uid}@example.com"})
    stubs.graph.WriteObjects(gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
        operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref(f"user:{uid}"),
        attributes=attrs)]), timeout=10)
    return f"user:{uid}"


@dataclass
class Tenant:
    """An organization created through TenancyService for the load to work in."""

    owner: str
    organization: str
    workspace: str


def make_tenant(stubs: Stubs) -> Tenant:
    owner = make_user(stubs)
    out = stubs.tenancy.CreateOrganization(tpb.CreateOrganizationRequest(
        actor=ref(owner), name="Faults", plan="enterprise"), timeout=10)
    return Tenant(owner, out.organization_id, out.workspace_id)


# -- the ledger ---------------------------------------------------------------


@dataclass
class RelEvent:
    touch: bool
    revision: int | None  # None: not acknowledged (may or may not have applied)


@dataclass
class CheckAnswer:
    rel: str
    allow: bool
    revision: int
    mode: str


@dataclass
class Ledger:
    """What the clients sent, what was acknowledged, and what they were told."""

    rels: dict[str, list[RelEvent]] = field(default_factory=dict)
    checks: list[CheckAnswer] = field(default_factory=list)
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    events: dict[str, bool] = field(default_factory=dict)  # usage event id -> acked
    workspaces: dict[str, str] = field(default_factory=dict)  # id -> "live"|"deleted"|"?"
    head: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self, op: str, code: grpc.StatusCode) -> None:
        with self.lock:
            self.statuses[(op, code.name)] += 1

    def rel(self, text: str, touch: bool, revision: int | None) -> None:
        with self.lock:
            self.rels.setdefault(text, []).append(RelEvent(touch, revision))
            if revision is not None:
                self.head = max(self.head, revision)

    def certain(self, text: str) -> bool:
        """Whether every write of ``text`` was acknowledged (its history is known)."""
        return all(e.revision is not None for e in self.rels[text])

    def present_at(self, text: str, revision: int) -> bool:
        state = False
        for event in self.rels.get(text, []):
            assert event.revision is not None
            if event.revision <= revision:
                state = event.touch
        return state

    def final(self, text: str) -> bool:
        return self.rels[text][-1].touch

    def codes(self) -> set[str]:
        return {code for _, code in self.statuses}

    def summary(self) -> str:
        return ", ".join(f"{op} {code} x{n}" for (op, code), n in sorted(self.statuses.items()))


# -- the load -------------------------------------------------------------------


class Load:
    """Checks, relationship writes, RecordUsage events and tenancy operations, each from
    its own client thread, against one or more servers (chosen at random per call)."""

    def __init__(self, servers: list[ServerProcess], tenant: Tenant, ledger: Ledger,
                 tag: str = "", pace: float = 0.005) -> None:
        self.stubs = [Stubs(s.channel()) for s in servers]
        self.tenant = tenant
        self.ledger = ledger
        self.tag = tag or uuid.uuid4().hex[:6]
        self.pace = pace
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.failures: list[BaseException] = []
        self._names: dict[str, str] = {}

    def _pick(self) -> Stubs:
        return random.choice(self.stubs)

    def _call(self, op: str, fn: Callable[[], object]) -> object | None:
        try:
            out = fn()
        except grpc.RpcError as exc:
            self.ledger.status(op, code_of(exc))
            return None
        self.ledger.status(op, OK)
        return out

    def _loop(self, body: Callable[[int], None]) -> None:
        i = 0
        try:
            while not self.stop_event.is_set():
                body(i)
                i += 1
                time.sleep(self.pace)
        except BaseException as exc:  # a bug in the harness must fail the test
            self.failures.append(exc)

    # one thread each

    def _write(self, i: int) -> None:
        t = self.tenant
        text = f"workspace:{t.workspace}#guest@user:{self.tag}-g{i}"
        resp = self._call("write", lambda: self._pick().graph.WriteRelationships(
            gpb.WriteRelationshipsRequest(updates=[update(text)]), timeout=CALL_TIMEOUT))
        self.ledger.rel(text, True, int(resp.revision) if resp is not None else None)  # type: ignore[attr-defined]
        if i % 3 == 2:  # revoke an earlier grant, so stale allows would show
            old = f"workspace:{t.workspace}#guest@user:{self.tag}-g{i - 2}"
            resp = self._call("write", lambda: self._pick().graph.WriteRelationships(
                gpb.WriteRelationshipsRequest(updates=[update(
                    old, gpb.RelationshipUpdate.OPERATION_DELETE)]), timeout=CALL_TIMEOUT))
            self.ledger.rel(old, False,
                            int(resp.revision) if resp is not None else None)  # type: ignore[attr-defined]

    def _check(self, i: int) -> None:
        with self.ledger.lock:
            known = list(self.ledger.rels)
            head = self.ledger.head
        if not known:
            return
        text = random.choice(known[-20:] if i % 2 else known)
        res, _, subj = text.partition("#")[0], None, text.rpartition("@")[2]
        req = apb.CheckRequest(subject=ref(subj), action="view", resource=ref(res))
        mode = ("fresh", "full", "latest")[i % 3]
        if mode == "fresh":
            req.consistency.at_least_as_fresh = str(head)
        elif mode == "full":
            req.consistency.fully_consistent = True
        resp = self._call("check", lambda: self._pick().authz.Check(req, timeout=CALL_TIMEOUT))
        if resp is not None:
            with self.ledger.lock:
                self.ledger.checks.append(CheckAnswer(
                    text, resp.decision == apb.DECISION_ALLOW,  # type: ignore[attr-defined]
                    int(resp.revision), mode))  # type: ignore[attr-defined]

    def _usage(self, i: int) -> None:
        event_id = f"{self.tag}-e{i}"
        resp = self._call("usage", lambda: self._pick().usage.RecordUsage(
            upb.RecordUsageRequest(organization_id=self.tenant.organization, events=[
                upb.UsageEvent(event_id=event_id, workspace_id=self.tenant.workspace,
                               metric=METRIC, amount=1)]), timeout=CALL_TIMEOUT))
        with self.ledger.lock:
            self.ledger.events[event_id] = resp is not None

    def _tenancy(self, i: int) -> None:
        t = self.tenant
        with self.ledger.lock:
            live = [w for w in self._names if self.ledger.workspaces.get(w) == "live"]
        if live and i % 2:
            ws = live[0]
            resp = self._call("tenancy", lambda: self._pick().tenancy.DeleteWorkspace(
                tpb.DeleteWorkspaceRequest(actor=ref(t.owner), workspace_id=ws,
                                           confirm_name=self._names[ws]), timeout=CALL_TIMEOUT))
            with self.ledger.lock:
                self.ledger.workspaces[ws] = "deleted" if resp is not None else "?"
            return
        ws = f"{self.tag}-w{i}"
        resp = self._call("tenancy", lambda: self._pick().tenancy.CreateWorkspace(
            tpb.CreateWorkspaceRequest(actor=ref(t.owner), organization_id=t.organization,
                                       name=f"ws {ws}", slug=ws), timeout=CALL_TIMEOUT))
        with self.ledger.lock:
            if resp is not None:
                self.ledger.workspaces[resp.workspace_id] = "live"  # type: ignore[attr-defined]
                self._names[resp.workspace_id] = f"ws {ws}"  # type: ignore[attr-defined]
            else:
                self.ledger.workspaces[f"?{ws}"] = "?"

    def start(self) -> Load:
        for name, body in (("write", self._write), ("check", self._check),
                           ("check2", self._check), ("usage", self._usage),
                           ("tenancy", self._tenancy)):
            th = threading.Thread(target=self._loop, args=(body,), name=f"load-{name}",
                                  daemon=True)
            th.start()
            self.threads.append(th)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for th in self.threads:
            th.join(CALL_TIMEOUT * 4)
        if self.failures:
            raise self.failures[0]


# -- waiting and verifying ------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = 30,
               what: str = "condition") -> float:
    """Poll ``predicate`` until true; returns the seconds it took (a figure for the docs,
    never asserted on)."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)  # poll interval of a bounded wait
    return time.monotonic() - started


def recovered(stubs: Stubs) -> Callable[[], bool]:
    """Health SERVING and a write acknowledged: the server is back without a restart."""
    def probe() -> bool:
        if stubs.health_of() != health_pb2.HealthCheckResponse.SERVING:
            return False
        try:
            stubs.graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[
                update("workspace:probe#parent@organization:probe"),
                update("workspace:probe#guest@user:probe")]), timeout=2)
        except grpc.RpcError:
            return False
        return True
    return probe


def stored_relationships(stubs: Stubs, resource: str, relation: str) -> set[str]:
    """The relationships on ``resource`` with ``relation``, read fully consistently."""
    rtype, _, rid = resource.partition(":")
    out: set[str] = set()
    cursor = ""
    while True:
        req = gpb.ReadRelationshipsRequest(
            filter=gpb.RelationshipFilter(resource_type=rtype, resource_id=rid,
                                          relation=relation),
            consistency=apb.Consistency(fully_consistent=True), cursor=cursor)
        last = None
        for msg in stubs.graph.ReadRelationships(req, timeout=10):
            if msg.HasField("relationship"):
                r = msg.relationship
                out.add(f"{r.resource.type}:{r.resource.id}#{r.relation}@"
                        f"{r.subject.type}:{r.subject.id}")
            last = msg
        if last is None or last.complete or not last.next_cursor:
            return out
        cursor = last.next_cursor


def redis_relationships(server: RedisServer, prefix: str) -> set[str]:
    """Every relationship in the store, read from Redis itself (the source of truth)."""
    client = redis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
    try:
        out: set[str] = set()
        for scope in client.smembers(f"{prefix}:scopes"):
            out |= set(client.smembers(f"{prefix}:{{{scope}}}:rels"))
        return out
    finally:
        client.close()


def verify(ledger: Ledger, stubs: Stubs, tenant: Tenant, *, lost_after: int | None = None,
           usage_before: float = 0.0) -> dict[str, int]:
    """The end-of-scenario checks; ``lost_after``: writes above this revision may be gone
    (a truncated AOF), everything else must be exactly as acknowledged."""
    assert ledger.codes() <= {c.name for c in DOCUMENTED}, ledger.summary()

    # Every Check agreed with the ledger at the revision it claimed.
    wrong = [c for c in ledger.checks if ledger.certain(c.rel)
             and (lost_after is None or c.revision <= lost_after)
             and c.allow != ledger.present_at(c.rel, c.revision)]
    assert not wrong, f"{len(wrong)} answers disagree with the ledger, e.g. {wrong[:3]}"

    # Every acknowledged relationship write is in the store, every acknowledged delete is not.
    stored = stored_relationships(stubs, f"workspace:{tenant.workspace}", "guest")
    missing = []
    for text, events in ledger.rels.items():
        if not ledger.certain(text):
            continue
        if lost_after is not None and (events[-1].revision or 0) > lost_after:
            continue
        if ledger.final(text) != (text in stored):
            missing.append(text)
    assert not missing, f"{len(missing)} acknowledged writes not as acknowledged: {missing[:3]}"

    # Usage: retry every event that was not acknowledged (same id: deduplicated), then the
    # counter is exactly the number of distinct events.
    for event_id, acked in list(ledger.events.items()):
        if not acked:
            stubs.usage.RecordUsage(upb.RecordUsageRequest(
                organization_id=tenant.organization, events=[upb.UsageEvent(
                    event_id=event_id, workspace_id=tenant.workspace, metric=METRIC,
                    amount=1)]), timeout=10)
    counted = usage_count(stubs, tenant) - usage_before
    if lost_after is None:
        assert counted == len(ledger.events), (counted, len(ledger.events))

    # Tenancy: acknowledged workspaces exist under the organization; deleted ones do not.
    children = {r.rpartition("@")[0].partition("#")[0].partition(":")[2]
                for r in children_of(stubs, tenant.organization)}
    for ws, state in ledger.workspaces.items():
        if state == "live" and lost_after is None:
            assert ws in children, f"acknowledged workspace {ws} is gone"
        if state == "deleted" and lost_after is None:
            assert ws not in children, f"deleted workspace {ws} is back"
    return {"checks": len(ledger.checks), "writes": len(ledger.rels),
            "events": len(ledger.events), "workspaces": len(ledger.workspaces)}


def usage_count(stubs: Stubs, tenant: Tenant) -> float:
    usage = stubs.usage.ComputeUsage(upb.ComputeUsageRequest(
        organization_id=tenant.organization, metrics=[METRIC],
        consistency=apb.Consistency(fully_consistent=True)), timeout=10)
    return float({m.name: m.value for m in usage.metrics}[METRIC])


def children_of(stubs: Stubs, organization: str) -> set[str]:
    """``workspace:W#parent@organization:O`` for every workspace of the organization."""
    out: set[str] = set()
    req = gpb.ReadRelationshipsRequest(
        filter=gpb.RelationshipFilter(resource_type="workspace", relation="parent",
                                      subject_type="organization", subject_id=organization),
        consistency=apb.Consistency(fully_consistent=True))
    for msg in stubs.graph.ReadRelationships(req, timeout=10):
        if msg.HasField("relationship"):
            r = msg.relationship
            out.add(f"{r.resource.type}:{r.resource.id}#parent@organization:{organization}")
    return out


def relationship_texts(items: Iterable[str]) -> list[gpb.RelationshipUpdate]:
    return [gpb.RelationshipUpdate(operation=gpb.RelationshipUpdate.OPERATION_TOUCH,
                                   relationship=relationship(t)) for t in items]


def steady(servers: list[ServerProcess], tenant: Tenant, seconds: float = 1.0) -> Ledger:
    """After recovery: a second of load sees only OK (and ABORTED, the documented answer
    to a tenancy operation whose organization kept changing), and checks out."""
    ledger = Ledger()
    stubs = Stubs(servers[0].channel())
    before = usage_count(stubs, tenant)
    load = Load(servers, tenant, ledger, tag=f"s{uuid.uuid4().hex[:5]}").start()
    time.sleep(seconds)
    load.stop()
    assert ledger.codes() <= {"OK", "ABORTED"}, f"after recovery: {ledger.summary()}"
    verify(ledger, stubs, tenant, usage_before=before)
    return ledger
