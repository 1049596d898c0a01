"""The synchronous client against a real gatehouse server (coupler policy, sample data)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from conftest import Gatehouse
from gatehouse_client import (
    AddMember,
    AlreadyExists,
    CheckItem,
    Client,
    Consistency,
    CreateWorkspace,
    Decision,
    EnrollmentMode,
    Error,
    FailedPrecondition,
    InvalidArgument,
    InvitationStatus,
    NotFound,
    PermissionDenied,
    RecordAmount,
    Relationship,
    UsageEvent,
)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def client(gatehouse: Gatehouse) -> Iterator[Client]:
    with Client(gatehouse.address) as c:
        yield c


class TestCheck:
    def test_allow_and_deny_are_answers(self, client: Client) -> None:
        """Uma (workspace user) may edit Ben's flow but not delete it; both are Decisions."""
        allowed = client.check("user:uma", "edit", "data_flow:acme-sales-pipeline")
        denied = client.check("user:uma", "delete", "data_flow:acme-sales-pipeline")
        assert allowed.allowed and allowed
        assert not denied.allowed and not denied
        assert allowed.revision.isdigit() and allowed.policy_version.startswith("sha256:")

    def test_references_as_tuples_and_explanations(self, client: Client) -> None:
        """(type, id) works like 'type:id'; explain=True returns the rules considered."""
        d = client.check(("user", "uma"), "delete", ("data_flow", "acme-sales-pipeline"),
                         explain=True)
        assert d.explanation is not None
        assert d.explanation.summary.startswith("deny")
        assert any("condition `owner` is false" in line for line in d.explanation.trace)
        assert client.check("user:uma", "edit", "data_flow:acme-sales-pipeline").explanation \
            is None

    def test_context_reaches_conditions(self, client: Client) -> None:
        """A context mapping is sent as the request's Struct (an unknown key changes nothing)."""
        d = client.check("user:uma", "edit", "data_flow:acme-sales-pipeline",
                         context={"ip": "10.0.0.1", "n": 3})
        assert d.allowed

    def test_server_refusal_is_invalid_argument_with_the_field(self, client: Client) -> None:
        """An unknown type comes back as InvalidArgument naming the field and the known types."""
        with pytest.raises(InvalidArgument) as err:
            client.check("user:uma", "edit", "spaceship:x")
        assert err.value.details.startswith("resource.type: unknown type 'spaceship'")
        assert err.value.method == "Check"

    @pytest.mark.parametrize("subject", ["uma", "user:", ":uma", ("user",), ("user", ""), 42])
    def test_malformed_references_are_refused_before_sending(self, client: Client,
                                                             subject: object) -> None:
        """A reference that is not 'type:id' or (type, id) raises InvalidArgument locally."""
        with pytest.raises(InvalidArgument, match="subject"):
            client.check(subject, "edit", "data_flow:x")  # type: ignore[arg-type]


class TestCheckBulk:
    def test_bad_items_keep_their_own_error(self, client: Client) -> None:
        """Each item is answered in order; a malformed one is an Error, the others decisions."""
        out = client.check_bulk([
            ("user:uma", "edit", "data_flow:acme-sales-pipeline"),
            ("user:uma", "edit", "spaceship:x"),
            CheckItem("user:uma", "delete", "data_flow:acme-sales-pipeline", explain=True),
        ])
        assert [type(x) for x in out] == [Decision, Error, Decision]
        first, bad, third = out
        assert isinstance(first, Decision) and first.allowed
        assert isinstance(bad, Error) and not bad
        assert bad.message.startswith("items[1].resource.type")
        assert isinstance(bad.exception(), InvalidArgument)
        assert isinstance(third, Decision) and not third.allowed
        assert third.explanation is not None

    def test_a_malformed_item_is_refused_locally_naming_its_index(self, client: Client) -> None:
        """A reference the client cannot parse names the item's index."""
        with pytest.raises(InvalidArgument, match=r"items\[1\]\.resource"):
            client.check_bulk([("user:uma", "edit", "data_flow:a"), ("user:uma", "edit", "x")])


class TestListAccessible:
    def test_lists_what_the_subject_may_view(self, client: Client) -> None:
        """Uma's data flows, in id order; ``within`` narrows to one workspace."""
        every = list(client.list_accessible("user:uma", "view", "data_flow"))
        assert every == ["acme-ads-daily", "acme-gwen-report", "acme-sales-pipeline",
                         "globex-finance"]
        assert list(client.list_accessible("user:uma", "view", "data_flow",
                                           within="workspace:globex")) == ["globex-finance"]

    def test_iterates_across_pages(self, client: Client) -> None:
        """2,500 flows come back whole across default (1,000) and small pages."""
        ws, user = uid("ws"), uid("lister")
        ids = [f"f{i:05d}" for i in range(2500)]
        client.write_relationships(touch=[f"workspace:{ws}#parent@organization:northwind",
                                          f"workspace:{ws}#user@user:{user}"])
        for start in range(0, len(ids), 1000):
            client.write_relationships(
                touch=[f"data_flow:{i}#parent@workspace:{ws}" for i in ids[start:start + 1000]])
        assert list(client.list_accessible(f"user:{user}", "view", "data_flow")) == ids
        assert list(client.list_accessible(f"user:{user}", "view", "data_flow",
                                           page_size=700)) == ids

    def test_stopping_early_ends_the_stream(self, client: Client) -> None:
        """Taking two ids and closing the iterator cancels the call; the client keeps working."""
        it = client.list_accessible("user:uma", "view", "data_flow")
        assert [next(it), next(it)] == ["acme-ads-daily", "acme-gwen-report"]
        it.close()  # type: ignore[attr-defined]
        assert client.check("user:uma", "edit", "data_flow:acme-sales-pipeline").allowed

    def test_a_bad_listing_raises_when_iterated(self, client: Client) -> None:
        """The server's refusal surfaces from the iterator as the mapped exception."""
        with pytest.raises(InvalidArgument, match=r"unknown type 'spaceship'"):
            list(client.list_accessible("user:uma", "view", "spaceship"))


class TestGraph:
    def test_write_read_delete(self, client: Client) -> None:
        """Writes return increasing revisions; reads see them; a delete counts what it removed."""
        ws = uid("ws")
        rels = [f"workspace:{ws}#parent@organization:northwind",
                Relationship(("workspace", ws), "guest", ("user", "zoe"))]
        first = client.write_relationships(touch=rels)
        assert client.revision == first
        read = sorted(str(r) for r in client.read_relationships("workspace", resource_id=ws))
        assert read == sorted(str(r) if isinstance(r, Relationship) else r for r in rels)
        assert client.check("user:zoe", "view", f"workspace:{ws}").allowed
        deleted = client.delete_relationships("workspace", resource_id=ws, relation="guest")
        assert deleted.deleted == 1 and int(deleted.revision) > int(first)
        assert not client.check("user:zoe", "view", f"workspace:{ws}").allowed

    def test_create_of_an_existing_relationship_fails_and_writes_nothing(
            self, client: Client) -> None:
        """CREATE refuses an existing relationship; preconditions guard the batch."""
        ws = uid("ws")
        client.write_relationships(create=[f"workspace:{ws}#parent@organization:northwind"])
        with pytest.raises(Exception) as err:
            client.write_relationships(create=[f"workspace:{ws}#parent@organization:northwind",
                                               f"workspace:{ws}#admin@user:zoe"])
        assert "exists" in str(err.value)
        assert not client.check("user:zoe", "view", f"workspace:{ws}").allowed
        with pytest.raises(Exception, match="precondition"):
            client.write_relationships(touch=[f"workspace:{ws}#admin@user:zoe"],
                                       must_exist=[f"workspace:{ws}#owner@user:zoe"])

    def test_objects(self, client: Client) -> None:
        """write_objects puts attributes that read_object returns; a missing object is NotFound."""
        user = uid("user")
        client.write_objects(put={f"user:{user}": {"email": f"{user}@example.com"}})
        obj = client.read_object(("user", user))
        assert (obj.type, obj.id, obj.attributes) == ("user", user,
                                                      {"email": f"{user}@example.com"})
        with pytest.raises(NotFound):
            client.read_object(f"user:{uid('ghost')}")

    def test_malformed_relationship_strings(self, client: Client) -> None:
        """A relationship that is not resource#relation@subject is refused before sending."""
        with pytest.raises(InvalidArgument, match="relationship"):
            client.write_relationships(touch=["workspace:a@user:b"])


class TestUsage:
    def test_compute_usage(self, client: Client) -> None:
        """Northwind on Pro: users against the limit of ten, per-workspace breakdowns
        (other tests add members, so counts are at least the sample's)."""
        usage = client.compute_usage("northwind")
        assert (usage.plan, usage.plan_is_fallback) == ("pro", False)
        users = usage.metric("users")
        assert users.value >= 6 and users.limit == 10
        assert users.by_workspace["acme"] >= 5
        assert usage.metric("workspaces").limit is None
        acme = client.compute_usage("northwind", workspace="acme", metrics=["accounts"])
        assert [m.name for m in acme.metrics] == ["accounts"]
        assert acme.workspace_id == "acme"

    def test_record_usage_counts_each_event_once(self, client: Client) -> None:
        """A repeated event id is reported as a duplicate and changes nothing."""
        before = client.compute_usage("northwind", metrics=["llm_credits"]).metric(
            "llm_credits").value
        event = UsageEvent(uid("ev"), "llm_credits", 7, workspace_id="acme")
        assert [r.duplicate for r in client.record_usage("northwind", [event])] == [False]
        assert [r.duplicate for r in client.record_usage("northwind", [event])] == [True]
        after = client.compute_usage("northwind", metrics=["llm_credits"]).metric("llm_credits")
        assert after.value == before + 7

    def test_record_usage_refuses_unknown_metrics(self, client: Client) -> None:
        """A metric the policy does not declare is refused, naming the event's field."""
        with pytest.raises(InvalidArgument, match=r"events\[0\]\.metric"):
            client.record_usage("northwind", [UsageEvent(uid("ev"), "rows", 1, "acme")])

    def test_check_limit(self, client: Client) -> None:
        """One more member is counted against the users limit; 3000 credits pass Pro's 2500."""
        users = client.compute_usage("northwind", metrics=["users"]).metric("users").value
        member = client.check_limit("northwind", AddMember("acme", "new@northwind.example"))
        assert member.plan == "pro"
        assert [(c.metric, c.current, c.proposed, c.limit) for c in member.checks] == [
            ("users", users, users + 1, 10)]
        assert client.check_limit("northwind", CreateWorkspace()).allowed
        over = client.check_limit("northwind", RecordAmount("acme", "llm_credits", 3000))
        assert not over.allowed and "llm_credits" in over.reason


class TestTenancy:
    def test_a_tenancy_flow(self, client: Client) -> None:
        """Found an organization, add a workspace, invite Uma, she accepts and may view it;
        she may not create workspaces herself."""
        t = client.tenancy
        org = uid("org")
        created = t.create_organization("user:olivia", "Globex", organization_id=org,
                                        plan="business")
        assert created.organization_id == org and created.workspace_id
        ws = t.create_workspace("user:olivia", org, "Marketing Team")
        assert ws.slug == "marketing-team"
        slug = t.check_slug(org, "marketing-team")
        assert not slug.available and ws.workspace_id in slug.reason
        assert t.check_slug(org, "sales").available

        invite = t.invite_member("user:olivia", ("workspace", ws.workspace_id),
                                 "uma@northwind.example", "user", ttl_seconds=3600)
        assert invite.token and invite.token not in repr(invite)
        [pending] = t.list_invitations("user:olivia", f"workspace:{ws.workspace_id}")
        assert (pending.status, pending.email) == (InvitationStatus.PENDING,
                                                   "uma@northwind.example")
        resent = t.resend_invitation("user:olivia", invite.invitation_id)
        revision = t.accept_invitation(resent.token, "user:uma")
        assert client.revision == revision
        # Read-your-writes: no consistency given, the check waits for the accept's revision.
        assert client.check("user:uma", "view", f"workspace:{ws.workspace_id}").allowed
        [accepted] = t.list_invitations("user:olivia", f"workspace:{ws.workspace_id}")
        assert accepted.status is InvitationStatus.ACCEPTED

        with pytest.raises(PermissionDenied, match="may not create_workspace"):
            t.create_workspace("user:uma", org, "Mine")
        with pytest.raises(AlreadyExists, match="organization_id"):
            t.create_organization("user:olivia", "Again", organization_id=org)

        t.set_role("user:olivia", f"workspace:{ws.workspace_id}", "user:uma", "admin")
        assert client.check("user:uma", "manage_members", f"workspace:{ws.workspace_id}").allowed
        renamed = t.rename_workspace("user:olivia", ws.workspace_id, "Growth")
        assert client.revision == renamed
        removed = t.remove_member("user:olivia", f"workspace:{ws.workspace_id}", "user:uma",
                                  reassign_to="user:olivia")
        assert int(removed.revision) > int(renamed)
        assert not client.check("user:uma", "view", f"workspace:{ws.workspace_id}").allowed

        other = t.invite_member("user:olivia", f"organization:{org}", "ben@northwind.example",
                                "owner")
        t.revoke_invitation("user:olivia", other.invitation_id)
        with pytest.raises(FailedPrecondition):
            t.accept_invitation(other.token, "user:ben")

        with pytest.raises(InvalidArgument, match="confirm_name"):
            t.delete_workspace("user:olivia", ws.workspace_id, confirm_name="Marketing Team")
        gone = t.delete_workspace("user:olivia", ws.workspace_id, confirm_name="Growth")
        assert gone.deleted >= 1

    def test_links_domains_and_moves(self, client: Client) -> None:
        """Access links are listed and redeemed; a business plan adds an auto-join domain,
        signups resolve to it and join; coupler guards no moves (a precise refusal)."""
        t = client.tenancy
        org = uid("org")
        created = t.create_organization("user:olivia", "Initrode", organization_id=org,
                                        plan="business")
        primary = created.workspace_id
        link = t.create_access_link("user:olivia", primary, "hubspot")
        [listed] = t.list_access_links("user:olivia", primary)
        assert (listed.link_id, listed.created_by, listed.status.value) == (
            link.link_id, ("user", "olivia"), "active")
        redeemed = t.redeem_access_link(link.token, attributes={"credential_id": "c-1"})
        assert client.check("user:olivia", "use", f"connection:{redeemed.connection_id}").allowed
        link2 = t.create_access_link("user:olivia", primary, "csv")
        t.delete_access_link("user:olivia", link2.link_id)

        domain = f"{org}.example"
        t.add_domain("user:olivia", org, domain, EnrollmentMode.AUTO_JOIN,
                     workspace_id=primary, role="user")
        [match] = t.resolve_signup(f"newcomer@{domain}")
        assert (match.organization_id, match.mode) == (org, EnrollmentMode.AUTO_JOIN)
        person = uid("newcomer")
        client.write_objects(put={f"user:{person}": {"email": f"{person}@{domain}"}})
        joined = t.join_by_domain(f"user:{person}")
        assert joined.match.workspace_id == primary
        assert client.check(f"user:{person}", "view", f"workspace:{primary}").allowed

        second = t.create_workspace("user:olivia", org, "Second")
        client.write_relationships(touch=[f"data_flow:{org}-f#parent@workspace:{primary}"])
        with pytest.raises(FailedPrecondition, match="no guard for move_resource"):
            t.move_resource("user:olivia", f"data_flow:{org}-f", second.workspace_id)


class TestConsistency:
    def test_reads_carry_the_last_write_revision(self, gatehouse: Gatehouse) -> None:
        """A client that has seen a revision the store never issued gets no answer (the
        server refuses it at once, FAILED_PRECONDITION naming the field); minimize_latency,
        or a client with read_your_writes off, answers at once."""
        with Client(gatehouse.address, timeout=1.0, retries=None) as c:
            c.observe_revision(10**15)
            assert c.revision == str(10**15)
            with pytest.raises(FailedPrecondition, match=r"consistency\.at_least_as_fresh"):
                c.check("user:uma", "edit", "data_flow:acme-sales-pipeline")
            assert c.check("user:uma", "edit", "data_flow:acme-sales-pipeline",
                           consistency=Consistency.minimize_latency()).allowed
        with Client(gatehouse.address, read_your_writes=False) as off:
            off.observe_revision(10**15)
            assert off.check("user:uma", "edit", "data_flow:acme-sales-pipeline").allowed

    def test_the_revision_only_grows(self, client: Client) -> None:
        """Observing an older revision never lowers what reads ask for."""
        client.observe_revision(5)
        client.observe_revision("3")
        assert client.revision == "5"
        with pytest.raises(InvalidArgument):
            client.observe_revision("abc")
        with pytest.raises(InvalidArgument):
            Consistency.at_least("-1")
        with pytest.raises(InvalidArgument, match="unknown mode"):
            Consistency("eventually")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="takes no revision"):
            Consistency("full", "3")

    def test_explicit_consistency(self, client: Client) -> None:
        """at_least(rev) and full() answer once the index has the revision."""
        ws = uid("ws")
        rev = client.write_relationships(touch=[f"workspace:{ws}#parent@organization:northwind",
                                                f"workspace:{ws}#guest@user:zoe"])
        for level in (Consistency.at_least(rev), Consistency.full()):
            assert client.check("user:uma", "edit", "data_flow:acme-sales-pipeline",
                                consistency=level).allowed


class TestThreads:
    def test_one_client_shared_by_threads_keeps_the_highest_revision(
            self, client: Client) -> None:
        """Eight threads write and check through one Client; every check after a thread's
        write sees it, and the client ends at the highest revision any write returned."""
        ws = uid("ws")
        client.write_relationships(touch=[f"workspace:{ws}#parent@organization:northwind"])
        revisions: list[int] = []
        failures: list[str] = []

        def work(n: int) -> None:
            for i in range(10):
                user = f"user:t{n}-{i}"
                revisions.append(int(client.write_relationships(
                    touch=[f"workspace:{ws}#guest@{user}"])))
                if not client.check(user, "view", f"workspace:{ws}").allowed:
                    failures.append(user)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert len(revisions) == 80 and client.revision == str(max(revisions))


class TestReadYourWritesOnRedis:
    def test_every_write_is_seen_by_the_next_check(self, redis_gatehouse: Gatehouse) -> None:
        """On Redis the index follows the changelog; the client's token makes each check
        right after a write see it (grant, then revoke, twenty times)."""
        with Client(redis_gatehouse.address) as c:
            ws = uid("ws")
            c.write_relationships(touch=[f"workspace:{ws}#parent@organization:northwind"])
            for i in range(20):
                user = f"user:rw{i}"
                c.write_relationships(touch=[f"workspace:{ws}#user@{user}"])
                assert c.check(user, "view", f"workspace:{ws}").allowed, i
                c.write_relationships(delete=[f"workspace:{ws}#user@{user}"])
                assert not c.check(user, "view", f"workspace:{ws}").allowed, i
            assert list(c.list_accessible("user:uma", "view", "data_flow",
                                          within="workspace:globex")) == ["globex-finance"]
