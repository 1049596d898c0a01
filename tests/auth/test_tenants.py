"""gatehouse.auth.tenants against a real index and the coupler policy: where an object
is, who a bound caller may name, what a write or a watched change may touch."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatehouse.auth import tenants
from gatehouse.auth.caller import CALLER, Caller
from gatehouse.auth.tenants import OutsideTenants, TenantGuard
from gatehouse.errors import InvalidArgument, PermissionDenied
from gatehouse.graph.changes import (
    DeleteObject,
    DeleteRelationship,
    PutObject,
    TouchRelationship,
)
from gatehouse.graph.index import GraphIndex
from gatehouse.graph.model import ObjectRecord, ObjectRef, Relationship, Snapshot
from gatehouse.policy import load_policy
from gatehouse.transport import CallInfo

ROOT = Path(__file__).resolve().parent.parent.parent
POLICY = load_policy(ROOT / "policies/coupler")
ACME = frozenset({"acme"})

GRAPH = [
    "workspace:a1#parent@organization:acme",
    "workspace:g1#parent@organization:globex",
    "data_flow:fa#parent@workspace:a1",
    "data_flow:fg#parent@workspace:g1",
    "data_flow:fa#owner@user:ann",
    "data_flow:fg#owner@user:gus",
    "workspace:a1#user@user:dual",
    "workspace:g1#user@user:dual",
    "organization:globex#owner@user:gil",
]


def rel(text: str) -> Relationship:
    return Relationship.parse(text)


@pytest.fixture
def guard() -> TenantGuard:
    index = GraphIndex.from_snapshot(Snapshot(
        7, (ObjectRecord(ObjectRef("user", "loner"), {"email": "l@x.test"}),),
        tuple(rel(t) for t in GRAPH)))
    return TenantGuard(ACME, POLICY, index)


class TestWhere:
    def test_organization_of_walks_the_ancestors(self, guard: TenantGuard) -> None:
        """A flow is in the organization above its workspace; an organization is its own."""
        assert guard.organization_of("data_flow:fa") == "organization:acme"
        assert guard.organization_of("workspace:g1") == "organization:globex"
        assert guard.organization_of("organization:initech") == "organization:initech"
        assert guard.organization_of("data_flow:nowhere") is None
        assert guard.organization_of("user:ann") is None

    def test_a_new_object_is_placed_by_its_parent_edge(self, guard: TenantGuard) -> None:
        """An object the index does not know is where the request's parent edge puts it."""
        guard.place([TouchRelationship(rel("data_flow:new#parent@workspace:a1")),
                     TouchRelationship(rel("ai_chat:deep#parent@workspace:g1"))])
        assert guard.visible("data_flow:new")
        assert not guard.visible("ai_chat:deep")


class TestWho:
    @pytest.mark.parametrize(("key", "visible"), [
        ("organization:acme", True),
        ("organization:globex", False),
        ("workspace:a1", True),
        ("data_flow:fg", False),
        ("data_flow:nowhere", False),  # unknown: outside, like another tenant's
        ("user:ann", True),     # owns a flow in acme
        ("user:dual", True),    # in both
        ("user:gil", False),    # only in globex
        ("user:loner", False),  # in no organization
        ("gadget:x", False),    # a type the policy does not declare
    ])
    def test_visible(self, guard: TenantGuard, key: str, visible: bool) -> None:
        """Objects with a tenant by their organization; users by where they hold something."""
        assert guard.visible(key) is visible

    def test_refusals_name_the_field_and_only_what_was_sent(self, guard: TenantGuard) -> None:
        """The message names the field and the object, never the organization it is in."""
        with pytest.raises(OutsideTenants) as err:
            guard.require("data_flow:fg", "items[3].resource")
        assert str(err.value) == ("items[3].resource: the organization of data_flow:fg is "
                                  "not one this key may use")
        assert "globex" not in str(err.value) and isinstance(err.value, PermissionDenied)
        with pytest.raises(OutsideTenants, match=r"^subject: user:gil holds no relationship"):
            guard.require_check("user:gil", "data_flow:fa")
        with pytest.raises(OutsideTenants, match=r"^resource: the organization of"):
            guard.require_check("user:dual", "data_flow:fg")

    def test_organization_ids_are_validated_then_matched(self, guard: TenantGuard) -> None:
        """A bad id is INVALID_ARGUMENT; another organization's is refused."""
        assert guard.require_organization("acme", "organization_id") == "organization:acme"
        with pytest.raises(InvalidArgument):
            guard.require_organization("", "organization_id")
        with pytest.raises(OutsideTenants, match=r"^organization_id: organization 'globex'"):
            guard.require_organization("globex", "organization_id")

    def test_unbound_callers_get_no_guard(self, guard: TenantGuard) -> None:
        """An unbound caller (and a call no hook saw) is checked for nothing."""
        assert tenants.guard(None, POLICY, guard.index) is None
        assert tenants.organizations_of(None) is None
        info = CallInfo("/m", (), "peer")
        assert tenants.organizations_of(info) is None
        info.notes[CALLER] = Caller("k", frozenset({"check"}), ACME)
        assert tenants.organizations_of(info) == ACME


class TestWrites:
    def test_a_batch_is_refused_at_its_first_outside_update(self, guard: TenantGuard) -> None:
        """The first update touching globex is named; a user subject may join acme."""
        ops = [TouchRelationship(rel("data_flow:new#parent@workspace:a1")),
               TouchRelationship(rel("data_flow:new#owner@user:newcomer")),
               TouchRelationship(rel("data_flow:fg#owner@user:ann"))]
        guard.require_operations(ops[:2], ["updates[0]", "updates[1]"])
        with pytest.raises(OutsideTenants, match=r"^updates\[2\].relationship.resource:"):
            guard.require_operations(ops, [f"updates[{i}]" for i in range(3)])

    def test_a_subject_with_a_tenant_must_be_inside(self, guard: TenantGuard) -> None:
        """Linking an acme object to a globex one names the subject."""
        with pytest.raises(OutsideTenants, match=r"^u.relationship.subject:"):
            guard.require_operations(
                [TouchRelationship(rel("organization:acme#ai_workspace@workspace:g1"))], ["u"])

    def test_objects_and_users(self, guard: TenantGuard) -> None:
        """Objects put or deleted are inside; a user object only if it holds something."""
        guard.require_operations([PutObject(ObjectRef("data_flow", "fa"), {}),
                                  PutObject(ObjectRef("user", "dual"), {})], ["a", "b"])
        for op in (PutObject(ObjectRef("user", "loner"), {}),
                   DeleteObject(ObjectRef("data_flow", "fg"))):
            with pytest.raises(OutsideTenants, match=r"^a.object:"):
                guard.require_operations([op], ["a"])


class TestWatch:
    def test_a_change_keeps_only_what_is_inside(self, guard: TenantGuard) -> None:
        """Of a change, only acme's operations remain; an object removed with its parent
        edge in the same change is still placed by that edge."""
        ops = [TouchRelationship(rel("data_flow:fa#uses@connection:c")),
               TouchRelationship(rel("data_flow:fg#owner@user:dual")),
               DeleteRelationship(rel("dashboard:gone#parent@workspace:a1")),
               DeleteObject(ObjectRef("dashboard", "gone")),
               PutObject(ObjectRef("user", "loner"), {})]
        assert guard.visible_operations(ops) == [ops[0], ops[2], ops[3]]
