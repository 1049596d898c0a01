"""Fail closed when something inside breaks: injected faults in the engine, the
stores, the authenticator and tenant filtering.

The real gatehouse ``Server`` runs in this process (both transports) with real
API keys, on a memory graph store and usage store and a compiled policy that
each carry a switch (``Faults``): when a fault is armed, that part raises an
exception nobody planned for. A double at this seam is the point: what is
under test is the server's reaction. Expected: every Check, CheckBulk item,
ListAccessible, read, usage and tenancy call answers an error or a deny,
never an allow, a partial or unfiltered listing, or a write; the other items
of a CheckBulk are still answered; and once the fault is gone the same server
answers normally.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from gatehouse.auth.keys import load_keys
from gatehouse.graph.bootstrap import load_data
from gatehouse.graph.memory import MemoryGraphStore
from gatehouse.policy.loader import load_policy
from gatehouse.policy.model import CompiledPolicy
from gatehouse.runtime import Runtime
from gatehouse.server import Server, ServerConfig
from gatehouse.transport import open_transport
from gatehouse.usage.memory import MemoryUsageStore
from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import graph_pb2_grpc as gpb_grpc
from gatehouse.v1 import tenancy_pb2 as tpb
from gatehouse.v1 import tenancy_pb2_grpc as tpb_grpc
from gatehouse.v1 import usage_pb2 as upb
from gatehouse.v1 import usage_pb2_grpc as upb_grpc
from tests.conftest import ROOT
from tests.e2e.test_graph_service import ref, update

OK = grpc.StatusCode.OK
ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
"""What a call broken by a fault may answer (never OK, never a domain answer)."""
KEY = "gh_failclosed_unbound_0123456789"
BOUND = "gh_failclosed_northwind_0123456789"


class Injected(RuntimeError):
    """The fault: an exception no code path expects."""


class Faults:
    """Which parts are broken right now (set from the test thread, read anywhere)."""

    def __init__(self) -> None:
        self._armed: frozenset[str] = frozenset()

    def arm(self, *names: str) -> None:
        self._armed = frozenset(names)

    def clear(self) -> None:
        self._armed = frozenset()

    def hit(self, name: str) -> None:
        if name in self._armed:
            raise Injected(f"injected fault: {name}")


class FaultyMapping(Mapping[Any, Any]):
    """A mapping whose look-ups of some keys raise while ``fault`` is armed."""

    def __init__(self, inner: Mapping[Any, Any], faults: Faults, fault: str,
                 keys: frozenset[Any] | None = None) -> None:
        self.inner, self.faults, self.fault, self.keys = inner, faults, fault, keys

    def _hit(self, key: Any) -> None:
        if self.keys is None or key in self.keys:
            self.faults.hit(self.fault)

    def __getitem__(self, key: Any) -> Any:
        self._hit(key)
        return self.inner[key]

    def get(self, key: Any, default: Any = None) -> Any:
        self._hit(key)
        return self.inner.get(key, default)

    def __contains__(self, key: object) -> bool:
        self._hit(key)
        return key in self.inner

    def __iter__(self) -> Iterator[Any]:
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


class FaultyStore(MemoryGraphStore):
    def __init__(self, faults: Faults) -> None:
        super().__init__()
        self.faults = faults

    async def write(self, ops: Any, preconditions: Any = (), rules: Any = None) -> Any:
        self.faults.hit("store.write")
        if rules is not None and isinstance(rules.scope_kind, FaultyMapping):
            # The "tenants" fault breaks tenant filtering, not the store's own rules.
            rules = dataclasses.replace(rules, scope_kind=rules.scope_kind.inner)
        return await super().write(ops, preconditions, rules)

    def write_soon(self, ops: Any, preconditions: Any, rules: Any, done: Any) -> None:
        self.faults.hit("store.write")  # the short path of WriteRelationships
        if rules is not None and isinstance(rules.scope_kind, FaultyMapping):
            rules = dataclasses.replace(rules, scope_kind=rules.scope_kind.inner)
        super().write_soon(ops, preconditions, rules, done)

    async def head_revision(self) -> int:
        self.faults.hit("store.head")
        return await super().head_revision()

    async def head(self) -> tuple[str, int]:  # what a fully consistent read asks
        self.faults.hit("store.head")
        return await super().head()


class FaultyUsage(MemoryUsageStore):
    def __init__(self, faults: Faults) -> None:
        super().__init__()
        self.faults = faults

    async def record(self, *args: Any, **kwargs: Any) -> bool:
        self.faults.hit("usage.record")
        return await super().record(*args, **kwargs)

    def record_soon(self, *args: Any, **kwargs: Any) -> None:
        self.faults.hit("usage.record")  # the short path of RecordUsage
        super().record_soon(*args, **kwargs)

    async def counters(self, *args: Any, **kwargs: Any) -> Any:
        self.faults.hit("usage.counters")
        return await super().counters(*args, **kwargs)


def faulty_policy(policy: CompiledPolicy, faults: Faults) -> CompiledPolicy:
    """The compiled policy, with engine tables that break for dashboards and
    organizations ("engine") and tenant kinds that break for data flows ("tenants")."""
    tables = FaultyMapping(policy.tables, faults, "engine",
                           frozenset({"dashboard", "organization"}))
    kinds = FaultyMapping(policy.write_rules.scope_kind, faults, "tenants",
                          frozenset({"data_flow"}))
    rules = dataclasses.replace(policy.write_rules, scope_kind=kinds)
    return dataclasses.replace(policy, tables=tables, write_rules=rules)


@dataclass
class Served:
    faults: Faults
    server: Server
    channel: grpc.Channel

    def __post_init__(self) -> None:
        self.authz = apb_grpc.AuthorizationServiceStub(self.channel)
        self.graph = gpb_grpc.GraphServiceStub(self.channel)
        self.usage = upb_grpc.UsageServiceStub(self.channel)
        self.tenancy = tpb_grpc.TenancyServiceStub(self.channel)


def _keys(tmp: Path) -> Path:
    path = tmp / "keys.yaml"
    lines = ["keys:"]
    for name, key, orgs in (("ops", KEY, None), ("northwind", BOUND, "[northwind]")):
        lines += [f"  - name: {name}", f"    sha256: {hashlib.sha256(key.encode()).hexdigest()}",
                  "    scopes: [check, read, write, admin]"]
        if orgs:
            lines.append(f"    organizations: {orgs}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module", params=["core", "aio"])
def served(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The real server in this process, on its own event-loop thread, with faults."""
    faults = Faults()
    keys_path = _keys(tmp_path_factory.mktemp("keys"))
    table = load_keys(keys_path)
    table = dataclasses.replace(table, by_digest=FaultyMapping(table.by_digest, faults, "auth"))
    config = ServerConfig(listen="127.0.0.1:0", policy_dir=ROOT / "policies/coupler",
                          watch_policy=False, transport=request.param, api_keys=keys_path)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def build() -> Server:
        policy = faulty_policy(load_policy(config.policy_dir), faults)
        store = FaultyStore(faults)
        await load_data(store, policy, ROOT / "examples/coupler.data.yaml")
        runtime = await Runtime.start(policy, store, None, FaultyUsage(faults))
        transport = await open_transport(config.transport)
        server = Server(config, runtime, transport, keys=table)
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(build(), loop).result(60)
    assert server.grpc.name == request.param
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield Served(faults, server, channel)
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def md(key: str = KEY) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def outcome(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, Any]:
    try:
        return OK, "", call()
    except grpc.RpcError as err:
        return err.code(), err.details() or "", None


def check_req(resource: str, subject: str = "user:olivia", action: str = "view", *,
              explain: bool = False, fully: bool = False) -> apb.CheckRequest:
    req = apb.CheckRequest(subject=ref(subject), action=action, resource=ref(resource),
                           explain=explain)
    if fully:
        req.consistency.fully_consistent = True
    return req


DASHBOARD = "dashboard:acme-overview"
FLOW = "data_flow:acme-sales-pipeline"


@pytest.fixture(autouse=True)
def _disarmed(served: Served) -> Iterator[None]:
    """Every test starts and ends with nothing broken, and the server answering."""
    served.faults.clear()
    yield
    served.faults.clear()
    for resource in (DASHBOARD, FLOW):
        resp = served.authz.Check(check_req(resource), metadata=md(), timeout=10)
        assert resp.decision == apb.DECISION_ALLOW, resource


class TestEngine:
    @pytest.mark.parametrize("explain", [False, True])
    @pytest.mark.parametrize("fully", [False, True])
    def test_check_is_an_error_never_an_allow(self, served: Served, explain: bool,
                                              fully: bool) -> None:
        """The engine raising for the resource's type: Check answers an error (inline
        on the poll thread or by the servicer), with or without explain."""
        served.faults.arm("engine")
        for key in (KEY, BOUND):
            code, details, _ = outcome(lambda k=key: served.authz.Check(
                check_req(DASHBOARD, explain=explain, fully=fully), metadata=md(k),
                timeout=10))
            assert code in ERRORS, (code, details)
            assert "acme-overview" not in details

    @pytest.mark.parametrize("key", [KEY, BOUND])
    def test_one_failing_bulk_item_is_that_items_error(self, served: Served,
                                                      key: str) -> None:
        """A CheckBulk with the engine failing for one item: that item is an error, the
        items around it are answered as usual."""
        served.faults.arm("engine")
        items = [check_req(FLOW), check_req(DASHBOARD), check_req(FLOW, "user:gwen"),
                 check_req(DASHBOARD, explain=True)]
        for fully in (False, True):
            req = apb.CheckBulkRequest(items=items)
            if fully:
                req.consistency.fully_consistent = True
            resp = served.authz.CheckBulk(req, metadata=md(key), timeout=10)
            kinds = [r.WhichOneof("result") for r in resp.results]
            assert kinds == ["response", "error", "response", "error"]
            assert resp.results[0].response.decision == apb.DECISION_ALLOW
            assert resp.results[2].response.decision == apb.DECISION_DENY
            for i in (1, 3):
                err = resp.results[i].error
                assert err.code == grpc.StatusCode.INTERNAL.value[0], err
                assert err.message.startswith(f"items[{i}]: "), err.message
                assert "Injected" not in err.message and "acme-overview" not in err.message

    def test_list_accessible_is_an_error_never_a_partial_page(self, served: Served) -> None:
        """ListAccessible of the failing type answers an error, no ids."""
        served.faults.arm("engine")
        req = apb.ListAccessibleRequest(subject=ref("user:olivia"), resource_type="dashboard",
                                        action="view")
        got: list[str] = []
        code, _, _ = outcome(lambda: [got.extend(m.resource_ids) for m in
                                      served.authz.ListAccessible(req, metadata=md(),
                                                                  timeout=10)])
        assert code in ERRORS and got == []

    def test_a_tenancy_guard_that_fails_writes_nothing(self, served: Served) -> None:
        """The engine failing while a tenancy operation authorizes its actor: an error,
        and the operation did not happen."""
        before = self._workspaces(served)
        served.faults.arm("engine")
        code, _, _ = outcome(lambda: served.tenancy.CreateWorkspace(
            tpb.CreateWorkspaceRequest(actor=ref("user:olivia"), organization_id="northwind",
                                       name="Should not exist"), metadata=md(), timeout=10))
        served.faults.clear()
        assert code in ERRORS
        assert self._workspaces(served) == before

    @staticmethod
    def _workspaces(served: Served) -> set[str]:
        req = gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
            resource_type="workspace", relation="parent"))
        req.consistency.fully_consistent = True
        return {m.relationship.resource.id for m in
                served.graph.ReadRelationships(req, metadata=md(), timeout=10)
                if m.HasField("relationship")}


class TestStores:
    def test_a_failing_write_is_an_error_and_writes_nothing(self, served: Served) -> None:
        """The graph store raising on write: WriteRelationships and a tenancy operation
        answer an error; nothing they asked for exists afterwards."""
        served.faults.arm("store.write")
        grant = "dashboard:acme-overview#owner@user:gwen"
        code, _, _ = outcome(lambda: served.graph.WriteRelationships(
            gpb.WriteRelationshipsRequest(updates=[update(grant)]), metadata=md(),
            timeout=10))
        assert code in ERRORS
        code, _, _ = outcome(lambda: served.tenancy.InviteMember(tpb.InviteMemberRequest(
            actor=ref("user:olivia"), scope=ref("workspace:acme"), email="new@x.example",
            role="user"), metadata=md(), timeout=10))
        assert code in ERRORS
        served.faults.clear()
        resp = served.authz.Check(check_req(DASHBOARD, "user:gwen", "delete", fully=True),
                                  metadata=md(), timeout=10)
        assert resp.decision == apb.DECISION_DENY
        listed = served.tenancy.ListInvitations(tpb.ListInvitationsRequest(
            actor=ref("user:olivia"), scope=ref("workspace:acme")), metadata=md(), timeout=10)
        assert "new@x.example" not in {i.email for i in listed.invitations}

    def test_a_store_that_cannot_say_its_revision_gives_no_stale_allow(
            self, served: Served) -> None:
        """Fully consistent reads with the store raising: Check, CheckBulk and
        ListAccessible answer an error instead of an allow from the index."""
        served.faults.arm("store.head")
        calls = {
            "Check": lambda: served.authz.Check(check_req(FLOW, fully=True), metadata=md(),
                                                timeout=10),
            "CheckBulk": lambda: served.authz.CheckBulk(apb.CheckBulkRequest(
                items=[check_req(FLOW)], consistency=apb.Consistency(fully_consistent=True)),
                metadata=md(), timeout=10),
            "ListAccessible": lambda: list(served.authz.ListAccessible(
                apb.ListAccessibleRequest(subject=ref("user:olivia"),
                                          resource_type="data_flow", action="view",
                                          consistency=apb.Consistency(fully_consistent=True)),
                metadata=md(), timeout=10)),
        }
        for name, call in calls.items():
            code, _, _ = outcome(call)
            assert code in ERRORS, name

    def test_usage_that_cannot_be_counted_is_no_answer(self, served: Served) -> None:
        """The usage store raising: ComputeUsage and CheckLimit answer an error (never
        `allowed`) and RecordUsage records nothing. (Tenancy operations check limits of
        graph metrics only, which the usage store does not hold.)"""
        served.faults.arm("usage.counters", "usage.record")
        calls = {
            "ComputeUsage": lambda: served.usage.ComputeUsage(upb.ComputeUsageRequest(
                organization_id="northwind"), metadata=md(), timeout=10),
            "CheckLimit": lambda: served.usage.CheckLimit(upb.CheckLimitRequest(
                organization_id="northwind", create_workspace=upb.CreateWorkspace()),
                metadata=md(), timeout=10),
            "CheckLimit.record": lambda: served.usage.CheckLimit(upb.CheckLimitRequest(
                organization_id="northwind", record=upb.RecordAmount(
                    workspace_id="acme", metric="llm_credits", amount=1)),
                metadata=md(), timeout=10),
            "RecordUsage": lambda: served.usage.RecordUsage(upb.RecordUsageRequest(
                organization_id="northwind", events=[upb.UsageEvent(
                    event_id="fault-1", workspace_id="acme", metric="llm_credits",
                    amount=5)]), metadata=md(), timeout=10),
        }
        for name, call in calls.items():
            code, details, resp = outcome(call)
            assert code in ERRORS, (name, code, details, resp)
        served.faults.clear()
        out = served.usage.RecordUsage(upb.RecordUsageRequest(
            organization_id="northwind", events=[upb.UsageEvent(
                event_id="fault-1", workspace_id="acme", metric="llm_credits", amount=5)]),
            metadata=md(), timeout=10)
        assert not out.results[0].duplicate  # the failed attempt recorded nothing


class TestAuthentication:
    def test_a_failing_authenticator_lets_nobody_through(self, served: Served) -> None:
        """The key look-up raising: every call is INTERNAL, whether it carries a valid
        key, an unknown one or none; none is treated as anonymous."""
        served.faults.arm("auth")
        calls: dict[str, Callable[[tuple[tuple[str, str], ...]], Any]] = {
            "Check": lambda m: served.authz.Check(check_req(FLOW), metadata=m, timeout=10),
            "CheckBulk": lambda m: served.authz.CheckBulk(apb.CheckBulkRequest(
                items=[check_req(FLOW)]), metadata=m, timeout=10),
            "ListAccessible": lambda m: list(served.authz.ListAccessible(
                apb.ListAccessibleRequest(subject=ref("user:olivia"),
                                          resource_type="data_flow", action="view"),
                metadata=m, timeout=10)),
            "WriteRelationships": lambda m: served.graph.WriteRelationships(
                gpb.WriteRelationshipsRequest(updates=[update(
                    "dashboard:acme-overview#owner@user:gwen")]), metadata=m, timeout=10),
            "ComputeUsage": lambda m: served.usage.ComputeUsage(upb.ComputeUsageRequest(
                organization_id="northwind"), metadata=m, timeout=10),
        }
        for name, call in calls.items():
            for metadata in (md(KEY), md(BOUND), md("gh_not_a_key_0123456789")):
                code, details, _ = outcome(lambda c=call, m=metadata: c(m))
                assert code == grpc.StatusCode.INTERNAL, (name, code, details)
                assert "Injected" not in details or "injected fault" not in details
        served.faults.clear()
        resp = served.authz.Check(check_req(DASHBOARD, "user:gwen", "delete", fully=True),
                                  metadata=md(), timeout=10)
        assert resp.decision == apb.DECISION_DENY  # the refused write never happened


class TestTenantFiltering:
    def test_filtering_that_fails_refuses_instead_of_showing_everything(
            self, served: Served) -> None:
        """Tenant filtering raising for a bound key: Check, CheckBulk items,
        ListAccessible, ReadRelationships and ReadObject answer errors (no rows, no
        allow); the unbound key, which filters nothing, is answered as usual."""
        served.faults.arm("tenants")
        calls: dict[str, Callable[[tuple[tuple[str, str], ...]], Any]] = {
            "Check": lambda m: served.authz.Check(check_req(FLOW), metadata=m, timeout=10),
            "ListAccessible": lambda m: [i for r in served.authz.ListAccessible(
                apb.ListAccessibleRequest(subject=ref("user:olivia"),
                                          resource_type="data_flow", action="view"),
                metadata=m, timeout=10) for i in r.resource_ids],
            "ReadRelationships": lambda m: [r for r in served.graph.ReadRelationships(
                gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
                    resource_type="data_flow")), metadata=m, timeout=10)
                if r.HasField("relationship")],
            "ReadObject": lambda m: served.graph.ReadObject(gpb.ReadObjectRequest(
                object=ref(FLOW)), metadata=m, timeout=10),
        }
        for name, call in calls.items():
            code, details, resp = outcome(lambda c=call: c(md(BOUND)))
            assert code in ERRORS | {grpc.StatusCode.PERMISSION_DENIED}, (name, code, resp)
            code, details, resp = outcome(lambda c=call: c(md(KEY)))
            assert code == OK and resp, (name, code, details)
        bulk = served.authz.CheckBulk(apb.CheckBulkRequest(items=[
            check_req("workspace:acme"), check_req(FLOW)]), metadata=md(BOUND), timeout=10)
        assert bulk.results[0].response.decision == apb.DECISION_ALLOW
        assert bulk.results[1].WhichOneof("result") == "error"
        grant = "data_flow:acme-ads-daily#owner@user:gwen"
        code, _, _ = outcome(lambda: served.graph.WriteRelationships(
            gpb.WriteRelationshipsRequest(updates=[update(grant)]), metadata=md(BOUND),
            timeout=10))
        assert code in ERRORS
        served.faults.clear()
        resp = served.authz.Check(check_req("data_flow:acme-ads-daily", "user:gwen", "delete",
                                            fully=True), metadata=md(), timeout=10)
        assert resp.decision == apb.DECISION_DENY  # the refused write never happened

    def test_a_watch_whose_filter_fails_ends_instead_of_leaking(self, served: Served
                                                                ) -> None:
        """A bound watcher, then a change its filter cannot judge: the stream ends with
        an error; it never delivers the change unfiltered."""
        rev = served.authz.Check(check_req(FLOW, fully=True), metadata=md(),
                                 timeout=10).revision
        stream = served.graph.Watch(gpb.WatchRequest(after_revision=rev), metadata=md(BOUND),
                                    timeout=10)
        served.faults.arm("tenants")
        served.graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[update(
            "data_flow:acme-ads-daily#owner@user:ben")]), metadata=md(), timeout=10)
        got: list[Any] = []
        code, _, _ = outcome(lambda: got.extend(stream))
        served.faults.clear()
        served.graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[update(
            "data_flow:acme-ads-daily#owner@user:ben", gpb.RelationshipUpdate.OPERATION_DELETE
        )]), metadata=md(), timeout=10)
        assert code in ERRORS, code
        assert got == []
