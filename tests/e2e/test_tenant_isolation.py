"""Tenant isolation beyond refusals: what one organization's answers count and show.

The matrix (test_tenant_keys) proves a bound key cannot *name* another
organization's objects. These tests prove the answers about an organization
never *contain* or *count* another's, for any caller, and in particular for a
person who is a member of both: usage metrics and limits, invitation and
access-link listings, ListAccessible within an organization, explanations of
Check, and the whole Watch history a bound key can replay. Each runs on the
memory store (core and aio transports) and on Redis, with real API keys.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import graph_pb2 as gpb
from gatehouse.v1 import tenancy_pb2 as tpb
from gatehouse.v1 import usage_pb2 as upb
from tests.e2e import test_tenant_keys as matrix
from tests.e2e.tenant_keys import as_key
from tests.e2e.test_graph_service import ref, update
from tests.e2e.test_tenant_keys import KEYS, ORGS, World, _outcome, uid

DENIED = grpc.StatusCode.PERMISSION_DENIED

world = matrix.world
"""The matrix's module-scoped fixture: this module gets its own world per store."""


def _usage(w: World, org: str, md: Any = None) -> dict[str, tuple[float, dict[str, float]]]:
    req = upb.ComputeUsageRequest(organization_id=org)
    req.consistency.fully_consistent = True
    out = w.usage.ComputeUsage(req, metadata=md or as_key(None), timeout=10)
    return {m.name: (m.value, dict(m.by_workspace)) for m in out.metrics}


def _workspaces(w: World, org: str) -> set[str]:
    req = gpb.ReadRelationshipsRequest(filter=gpb.RelationshipFilter(
        resource_type="workspace", relation="parent", subject_type="organization",
        subject_id=org))
    req.consistency.fully_consistent = True
    return {m.relationship.resource.id for m in w.graph.ReadRelationships(req, timeout=10)
            if m.HasField("relationship")}


def _connection(w: World, org: str, source_type: str) -> str:
    o = w.orgs[org]
    key = f"connection:{uid('c')}"
    w.graph.WriteRelationships(gpb.WriteRelationshipsRequest(updates=[
        update(f"{key}#parent@workspace:{o.ws}"), update(f"{key}#owner@{o.member}")]),
        timeout=10)
    attrs = Struct()
    attrs.update({"source_type": source_type, "shared": False})
    w.graph.WriteObjects(gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
        operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref(key), attributes=attrs)]),
        timeout=10)
    return key


def _ids_of(w: World, org: str) -> set[str]:
    """Ids (``type:id`` and bare) that belong to ``org`` alone."""
    o = w.orgs[org]
    out = {f"organization:{org}", f"workspace:{o.ws}", f"workspace:{o.ws2}", o.flow,
           o.owner, o.member}
    return out | {k.partition(":")[2] for k in out}


class TestUsage:
    def test_metrics_count_only_the_organizations_objects(self, world: World) -> None:
        """What globex gains (workspaces, members, flows with a new destination type,
        connections, recorded credits) changes nothing in acme's usage, for a person
        in both organizations too; acme's per-workspace figures name only acme's
        workspaces; every key allowed to ask sees the same figures."""
        before = _usage(world, "acme")
        for name, (_, by_ws) in before.items():
            assert set(by_ws) <= _workspaces(world, "acme"), name
        g = world.orgs["globex"]
        world.workspace("globex")
        newcomer = world.user("globex")
        world.set_role("globex", newcomer)
        world.set_role("globex", world.dual, "admin", g.ws2)
        flow = world.flow("globex")
        attrs = Struct()
        attrs.update({"destination_type": uid("dest")})
        world.graph.WriteObjects(gpb.WriteObjectsRequest(updates=[gpb.ObjectUpdate(
            operation=gpb.ObjectUpdate.OPERATION_PUT, object=ref(flow), attributes=attrs)]),
            timeout=10)
        _connection(world, "globex", "shopify")
        world.usage.RecordUsage(upb.RecordUsageRequest(organization_id="globex", events=[
            upb.UsageEvent(event_id=uid("e"), workspace_id=g.ws, metric="llm_credits",
                           amount=7)]), timeout=10)
        assert _usage(world, "acme") == before
        for name, orgs in KEYS.items():
            if orgs is None or "acme" in orgs:
                assert _usage(world, "acme", as_key(orgs)) == before, name

    def test_a_member_of_both_is_one_user_in_each(self, world: World) -> None:
        """The person in both organizations counts once in acme's users; a globex-only
        member joining acme adds one; CheckLimit proposes the same figures."""
        users = _usage(world, "acme")["users"][0]
        o = world.orgs["acme"]

        def proposed(email: str) -> tuple[float, float]:
            req = upb.CheckLimitRequest(organization_id="acme", add_member=upb.AddMember(
                workspace_id=o.ws2, email=email))
            req.consistency.fully_consistent = True
            out = world.usage.CheckLimit(req, metadata=as_key(["acme"]), timeout=10)
            (check,) = [c for c in out.checks if c.metric == "users"]
            return check.current, check.proposed

        assert proposed(world.email(world.dual, "example")) == (users, users)
        outsider = world.user("globex")
        world.set_role("globex", outsider)
        email = world.email(outsider, "globex")
        assert proposed(email) == (users, users + 1)
        world.set_role("acme", world.dual, "guest", o.ws2)
        assert _usage(world, "acme")["users"][0] == users
        world.set_role("acme", outsider, "guest", o.ws2)
        assert _usage(world, "acme")["users"][0] == users + 1

    def test_another_organizations_workspace_is_refused_by_name(self, world: World) -> None:
        """Naming globex's workspace under acme (ComputeUsage, CheckLimit, RecordUsage)
        is refused for every caller, records nothing, and an acme key's refusal does
        not say where the workspace is."""
        g = world.orgs["globex"]
        credits = _usage(world, "globex")["llm_credits"][0]
        calls = {
            "ComputeUsage": lambda md: world.usage.ComputeUsage(upb.ComputeUsageRequest(
                organization_id="acme", workspace_id=g.ws), metadata=md, timeout=10),
            "CheckLimit": lambda md: world.usage.CheckLimit(upb.CheckLimitRequest(
                organization_id="acme", record=upb.RecordAmount(
                    workspace_id=g.ws, metric="llm_credits", amount=1)),
                metadata=md, timeout=10),
            "RecordUsage": lambda md: world.usage.RecordUsage(upb.RecordUsageRequest(
                organization_id="acme", events=[upb.UsageEvent(
                    event_id=uid("e"), workspace_id=g.ws, metric="llm_credits", amount=1)]),
                metadata=md, timeout=10),
        }
        for rpc, call in calls.items():
            for name, orgs in KEYS.items():
                code, details, _ = _outcome(call, as_key(orgs))
                assert code != grpc.StatusCode.OK, (rpc, name)
                assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                DENIED), (rpc, name, code, details)
                assert "globex" not in details, (rpc, name, details)
        assert _usage(world, "globex")["llm_credits"][0] == credits


class TestListings:
    def test_invitations_and_links_list_only_their_own(self, world: World) -> None:
        """The same address invited to both organizations, links in both: each
        organization's listing shows its own only, to every key allowed to ask."""
        email = f"{uid()}@example.test"
        invited: dict[str, str] = {}
        links: dict[str, str] = {}
        for org in ORGS:
            o = world.orgs[org]
            invited[org] = world.tenancy.InviteMember(tpb.InviteMemberRequest(
                actor=ref(o.owner), scope=ref(f"workspace:{o.ws}"), email=email,
                role="user"), timeout=10).invitation_id
            links[org] = world.link(org)[0]
        for org in ORGS:
            o = world.orgs[org]
            other = invited["globex" if org == "acme" else "acme"]
            other_link = links["globex" if org == "acme" else "acme"]
            for name, orgs in KEYS.items():
                if orgs is not None and org not in orgs:
                    continue
                md = as_key(orgs)
                inv = world.tenancy.ListInvitations(tpb.ListInvitationsRequest(
                    actor=ref(o.owner), scope=ref(f"workspace:{o.ws}")), metadata=md,
                    timeout=10)
                ids = {i.invitation_id for i in inv.invitations}
                assert invited[org] in ids and other not in ids, (org, name)
                lnk = world.tenancy.ListAccessLinks(tpb.ListAccessLinksRequest(
                    actor=ref(o.owner), workspace_id=o.ws), metadata=md, timeout=10)
                ids = {x.link_id for x in lnk.links}
                assert links[org] in ids and other_link not in ids, (org, name)
                assert not {x.connection_id for x in lnk.links} & _ids_of(
                    world, "globex" if org == "acme" else "acme")

    def test_list_accessible_within_an_organization_stays_in_it(self, world: World) -> None:
        """The person in both organizations, listed within acme by any key allowed
        there: acme's flows only, though globex's are theirs to view too."""
        theirs = {world.orgs["globex"].flow.partition(":")[2]}
        for name, orgs in KEYS.items():
            if orgs is not None and "acme" not in orgs:
                continue
            req = apb.ListAccessibleRequest(subject=ref(world.dual), resource_type="data_flow",
                                            action="view", within=ref("organization:acme"))
            req.consistency.fully_consistent = True
            ids = {i for m in world.authz.ListAccessible(req, metadata=as_key(orgs),
                                                         timeout=10) for i in m.resource_ids}
            assert world.orgs["acme"].flow.partition(":")[2] in ids, name
            assert not ids & theirs, name


class TestExplain:
    @pytest.mark.parametrize("action", ["view", "delete"])
    def test_an_explanation_names_no_other_organizations_ids(self, world: World,
                                                            action: str) -> None:
        """Check with explain=true, by an acme key, for the person in both
        organizations (allowed to view, denied delete): the summary and trace name
        nothing of globex, in Check and in each CheckBulk item."""
        globex = _ids_of(world, "globex")
        req = apb.CheckRequest(subject=ref(world.dual), action=action,
                               resource=ref(world.orgs["acme"].flow), explain=True)
        req.consistency.fully_consistent = True
        single = world.authz.Check(req, metadata=as_key(["acme"]), timeout=10)
        bulk = world.authz.CheckBulk(apb.CheckBulkRequest(items=[req, req]),
                                     metadata=as_key(["acme"]), timeout=10)
        answers = [single, *(r.response for r in bulk.results)]
        assert [a.decision for a in answers] == [single.decision] * 3
        assert single.decision == (apb.DECISION_ALLOW if action == "view"
                                   else apb.DECISION_DENY)
        for answer in answers:
            text = "\n".join([answer.explanation.summary, *answer.explanation.trace])
            assert answer.explanation.trace, text
            assert not [i for i in globex if i in text], text

    def test_explaining_another_organizations_object_is_refused(self, world: World) -> None:
        """explain=true does not open a way around the refusal: an acme key asking
        about globex's flow gets PERMISSION_DENIED and no explanation."""
        req = apb.CheckRequest(subject=ref(world.dual), action="view",
                               resource=ref(world.orgs["globex"].flow), explain=True)
        code, _, resp = _outcome(
            lambda md: world.authz.Check(req, metadata=md, timeout=10), as_key(["acme"]))
        assert code == DENIED and resp is None
        bulk = world.authz.CheckBulk(apb.CheckBulkRequest(items=[req]),
                                     metadata=as_key(["acme"]), timeout=10)
        assert bulk.results[0].WhichOneof("result") == "error"
        assert bulk.results[0].error.code == DENIED.value[0]


class TestWatch:
    def test_replaying_history_shows_only_the_keys_organization(self, world: World) -> None:
        """A bound key watching from the first revision replays the whole set-up and
        sees none of globex's objects or relationships, and at least acme's flow."""
        world.flow("globex")
        marker = world.flow("acme")  # the last change: seen once the replay is done
        got: queue.Queue[gpb.WatchResponse | None] = queue.Queue()
        call = world.graph.Watch(gpb.WatchRequest(after_revision="0"),
                                 metadata=as_key(["acme"]))

        def pump() -> None:
            try:
                for msg in call:
                    got.put(msg)
            except grpc.RpcError:
                got.put(None)

        threading.Thread(target=pump, daemon=True).start()
        seen: set[str] = set()
        try:
            while True:
                msg = got.get(timeout=10)
                assert msg is not None, call.details()
                for u in msg.relationship_updates:
                    r = u.relationship
                    seen |= {f"{r.resource.type}:{r.resource.id}",
                             f"{r.subject.type}:{r.subject.id}"}
                for o in msg.object_updates:
                    seen.add(f"{o.object.type}:{o.object.id}")
                if marker in seen:
                    break
        finally:
            call.cancel()
        globex = _ids_of(world, "globex")
        assert world.orgs["acme"].flow in seen
        assert not seen & globex, seen & globex

