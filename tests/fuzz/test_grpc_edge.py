"""Fuzzing at the gRPC edge: every RPC of every service, over real gRPC, with generated
requests (``tests.fuzz.messages``) and wire-level damage.

Asserted for every case, on a real ``gatehouse serve`` process on loopback:

- the status is OK or a documented refusal (INVALID_ARGUMENT naming a field of the
  request — per item in CheckBulk —, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION,
  PERMISSION_DENIED, RESOURCE_EXHAUSTED); never UNKNOWN, INTERNAL or a deadline
  passed (every call has a generous one);
- a refused call wrote nothing: the store's revision, read fully consistent, is the
  same after it, and so are the recorded usage counters;
- the server answers on: each write's case ends with that read (each read method's
  cases, together), and the process's log holds no traceback when the module ends.

Passes: the memory store on the core and the aio transport, then one Redis pass with
fewer examples. ``make test`` runs a fixed, derandomized set; ``GATEHOUSE_FUZZ_EXAMPLES``
(``make fuzz``) sets the examples per RPC of the first pass, the others scaled down.
"""

from __future__ import annotations

import base64
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse.transport.base import UNARY_MESSAGE_COUNT
from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import tenancy_pb2 as tpb
from gatehouse.v1 import usage_pb2 as upb
from tests.conftest import ServerProcess, start_on_store
from tests.fuzz.messages import METHODS, Method, Seeds, messages, raw_requests

EXAMPLES = int(os.environ.get("GATEHOUSE_FUZZ_EXAMPLES", "0"))
# (store, transport, examples per RPC for generated requests, for raw bytes)
PASSES = {
    "memory-core": ("memory", "core", 25, 8),
    "memory-aio": ("memory", "aio", 10, 4),
    "redis-core": ("redis", "core", 4, 2),
}
CALL_SECONDS = 20.0
"""Every call's deadline: generous, so that a DEADLINE_EXCEEDED means the server hung."""
WATCH_SETTLE = 0.3
"""A Watch still open this long after it started was accepted (it streams until cancelled)."""

DATA = "tests/testdata/usage/billing.data.yaml"
REFUSALS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED,
})
WRITERS = frozenset({
    "WriteRelationships", "DeleteRelationships", "WriteObjects", "CreateOrganization",
    "CreateWorkspace", "RenameWorkspace", "DeleteWorkspace", "InviteMember",
    "AcceptInvitation", "RevokeInvitation", "ResendInvitation", "SetRole", "RemoveMember",
    "CreateAccessLink", "RedeemAccessLink", "DeleteAccessLink", "MoveResource", "AddDomain",
    "JoinByDomain",
})
USAGE_ORGS = ("example", "acct")
METHOD = {m.name: m for m in METHODS}
# A field path as the service names it: ``items[3].context.x[0]``, ``context.['a b']``.
_PATH = re.compile(r"[a-z_][a-z0-9_]*(?:\[\d+\])*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|\[.+?\])"
                   r"(?:\[\d+\])*)*")


def budget(pass_name: str, raw: bool) -> int:
    base = PASSES[pass_name][3 if raw else 2]
    if not EXAMPLES:
        return base
    return max(base, EXAMPLES * base // PASSES["memory-core"][3 if raw else 2])


@dataclass(frozen=True, slots=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    responses: tuple[bytes, ...]
    streaming: bool = False  # a Watch that was still open (accepted) when cancelled


@dataclass
class Edge:
    """A served process, a channel to it, and what the fuzzer knows about its state."""

    name: str
    server: ServerProcess
    channel: grpc.Channel
    seeds: Seeds
    head: str
    usage: dict[str, bytes] = field(default_factory=dict)
    cases: int = 0

    def unary(self, method: str, request: Message, response: type[Message]) -> Message:
        raw = self.channel.unary_unary(method)(request.SerializeToString(),
                                               timeout=CALL_SECONDS)
        return response.FromString(raw)

    def read_head(self) -> str:
        """The store's revision, read fully consistent (and proof the server answers)."""
        stream = self.channel.unary_stream("/gatehouse.v1.GraphService/ReadRelationships")(
            gpb.ReadRelationshipsRequest(
                filter=gpb.RelationshipFilter(resource_type="organization"), page_size=1,
                consistency=apb.Consistency(fully_consistent=True)).SerializeToString(),
            timeout=CALL_SECONDS)
        last = gpb.ReadRelationshipsResponse.FromString(list(stream)[-1])
        return last.revision

    def usage_of(self, org: str) -> bytes:
        """The recorded metrics of ``org`` this month and last (what a refused
        RecordUsage must leave alone)."""
        out = b""
        for period in _periods():
            resp = self.unary("/gatehouse.v1.UsageService/ComputeUsage",
                              upb.ComputeUsageRequest(
                                  organization_id=org, period=period,
                                  metrics=["llm_credits", "ai_insights_generations",
                                           "source_import_rows"]),
                              upb.ComputeUsageResponse)
            assert isinstance(resp, upb.ComputeUsageResponse)
            for m in resp.metrics:
                out += f"{period} {m.name} {m.value!r} {sorted(m.by_workspace.items())}\n" \
                    .encode()
        return out


def _periods() -> tuple[str, str]:
    now = time.gmtime()
    year, month = (now.tm_year, now.tm_mon - 1) if now.tm_mon > 1 else (now.tm_year - 1, 12)
    return time.strftime("%Y-%m", now), f"{year:04}-{month:02}"


def _harvest(edge: Edge) -> Seeds:
    """Real cursors, tokens and revisions to forge from and replay across queries."""
    owner = apb.ObjectReference(type="user", id="owner")
    tokens = []
    for scope in (apb.ObjectReference(type="organization", id="example"),
                  apb.ObjectReference(type="workspace", id="a")):
        invite = edge.unary("/gatehouse.v1.TenancyService/InviteMember", tpb.InviteMemberRequest(
            actor=owner, scope=scope, email="fuzz-invitee@example.com",
            role="owner" if scope.type == "organization" else "guest"),
            tpb.InviteMemberResponse)
        assert isinstance(invite, tpb.InviteMemberResponse)
        tokens.append(invite.token)
    link = edge.unary("/gatehouse.v1.TenancyService/CreateAccessLink",
                      tpb.CreateAccessLinkRequest(actor=owner, workspace_id="a",
                                                  source_type="asana"),
                      tpb.CreateAccessLinkResponse)
    assert isinstance(link, tpb.CreateAccessLinkResponse)
    tokens.append(link.token)
    cursors = []
    listing = edge.channel.unary_stream("/gatehouse.v1.AuthorizationService/ListAccessible")(
        apb.ListAccessibleRequest(subject=owner, resource_type="connection", action="use",
                                  page_size=1).SerializeToString(), timeout=CALL_SECONDS)
    cursors.append(apb.ListAccessibleResponse.FromString(list(listing)[-1]).next_cursor)
    reading = edge.channel.unary_stream("/gatehouse.v1.GraphService/ReadRelationships")(
        gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(resource_type="workspace"),
                                     page_size=1).SerializeToString(), timeout=CALL_SECONDS)
    cursors.append(gpb.ReadRelationshipsResponse.FromString(list(reading)[-1]).next_cursor)
    assert all(cursors)
    head = int(edge.read_head())
    return Seeds(cursors=tuple(cursors), tokens=tuple(tokens),
                 revisions=("0", "1", str(head), str(max(0, head - 1))),
                 extra={"invitation_id": tuple(t.split(".", 1)[0] for t in tokens[:2]),
                        "link_id": (tokens[2].split(".", 1)[0],)})


@pytest.fixture(scope="module", params=list(PASSES))
def edge(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Edge]:
    store, transport, _, _ = PASSES[request.param]
    proc = start_on_store(request, tmp_path_factory, store, "--policy", "policies/coupler",
                          "--data", DATA, "--transport", transport)
    channel = proc.channel()
    edge = Edge(request.param, proc, channel, Seeds(), "")
    edge.seeds = _harvest(edge)
    edge.head = edge.read_head()
    yield edge
    print(f"\n{request.param}: {edge.cases} fuzz cases")
    alive = proc.proc.poll() is None
    proc.stop()
    logs = proc.logs()
    assert alive, f"the server died during the {request.param} pass:\n{logs[-4000:]}"
    assert "Traceback" not in logs, logs[logs.index("Traceback") - 2000:][:6000]


# -- calling ---------------------------------------------------------------------------


def invoke(channel: grpc.Channel, method: Method, raw: bytes) -> Outcome:
    """Call ``method`` with request bytes ``raw`` (unvalidated by the client)."""
    if not method.server_streaming:
        try:
            return Outcome(grpc.StatusCode.OK, "", (channel.unary_unary(method.path)(
                raw, timeout=CALL_SECONDS),))
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details() or "", ())
    call = channel.unary_stream(method.path)(raw, timeout=CALL_SECONDS)
    if method.name == "Watch":
        done = threading.Event()
        call.add_done_callback(lambda *_: done.set())
        if not done.wait(WATCH_SETTLE):
            call.cancel()
            return Outcome(grpc.StatusCode.OK, "", (), streaming=True)
    got: list[bytes] = []
    try:
        for message in call:
            got.append(message)
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "", tuple(got))
    return Outcome(grpc.StatusCode.OK, "", tuple(got))


_FREE_FORM = ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue")


def names_a_field(details: str, desc: Descriptor) -> bool:
    """``details`` starts with a path that exists in the request: fields through nested
    messages (``items[2].subject.type``), then anything inside a Struct (its keys), a
    oneof's name (``change``) optionally followed by a field of one of its members, or
    ``request`` for the whole message."""
    match = _PATH.match(details)
    if match is None or not details[match.end():].startswith(":"):
        return False
    parts = [re.sub(r"\[\d+\]$", "", p) for p in
             re.findall(r"(?:[^.\[]+|\[[^\]]*\])+", match.group(0))]
    parts = [re.sub(r"(\[\d+\])+$", "", p) for p in parts]
    if parts == ["request"]:
        return True
    current: Descriptor | None = desc
    for i, part in enumerate(parts):
        if current is None or current.full_name in _FREE_FORM:
            return True
        if part in current.oneofs_by_name:
            members = current.oneofs_by_name[part].fields
            rest = parts[i + 1:i + 2]
            return not rest or any(f.message_type is not None
                                   and rest[0] in f.message_type.fields_by_name
                                   for f in members)
        fd = current.fields_by_name.get(part)
        if fd is None:
            return False
        current = fd.message_type
    return True


def assert_documented(method: Method, outcome: Outcome, request: Message | None) -> None:
    """A documented status, a field named when the input is at fault, a bounded message."""
    code, details = outcome.code, outcome.details
    assert code == grpc.StatusCode.OK or code in REFUSALS, \
        f"{method} answered {code.name}: {details[:300]!r}"
    assert len(details) <= 1100
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert names_a_field(details, method.request.DESCRIPTOR), \
            f"{method}: INVALID_ARGUMENT names no field: {details[:300]!r}"
    elif code != grpc.StatusCode.OK:
        assert details, f"{method} answered {code.name} without a reason"
    if code != grpc.StatusCode.OK:
        return
    responses = [method.response.FromString(r) for r in outcome.responses]
    if method.name == "CheckBulk" and isinstance(request, apb.CheckBulkRequest):
        (resp,) = responses
        assert isinstance(resp, apb.CheckBulkResponse)
        assert len(resp.results) == len(request.items)
        for i, item in enumerate(resp.results):
            if item.WhichOneof("result") == "error":
                status = grpc.StatusCode(next(c for c in grpc.StatusCode
                                              if c.value[0] == item.error.code))
                assert status in REFUSALS, f"CheckBulk item {i}: {status.name}"
                assert item.error.message.startswith(f"items[{i}]"), item.error.message
            else:
                assert item.WhichOneof("result") == "response"
                assert item.response.decision in (apb.DECISION_ALLOW, apb.DECISION_DENY)
    if method.name in ("ListAccessible", "ReadRelationships") and not outcome.streaming:
        last = responses[-1]
        assert last.revision  # type: ignore[attr-defined]
        assert bool(last.next_cursor) != bool(last.complete)  # type: ignore[attr-defined]


def exercise(edge: Edge, method: Method, raw: bytes, request: Message | None) -> None:
    """One case: the call, its status, and the store unchanged unless it succeeded."""
    usage_org = None
    if method.name == "RecordUsage" and isinstance(request, upb.RecordUsageRequest) \
            and request.organization_id in USAGE_ORGS:
        usage_org = request.organization_id
        edge.usage[usage_org] = edge.usage_of(usage_org)
    outcome = invoke(edge.channel, method, raw)
    edge.cases += 1
    assert_documented(method, outcome, request)
    if method.name not in WRITERS and usage_org is None:
        return  # a read: the test checks the revision once, after all its cases
    head = edge.read_head()
    if outcome.code != grpc.StatusCode.OK:
        assert head == edge.head, f"{method} refused ({outcome.code.name}: " \
            f"{outcome.details[:200]!r}) but the revision moved {edge.head} -> {head}"
        if usage_org is not None:
            assert edge.usage_of(usage_org) == edge.usage[usage_org], \
                f"RecordUsage refused ({outcome.details[:200]!r}) but counted"
    elif head != edge.head:
        assert method.name in WRITERS, f"{method} is a read, yet the revision moved"
    edge.head = head


def settled(edge: Edge, method: Method) -> None:
    """After a method's cases: the server answers, and a read method wrote nothing."""
    head = edge.read_head()
    if method.name not in WRITERS:
        assert head == edge.head, f"{method} is a read, yet the revision moved"
    edge.head = head


# -- the tests ---------------------------------------------------------------------------

FUZZ = settings(deadline=None, database=None, derandomize=EXAMPLES == 0,
                suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.mark.parametrize("method", METHODS, ids=str)
class TestEveryRpc:
    def test_generated_requests(self, edge: Edge, method: Method) -> None:
        """Requests generated from the proto (hostile strings, numbers at their limits,
        unknown enums, deep and wide Structs, forged cursors and tokens) get a documented
        status, name the field they refuse, and write nothing when refused."""
        @settings(FUZZ, max_examples=budget(edge.name, raw=False))
        @given(messages(method.request.DESCRIPTOR, edge.seeds))
        def case(request: Message) -> None:
            exercise(edge, method, request.SerializeToString(), request)

        case()
        settled(edge, method)

    def test_raw_bytes(self, edge: Edge, method: Method) -> None:
        """Bytes protobuf never writes — unknown fields, wrong wire types, strings that
        are not UTF-8, truncated and random bytes — are refused INVALID_ARGUMENT
        (``request:``) or read as the message they still parse to; never INTERNAL."""
        desc = method.request.DESCRIPTOR

        def valid() -> st.SearchStrategy[bytes]:
            return messages(desc, edge.seeds).map(lambda m: m.SerializeToString())

        @settings(FUZZ, max_examples=budget(edge.name, raw=True))
        @given(raw_requests(desc, valid))
        def case(raw: bytes) -> None:
            try:
                request: Message | None = method.request.FromString(raw)
            except DecodeError:
                request = None
            exercise(edge, method, raw, request)

        case()
        settled(edge, method)

    def test_empty_request(self, edge: Edge, method: Method) -> None:
        """The empty message (every field at its default, zero bytes on the wire) gets a
        documented status — for most methods INVALID_ARGUMENT naming the first required
        field — and writes nothing."""
        exercise(edge, method, b"", method.request())
        settled(edge, method)

    @pytest.mark.parametrize("count", [0, 2, 3])
    def test_zero_or_several_request_messages(self, edge: Edge, method: Method,
                                              count: int) -> None:
        """A unary-request method sent none or several messages (a raw streaming call) is
        INVALID_ARGUMENT saying so, and nothing is written."""
        request = method.request().SerializeToString()
        with pytest.raises(grpc.RpcError) as info:
            if method.server_streaming:
                list(edge.channel.stream_stream(method.path)(iter([request] * count),
                                                             timeout=CALL_SECONDS))
            else:
                edge.channel.stream_unary(method.path)(iter([request] * count),
                                                       timeout=CALL_SECONDS)
        err = info.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
        assert err.details().startswith(UNARY_MESSAGE_COUNT)
        head = edge.read_head()
        assert head == edge.head


class TestFindings:
    """The cases the fuzzer found, kept as they were found (docs/reliability/fuzzing.md)."""

    def test_a_revision_the_store_never_issued_is_refused_at_once(self, edge: Edge) -> None:
        """at_least_as_fresh past the store's head, a well-formed cursor carrying one, and
        Watch after one: FAILED_PRECONDITION naming the field, long before the deadline
        (they used to hold the call until its deadline, or Watch for 10 s)."""
        future = str(int(edge.head) + 1000)
        check = apb.CheckRequest(subject=apb.ObjectReference(type="user", id="user1"),
                                 action="view",
                                 resource=apb.ObjectReference(type="workspace", id="a"),
                                 consistency=apb.Consistency(at_least_as_fresh=future))
        listing = apb.ListAccessibleRequest(
            subject=apb.ObjectReference(type="user", id="owner"), resource_type="connection",
            action="use", page_size=1)
        first = apb.ListAccessibleResponse.FromString(list(edge.channel.unary_stream(
            METHOD["ListAccessible"].path)(listing.SerializeToString(),
                                           timeout=CALL_SECONDS))[-1])
        raw = base64.urlsafe_b64decode(first.next_cursor + "=" * (-len(first.next_cursor) % 4))
        version, tag, _, *position = raw.decode().split("\x1f")
        listing.cursor = base64.urlsafe_b64encode("\x1f".join(
            [version, tag, future, *position]).encode()).decode().rstrip("=")
        for method, request, named in [
            (METHOD["Check"], check, "consistency.at_least_as_fresh"),
            (METHOD["CheckBulk"], apb.CheckBulkRequest(
                items=[check], consistency=check.consistency), "consistency.at_least_as_fresh"),
            (METHOD["ListAccessible"], listing, "cursor"),
            (METHOD["Watch"], gpb.WatchRequest(after_revision=future), "after_revision"),
        ]:
            outcome = invoke(edge.channel, method, request.SerializeToString())
            assert outcome.code == grpc.StatusCode.FAILED_PRECONDITION, (method, outcome)
            assert outcome.details.startswith(
                f"{named}: revision {future} is ahead of the store"), outcome.details

    def test_listaccessible_names_resource_type(self, edge: Edge) -> None:
        """A ListAccessible without resource_type names ``resource_type`` (it named
        ``resource.type``, a field the request does not have)."""
        outcome = invoke(edge.channel, METHOD["ListAccessible"], apb.ListAccessibleRequest(
            subject=apb.ObjectReference(type="user", id="user1"),
            action="view").SerializeToString())
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
        assert outcome.details == "resource_type: is required"

    def test_a_struct_key_outside_ascii_is_quoted_in_the_path(self, edge: Edge) -> None:
        """A Struct key that is a non-ASCII identifier ('\u00aa', a Cyrillic a) is quoted in
        the refused path, so the path reads unambiguously (it was written bare)."""
        request = tpb.RedeemAccessLinkRequest(token="x")
        request.attributes.fields["\u00aa"].number_value = float("nan")
        request.attributes.fields["\u0430"].number_value = float("inf")
        outcome = invoke(edge.channel, METHOD["RedeemAccessLink"],
                         request.SerializeToString())
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
        assert outcome.details.startswith(("attributes.['\u00aa']: nan is not a finite",
                                           "attributes.['\u0430']: inf is not a finite"))
        assert names_a_field(outcome.details, tpb.RedeemAccessLinkRequest.DESCRIPTOR)
