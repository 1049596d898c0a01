"""GraphService over real gRPC, on the memory store and on Redis."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest

from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as pb
from gatehouse.v1 import graph_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess, start_on_store


def ref(text: str) -> apb.ObjectReference:
    t, _, i = text.partition(":")
    return apb.ObjectReference(type=t, id=i)


def relationship(text: str) -> pb.Relationship:
    left, _, subj = text.partition("@")
    res, _, rel = left.partition("#")
    return pb.Relationship(resource=ref(res), relation=rel, subject=ref(subj))


def update(text: str, op: int = pb.RelationshipUpdate.OPERATION_TOUCH) -> pb.RelationshipUpdate:
    return pb.RelationshipUpdate(operation=op, relationship=relationship(text))


def check(stub: apb_grpc.AuthorizationServiceStub, subject: str, action: str, resource: str,
          at: str = "") -> apb.CheckResponse:
    req = apb.CheckRequest(subject=ref(subject), action=action, resource=ref(resource))
    if at:
        req.consistency.at_least_as_fresh = at
    return stub.Check(req, timeout=10)


def as_text(r: pb.Relationship) -> str:
    return (f"{r.resource.type}:{r.resource.id}#{r.relation}@{r.subject.type}:{r.subject.id}")


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    proc = start_on_store(request, tmp_path_factory, request.param, "--policy",
                          "policies/coupler", "--data", "examples/coupler.data.yaml")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def graph(server: ServerProcess) -> pb_grpc.GraphServiceStub:
    return pb_grpc.GraphServiceStub(server.channel())


@pytest.fixture(scope="module")
def authz(server: ServerProcess) -> apb_grpc.AuthorizationServiceStub:
    return apb_grpc.AuthorizationServiceStub(server.channel())


class TestWriteRelationships:
    def test_write_then_check_at_the_returned_revision(
        self, graph: pb_grpc.GraphServiceStub, authz: apb_grpc.AuthorizationServiceStub
    ) -> None:
        """A Check at the write's revision sees the write; deleting takes it away again."""
        assert check(authz, "user:zoe", "view", "workspace:initech").decision == \
            apb.DECISION_DENY
        resp = graph.WriteRelationships(pb.WriteRelationshipsRequest(
            updates=[update("workspace:initech#guest@user:zoe")]))
        assert resp.revision.isdigit()
        got = check(authz, "user:zoe", "view", "workspace:initech", at=resp.revision)
        assert got.decision == apb.DECISION_ALLOW
        assert int(got.revision) >= int(resp.revision)
        gone = graph.WriteRelationships(pb.WriteRelationshipsRequest(updates=[
            update("workspace:initech#guest@user:zoe", pb.RelationshipUpdate.OPERATION_DELETE)]))
        assert check(authz, "user:zoe", "view", "workspace:initech", at=gone.revision
                     ).decision == apb.DECISION_DENY

    @pytest.mark.parametrize(
        ("text", "field", "reason"),
        [
            ("workspace:acme#pilot@user:x", "updates[1].relationship", "no relation 'pilot'"),
            ("spaceship:s#parent@organization:o", "updates[1].relationship", "unknown type"),
            ("workspace:acme#admin@workspace:globex", "updates[1].relationship",
             "takes subjects of type user"),
            ("workspace:acme#admin@user:", "updates[1].relationship.subject.id", "required"),
            ("workspace:acme#@user:x", "updates[1].relationship.relation", "required"),
        ],
    )
    def test_bad_items_fail_whole_batch_naming_the_item(
        self, graph: pb_grpc.GraphServiceStub, authz: apb_grpc.AuthorizationServiceStub,
        text: str, field: str, reason: str,
    ) -> None:
        """A bad tuple fails INVALID_ARGUMENT naming it; the good item beside it is not applied."""
        good = update("workspace:globex#guest@user:half")
        with pytest.raises(grpc.RpcError) as info:
            graph.WriteRelationships(pb.WriteRelationshipsRequest(updates=[good, update(text)]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(field), info.value.details()
        assert reason in info.value.details()
        full = apb.Consistency(fully_consistent=True)
        req = apb.CheckRequest(subject=ref("user:half"), action="view",
                               resource=ref("workspace:globex"), consistency=full)
        assert authz.Check(req).decision == apb.DECISION_DENY

    def test_oversized_and_empty_batches_are_invalid(
        self, graph: pb_grpc.GraphServiceStub
    ) -> None:
        """More than 1,000 updates, or none, fail INVALID_ARGUMENT on `updates`."""
        many = [update(f"workspace:acme#guest@user:g{i}") for i in range(1001)]
        for updates in (many, []):
            with pytest.raises(grpc.RpcError) as info:
                graph.WriteRelationships(pb.WriteRelationshipsRequest(updates=updates))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details().startswith("updates:")

    def test_create_and_preconditions_abort_on_conflict(
        self, graph: pb_grpc.GraphServiceStub
    ) -> None:
        """CREATE of an existing tuple and a failing precondition are ABORTED, writing nothing."""
        with pytest.raises(grpc.RpcError) as info:
            graph.WriteRelationships(pb.WriteRelationshipsRequest(updates=[
                update("workspace:acme#admin@user:adam", pb.RelationshipUpdate.OPERATION_CREATE)]))
        assert info.value.code() == grpc.StatusCode.ABORTED
        pre = pb.Precondition(operation=pb.Precondition.OPERATION_MUST_EXIST,
                              relationship=relationship("workspace:acme#admin@user:nobody"))
        with pytest.raises(grpc.RpcError) as info:
            graph.WriteRelationships(pb.WriteRelationshipsRequest(
                updates=[update("workspace:acme#guest@user:pre")], preconditions=[pre]))
        assert info.value.code() == grpc.StatusCode.ABORTED
        assert "precondition failed" in info.value.details()

    def test_orphans_and_second_parents_are_failed_precondition(
        self, graph: pb_grpc.GraphServiceStub
    ) -> None:
        """Tenancy rules refuse an orphan resource and a second parent, naming the rule."""
        with pytest.raises(grpc.RpcError) as info:
            graph.WriteRelationships(pb.WriteRelationshipsRequest(
                updates=[update("data_flow:orphan#owner@user:ben")]))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details().startswith("parent-required:")
        with pytest.raises(grpc.RpcError) as info:
            graph.WriteRelationships(pb.WriteRelationshipsRequest(
                updates=[update("data_flow:acme-ads-daily#parent@workspace:globex")]))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details().startswith("single-parent:")


class TestReadAndDelete:
    def test_read_pages_with_cursor_until_complete(
        self, graph: pb_grpc.GraphServiceStub
    ) -> None:
        """Paging with the cursor yields every match once, in order, and ends complete."""
        w = graph.WriteRelationships(pb.WriteRelationshipsRequest(
            updates=[update(f"workspace:globex#guest@user:page{i:02d}") for i in range(7)]))
        flt = pb.RelationshipFilter(resource_type="workspace", resource_id="globex",
                                    relation="guest")
        seen: list[str] = []
        cursor = ""
        pages = 0
        while True:
            req = pb.ReadRelationshipsRequest(filter=flt, page_size=3, cursor=cursor)
            if not cursor:
                req.consistency.at_least_as_fresh = w.revision
            msgs = list(graph.ReadRelationships(req))
            pages += 1
            seen += [as_text(m.relationship) for m in msgs if m.HasField("relationship")]
            last = msgs[-1]
            assert last.revision
            if last.complete:
                assert not last.next_cursor
                break
            cursor = last.next_cursor
        expected = [f"workspace:globex#guest@user:page{i:02d}" for i in range(7)]
        assert [s for s in seen if "page" in s] == expected
        assert seen == sorted(seen)
        assert pages == 3

    def test_bad_cursor_and_filter_are_invalid(self, graph: pb_grpc.GraphServiceStub) -> None:
        """A forged cursor or a filter without resource type fails INVALID_ARGUMENT."""
        flt = pb.RelationshipFilter(resource_type="workspace")
        for req, field in (
            (pb.ReadRelationshipsRequest(filter=flt, cursor="not-a-cursor"), "cursor"),
            (pb.ReadRelationshipsRequest(filter=pb.RelationshipFilter()), "filter.resource_type"),
            (pb.ReadRelationshipsRequest(filter=flt, page_size=5000), "page_size"),
        ):
            with pytest.raises(grpc.RpcError) as info:
                list(graph.ReadRelationships(req))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details().startswith(field)

    def test_delete_by_filter(self, graph: pb_grpc.GraphServiceStub,
                              authz: apb_grpc.AuthorizationServiceStub) -> None:
        """Deleting by filter removes every match and reports how many."""
        graph.WriteRelationships(pb.WriteRelationshipsRequest(
            updates=[update(f"workspace:initech#user@user:del{i}") for i in range(4)]))
        resp = graph.DeleteRelationships(pb.DeleteRelationshipsRequest(
            filter=pb.RelationshipFilter(resource_type="workspace", resource_id="initech",
                                         relation="user")))
        assert resp.deleted == 4
        assert check(authz, "user:del0", "view", "workspace:initech", at=resp.revision
                     ).decision == apb.DECISION_DENY


class TestObjectsAndWatch:
    def test_object_attributes_drive_conditions(
        self, graph: pb_grpc.GraphServiceStub, authz: apb_grpc.AuthorizationServiceStub
    ) -> None:
        """Sharing a connection (attribute write) lets another workspace user use it."""
        assert check(authz, "user:ben", "use", "connection:acme-gads").decision == \
            apb.DECISION_DENY
        upd = pb.ObjectUpdate(operation=pb.ObjectUpdate.OPERATION_PUT,
                              object=ref("connection:acme-gads"))
        upd.attributes.update({"shared": True, "source_type": "google_ads"})
        resp = graph.WriteObjects(pb.WriteObjectsRequest(updates=[upd]))
        assert check(authz, "user:ben", "use", "connection:acme-gads", at=resp.revision
                     ).decision == apb.DECISION_ALLOW
        read = graph.ReadObject(pb.ReadObjectRequest(object=ref("connection:acme-gads")))
        assert dict(read.attributes)["shared"] is True

    def test_bad_attributes_are_invalid(self, graph: pb_grpc.GraphServiceStub) -> None:
        """An undeclared or mistyped attribute fails INVALID_ARGUMENT naming the update."""
        upd = pb.ObjectUpdate(operation=pb.ObjectUpdate.OPERATION_PUT,
                              object=ref("connection:acme-gads"))
        upd.attributes.update({"shared": "yes"})
        with pytest.raises(grpc.RpcError) as info:
            graph.WriteObjects(pb.WriteObjectsRequest(updates=[upd]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("updates[0].attributes")

    def test_watch_streams_changes_from_a_revision(
        self, graph: pb_grpc.GraphServiceStub
    ) -> None:
        """Watch from a revision replays later changes in order and then follows new ones."""
        first = graph.WriteRelationships(pb.WriteRelationshipsRequest(
            updates=[update("workspace:acme#guest@user:watch1")]))
        after = str(int(first.revision) - 1)
        stream = graph.Watch(pb.WatchRequest(after_revision=after), timeout=10)
        got: list[pb.WatchResponse] = []

        def read() -> None:
            for msg in stream:
                got.append(msg)
                if len(got) == 2:
                    break

        reader = threading.Thread(target=read)
        reader.start()
        second = graph.WriteRelationships(pb.WriteRelationshipsRequest(
            updates=[update("workspace:acme#guest@user:watch2")]))
        reader.join(10)
        stream.cancel()
        assert [m.revision for m in got] == [first.revision, second.revision]
        assert as_text(got[1].relationship_updates[0].relationship) == \
            "workspace:acme#guest@user:watch2"


class TestHostileWrites:
    def test_deleting_a_user_with_roles_is_refused(
        self, graph: pb_grpc.GraphServiceStub, authz: apb_grpc.AuthorizationServiceStub
    ) -> None:
        """WriteObjects DELETE of a user who still holds roles is FAILED_PRECONDITION naming the
        user and the count, and the user's access is unchanged."""
        with pytest.raises(grpc.RpcError) as info:
            graph.WriteObjects(pb.WriteObjectsRequest(updates=[pb.ObjectUpdate(
                operation=pb.ObjectUpdate.OPERATION_DELETE, object=ref("user:uma"))]))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "object-in-use" in info.value.details() and "user:uma" in info.value.details()
        full = apb.CheckRequest(subject=ref("user:uma"), action="view",
                                resource=ref("workspace:acme"),
                                consistency=apb.Consistency(fully_consistent=True))
        assert authz.Check(full, timeout=10).decision == apb.DECISION_ALLOW

    def test_relationships_across_organizations_are_refused(
        self, graph: pb_grpc.GraphServiceStub
    ) -> None:
        """An organization cannot point its AI workspace at another organization's workspace."""
        graph.WriteRelationships(pb.WriteRelationshipsRequest(
            updates=[update("workspace:evil-ws#parent@organization:evil")]))
        with pytest.raises(grpc.RpcError) as info:
            graph.WriteRelationships(pb.WriteRelationshipsRequest(
                updates=[update("organization:evil#ai_workspace@workspace:acme")]))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "tenant-boundary" in info.value.details()

    def test_a_delete_that_matches_nothing_answers_the_current_revision(
        self, graph: pb_grpc.GraphServiceStub
    ) -> None:
        """Deleting an absent relationship commits nothing: the same revision comes back twice."""
        absent = update("workspace:acme#guest@user:never", pb.RelationshipUpdate.OPERATION_DELETE)
        first = graph.WriteRelationships(pb.WriteRelationshipsRequest(updates=[absent]))
        second = graph.WriteRelationships(pb.WriteRelationshipsRequest(updates=[absent]))
        assert first.revision == second.revision

    def test_the_same_create_twice_in_one_batch_is_invalid(
        self, graph: pb_grpc.GraphServiceStub
    ) -> None:
        """Two CREATEs of one relationship in one call are INVALID_ARGUMENT naming the second."""
        create = update("workspace:acme#guest@user:twice", pb.RelationshipUpdate.OPERATION_CREATE)
        with pytest.raises(grpc.RpcError) as info:
            graph.WriteRelationships(pb.WriteRelationshipsRequest(updates=[create, create]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith("updates[1]:")
