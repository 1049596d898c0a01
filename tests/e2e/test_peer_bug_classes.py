"""Known bug classes of peer authorization systems, one test each, against gatehouse.

Published advisories of relationship-based authorization services were mostly
wrong answers rather than bypasses: wildcards and denies combined badly,
listings that disagreed with checks, batches half applied, identifiers
conflated, counters that wrapped, conditions that failed open. Each class
below names the behaviour gatehouse keeps, and proves it through a real
server on loopback, on the memory store and on Redis, with the policy in
tests/testdata/peer/.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from gatehouse import engine
from gatehouse.errors import PolicyError
from gatehouse.graph.index import GraphIndex
from gatehouse.graph.model import Relationship, Snapshot
from gatehouse.policy.loader import compile_sources
from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from gatehouse.v1 import usage_pb2 as upb
from gatehouse.v1 import usage_pb2_grpc as upb_grpc
from tests.conftest import ROOT, ServerProcess, start_on_store
from tests.e2e.test_graph_service import ref, update

POLICY = "tests/testdata/peer/policy"
DATA = "tests/testdata/peer/graph.data.yaml"
DOCS = ("d_open", "d_locked", "d_mia", "d_score")
USERS = ("ada", "mia", "ed", "vic", "olga", "nobody")
ACTIONS = ("read", "write", "delete", "share")


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    """The peer policy and graph on the memory store and on a real Redis (where a batch
    is applied by one script, and usage counters live in Redis too)."""
    proc = start_on_store(request, tmp_path_factory, request.param, "--policy", POLICY,
                          "--data", DATA)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def authz(server: ServerProcess) -> apb_grpc.AuthorizationServiceStub:
    return apb_grpc.AuthorizationServiceStub(server.channel())


@pytest.fixture(scope="module")
def graph(server: ServerProcess) -> gpb_grpc.GraphServiceStub:
    return gpb_grpc.GraphServiceStub(server.channel())


@pytest.fixture(scope="module")
def usage(server: ServerProcess) -> upb_grpc.UsageServiceStub:
    return upb_grpc.UsageServiceStub(server.channel())


def allowed(authz: apb_grpc.AuthorizationServiceStub, subject: str, action: str,
            resource: str, context: dict[str, object] | None = None) -> bool:
    req = apb.CheckRequest(subject=ref(subject), action=action, resource=ref(resource))
    if context is not None:
        req.context.update(context)
    req.consistency.fully_consistent = True
    return authz.Check(req, timeout=10).decision == apb.DECISION_ALLOW


def actions_allowed(authz: apb_grpc.AuthorizationServiceStub, user: str, doc: str) -> set[str]:
    return {a for a in ACTIONS if allowed(authz, f"user:{user}", a, f"doc:{doc}")}


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()  # type: ignore[no-any-return]


def relationships_of(graph: gpb_grpc.GraphServiceStub, resource_type: str,
                     resource_id: str = "") -> set[str]:
    req = gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
        resource_type=resource_type, resource_id=resource_id))
    req.consistency.fully_consistent = True
    out = set()
    for page in graph.ReadRelationships(req, timeout=10):
        if page.HasField("relationship"):
            r = page.relationship
            out.add(f"{r.resource.type}:{r.resource.id}#{r.relation}@{r.subject.type}:"
                    f"{r.subject.id}")
    return out


class TestPeerBugClasses:
    def test_wildcard_with_deny(self, authz: apb_grpc.AuthorizationServiceStub,
                                graph: gpb_grpc.GraphServiceStub) -> None:
        """Class: wildcards combined with deny. Expected: an action wildcard (``*``) grants
        every action of the type but a deny on one action still wins over it; there is
        no subject wildcard — ``user:*`` is refused as an id, never read as "everyone"."""
        assert actions_allowed(authz, "ada", "d_open") == set(ACTIONS)
        assert actions_allowed(authz, "ada", "d_locked") == {"read", "write", "share"}
        bad = gpb.WriteRelationshipsRequest(updates=[update("workspace:w#admin@user:*")])
        with pytest.raises(grpc.RpcError) as info:
            graph.WriteRelationships(bad, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "subject.id" in (info.value.details() or "")
        assert not allowed(authz, "user:someone", "read", "doc:d_open")

    def test_deny_with_ownership_condition(self, authz: apb_grpc.AuthorizationServiceStub
                                           ) -> None:
        """Class: deny with ownership conditions. Expected: a deny on ``not owner`` removes
        every action (``*``) from a member on what they do not own — also on a document
        with no owner at all — while leaving their own documents to the grants; an
        owner's grant does not escape a deny that applies to the resource."""
        assert actions_allowed(authz, "mia", "d_mia") == set(ACTIONS)
        assert actions_allowed(authz, "mia", "d_open") == set()
        assert actions_allowed(authz, "mia", "d_locked") == set()  # nobody owns it
        assert actions_allowed(authz, "ed", "d_open") == set(ACTIONS)  # owner: everything
        assert actions_allowed(authz, "ed", "d_locked") == {"read", "write"}

    def test_cycles_in_parent_chains(self, graph: gpb_grpc.GraphServiceStub) -> None:
        """Class: cycles in role or parent chains. Expected: refused where they are written.
        Parent types forming a cycle (a type its own parent, or two types each other's)
        do not compile; an instance can only take a parent of its type's parent type, so
        an object cannot be its own ancestor (a workspace under a workspace is refused
        INVALID_ARGUMENT); roles never include other roles, so there is no role chain."""
        base = "types:\n  user: {subject: true}\n"
        for text in (base + "  folder: {parent: folder, actions: [view]}\n",
                     base + "  a: {parent: b, actions: [view]}\n  b: {parent: a}\n"):
            with pytest.raises(PolicyError) as info:
                compile_sources([("p.yaml", text)], "cycle")
            assert "parent types form a cycle" in str(info.value)
        for rel in ("workspace:w#parent@workspace:w", "organization:o#parent@doc:d_open"):
            with pytest.raises(grpc.RpcError) as rpc:
                graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[update(rel)]),
                                         timeout=10)
            assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def test_listing_equals_check(self, authz: apb_grpc.AuthorizationServiceStub) -> None:
        """Class: listings returning more or fewer objects than Check allows. Expected:
        ListAccessible, paged one id at a time by cursor and narrowed or not by
        ``within``, lists exactly the documents Check allows, through wildcard grants,
        denies, ownership conditions and attributes missing or present."""
        for user in USERS:
            for action in ACTIONS:
                want = sorted(d for d in DOCS
                              if allowed(authz, f"user:{user}", action, f"doc:{d}"))
                for within in (None, "workspace:w", "organization:o"):
                    got: list[str] = []
                    cursor = ""
                    for _ in range(len(DOCS) + 2):
                        req = apb.ListAccessibleRequest(subject=ref(f"user:{user}"),
                                                        resource_type="doc", action=action,
                                                        page_size=1, cursor=cursor)
                        if within:
                            req.within.CopyFrom(ref(within))
                        parts = list(authz.ListAccessible(req, timeout=10))
                        got.extend(i for p in parts for i in p.resource_ids)
                        cursor = parts[-1].next_cursor
                        if parts[-1].complete:
                            break
                    assert got == want, (user, action, within)

    def test_oversized_write_is_refused_whole(self, graph: gpb_grpc.GraphServiceStub) -> None:
        """Class: an oversized write answered OK though it failed. Expected: a batch over
        the limit (1,000 updates), an object whose attributes are too large, or a batch
        whose last update is invalid, fails INVALID_ARGUMENT and writes nothing."""
        big = gpb.WriteRelationshipsRequest(updates=[
            update(f"workspace:w#viewer@user:bulk{i}") for i in range(1001)])
        assert code_of(lambda: graph.WriteRelationships(big, timeout=10)) == \
            grpc.StatusCode.INVALID_ARGUMENT
        last_bad = gpb.WriteRelationshipsRequest(updates=[
            update("workspace:w#viewer@user:half1"), update("workspace:w#nosuch@user:half2")])
        assert code_of(lambda: graph.WriteRelationships(last_bad, timeout=10)) == \
            grpc.StatusCode.INVALID_ARGUMENT
        attrs = Struct()
        attrs.update({"score": 1.0, "label": "x" * (70 << 10)})
        huge = gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
            operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref("doc:d_score"),
            attributes=attrs)])
        assert code_of(lambda: graph.WriteObjects(huge, timeout=10)) == \
            grpc.StatusCode.INVALID_ARGUMENT
        held = relationships_of(graph, "workspace", "w")
        assert not any("bulk" in r or "half" in r for r in held)
        read = graph.ReadObject(gpb.ReadObjectRequest(object=ref("doc:d_score")), timeout=10)
        assert dict(read.attributes) == {"score": 7.0, "archived": False}

    def test_duplicate_items_in_one_batch(self, authz: apb_grpc.AuthorizationServiceStub,
                                          graph: gpb_grpc.GraphServiceStub,
                                          usage: upb_grpc.UsageServiceStub) -> None:
        """Class: duplicate items in one batch. Expected: a write naming one relationship
        twice (touched twice, or touched and deleted) is refused INVALID_ARGUMENT and
        writes nothing; CheckBulk answers every item, duplicates alike, in order; a
        RecordUsage call carrying one event id twice counts it once."""
        for second in (gpb.RelationshipUpdate.OPERATION_TOUCH,
                       gpb.RelationshipUpdate.OPERATION_DELETE):
            req = gpb.WriteRelationshipsRequest(updates=[
                update("workspace:w#viewer@user:dup"), update("workspace:w#viewer@user:dup",
                                                              second)])
            assert code_of(lambda req=req: graph.WriteRelationships(req, timeout=10)) == \
                grpc.StatusCode.INVALID_ARGUMENT
        assert "workspace:w#viewer@user:dup" not in relationships_of(graph, "workspace", "w")
        item = apb.CheckRequest(subject=ref("user:ada"), action="delete",
                                resource=ref("doc:d_locked"))
        allow = apb.CheckRequest(subject=ref("user:ada"), action="read",
                                 resource=ref("doc:d_locked"))
        resp = authz.CheckBulk(apb.CheckBulkRequest(items=[item, allow, item, item]),
                               timeout=10)
        assert [r.response.decision for r in resp.results] == [
            apb.DECISION_DENY, apb.DECISION_ALLOW, apb.DECISION_DENY, apb.DECISION_DENY]
        before = _credits(usage)
        event = upb.UsageEvent(event_id="dup-1", workspace_id="w", metric="credits", amount=2)
        answer = usage.RecordUsage(upb.RecordUsageRequest(organization_id="o",
                                                          events=[event, event]), timeout=10)
        assert _credits(usage) == before + 2
        assert [r.duplicate for r in answer.results] == [False, True]

    def test_identifiers_differing_by_case_or_normalisation(
            self, authz: apb_grpc.AuthorizationServiceStub,
            graph: gpb_grpc.GraphServiceStub, usage: upb_grpc.UsageServiceStub) -> None:
        """Class: identifiers differing only by case or Unicode normalisation. Expected:
        ids are ASCII and case-sensitive — ``user:Vic`` is not ``user:vic`` — and any
        non-ASCII id (composed or decomposed accents, fullwidth letters) is refused
        INVALID_ARGUMENT naming the field, so no two spellings are ever conflated;
        type names are lower-case only (``Doc`` is refused, not folded to ``doc``).
        Seats are counted by email with case and surrounding spaces folded (as the docs
        say), emails differing in Unicode normalisation count apart, and an email that
        reads like a subject key is never the subject counted as itself."""
        before = _metric(usage, "people").value
        for user, email in (("yan", None), ("zed", "user:yan"), ("ann1", "Ann@X.example"),
                            ("ann2", " ann@x.example "), ("jo1", "jos\u00e9@x.example"),
                            ("jo2", "jose\u0301@x.example")):
            if email is not None:
                attrs = Struct()
                attrs.update({"email": email})
                graph.WriteObjects(gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
                    operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref(f"user:{user}"),
                    attributes=attrs)]), timeout=10)
            graph.WriteRelationships(gpb.WriteRelationshipsRequest(
                updates=[update(f"workspace:w#viewer@user:{user}")]), timeout=10)
        # yan, zed, ann (once), jos\u00e9 and jose\u0301: five more people
        assert _metric(usage, "people").value == before + 5
        assert allowed(authz, "user:vic", "read", "doc:d_open")
        assert not allowed(authz, "user:Vic", "read", "doc:d_open")
        assert not allowed(authz, "user:VIC", "read", "doc:d_open")
        for subject_id in ("v\u00e9c", "ve\u0301c", "\uff56ic", "vic\u200b"):
            req = apb.CheckRequest(subject=apb.ObjectReference(type="user", id=subject_id),
                                   action="read", resource=ref("doc:d_open"))
            with pytest.raises(grpc.RpcError) as info:
                authz.Check(req, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "subject.id" in (info.value.details() or "")
            write = gpb.WriteRelationshipsRequest(updates=[gpb.RelationshipUpdate(
                operation=gpb.RelationshipUpdate.OPERATION_TOUCH,
                relationship=gpb.Relationship(resource=ref("workspace:w"), relation="viewer",
                                              subject=apb.ObjectReference(type="user",
                                                                          id=subject_id)))])
            assert code_of(lambda write=write: graph.WriteRelationships(write, timeout=10)) \
                == grpc.StatusCode.INVALID_ARGUMENT
        upper = apb.CheckRequest(subject=ref("user:vic"), action="read",
                                 resource=apb.ObjectReference(type="Doc", id="d_open"))
        assert code_of(lambda: authz.Check(upper, timeout=10)) == \
            grpc.StatusCode.INVALID_ARGUMENT

    def test_integer_overflow_in_counters_and_limits(
            self, usage: upb_grpc.UsageServiceStub,
            authz: apb_grpc.AuthorizationServiceStub) -> None:
        """Class: integer overflow in counters and limits. Expected: a summed counter
        driven past 2^53 saturates at exactly 2^53 (never wraps, goes negative or turns
        inexact), a limit of 2^53 compares exactly against it, one event over the
        largest amount is refused INVALID_ARGUMENT, a plan limit above 2^53 does not
        compile, and a page size of 2^32-1 is refused rather than truncated."""
        top = float(2**53)
        for call in range(10):
            events = [upb.UsageEvent(event_id=f"big-{call}-{i}", workspace_id="w",
                                     metric="credits", amount=1e12) for i in range(1000)]
            usage.RecordUsage(upb.RecordUsageRequest(organization_id="o", events=events),
                              timeout=30)
        credits = _metric(usage, "credits")
        assert credits.value == top
        assert credits.limit == top and not credits.over
        limit = usage.CheckLimit(upb.CheckLimitRequest(
            organization_id="o", record=upb.RecordAmount(workspace_id="w", metric="credits",
                                                         amount=1)), timeout=10)
        assert not limit.allowed
        bad = upb.UsageEvent(event_id="too-big", workspace_id="w", metric="credits",
                             amount=1e13)
        assert code_of(lambda: usage.RecordUsage(upb.RecordUsageRequest(
            organization_id="o", events=[bad]), timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
        text = (ROOT / POLICY / "policy.yaml").read_text().replace(
            "credits: 9007199254740992", "credits: 9007199254740993")
        with pytest.raises(PolicyError) as info:
            compile_sources([("policy.yaml", text)], "peer")
        assert "at most 9007199254740992" in str(info.value)
        page = apb.ListAccessibleRequest(subject=ref("user:ada"), resource_type="doc",
                                         action="read", page_size=2**32 - 1)
        assert code_of(lambda: list(authz.ListAccessible(page, timeout=10))) == \
            grpc.StatusCode.INVALID_ARGUMENT

    def test_condition_errors_deny(self, authz: apb_grpc.AuthorizationServiceStub) -> None:
        """Class: caveat/condition evaluation errors treated as allow. Expected: a
        condition reading a missing attribute (under ``!=`` or ``not``), a context value
        of the wrong type or none at all, denies; NaN is refused at the edge
        INVALID_ARGUMENT naming the field, and inside the engine compares with nothing,
        so ``!=``, ``not in`` and ``not`` cannot turn it into an allow."""
        assert allowed(authz, "user:vic", "share", "doc:d_score")  # score 7 != 5
        assert not allowed(authz, "user:vic", "share", "doc:d_open")  # no score
        assert allowed(authz, "user:vic", "write", "doc:d_score")  # archived: false
        assert not allowed(authz, "user:vic", "write", "doc:d_open")  # archived missing
        assert allowed(authz, "user:vic", "edit", "workspace:w", {"level": 5})
        for ctx in ({}, {"level": "9"}, {"level": True}, {"level": None}, {"level": [9]}):
            assert not allowed(authz, "user:vic", "edit", "workspace:w", ctx), ctx
        req = apb.CheckRequest(subject=ref("user:vic"), action="edit",
                               resource=ref("workspace:w"))
        req.context.update({"level": math.nan})
        with pytest.raises(grpc.RpcError) as info:
            authz.Check(req, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "context.level" in (info.value.details() or "")
        # In process (a caller of the engine that skips the edge), NaN still denies.
        text = "types:\n  user: {subject: true}\n  doc:\n    roles: [viewer]\n" \
               "    actions: [read]\npermissions:\n  doc:\n" \
               "    - {actions: [read], roles: [doc.viewer], when: 'context.x != 5'}\n" \
               "    - {actions: [read], roles: [doc.viewer], when: 'context.x not in [1]'}\n" \
               "    - {actions: [read], roles: [doc.viewer], when: {not: 'context.x < 1'}}\n"
        policy = compile_sources([("p.yaml", text)], "nan")
        rel = Relationship.parse("doc:d#viewer@user:u")
        index = GraphIndex.from_snapshot(Snapshot(1, (), (rel,)))
        assert engine.check(policy, index, "user:u", "read", "doc", "doc:d", {"x": 7})
        for value in (math.nan, -math.nan):
            assert not engine.check(policy, index, "user:u", "read", "doc", "doc:d",
                                    {"x": value})
            assert not engine.explain(policy, index, "user:u", "read", "doc", "doc:d",
                                      {"x": value}).allowed


def _metric(usage: upb_grpc.UsageServiceStub, name: str) -> upb.MetricUsage:
    req = upb.ComputeUsageRequest(organization_id="o", metrics=[name])
    req.consistency.fully_consistent = True
    resp = usage.ComputeUsage(req, timeout=10)
    return resp.metrics[0]


def _credits(usage: upb_grpc.UsageServiceStub) -> float:
    return _metric(usage, "credits").value
