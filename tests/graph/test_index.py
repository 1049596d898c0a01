"""The in-memory graph index: edges both ways, ancestor chains, revisions."""

from __future__ import annotations

from gatehouse.graph.changes import (
    Change,
    DeleteObject,
    DeleteRelationship,
    Operation,
    PutObject,
    TouchRelationship,
)
from gatehouse.graph.index import GraphIndex
from gatehouse.graph.model import ObjectRecord, ObjectRef, Relationship, Snapshot

ORG_TREE = [
    "workspace:acme#parent@organization:northwind",
    "workspace:globex#parent@organization:northwind",
    "data_flow:f1#parent@workspace:acme",
    "connection:c1#parent@workspace:acme",
    "data_flow:f1#owner@user:ben",
    "workspace:acme#admin@user:adam",
    "workspace:globex#admin@user:adam",
]


def touch(*texts: str) -> list[Operation]:
    return [TouchRelationship(Relationship.parse(t)) for t in texts]


def delete(*texts: str) -> list[Operation]:
    return [DeleteRelationship(Relationship.parse(t)) for t in texts]


def put(text: str, **attributes: object) -> PutObject:
    return PutObject(ObjectRef.parse(text), attributes)


def index_with(*texts: str) -> GraphIndex:
    """An index at revision 1 holding the given relationships."""
    index = GraphIndex()
    index.apply([Change(1, tuple(touch(*texts)))])
    return index


class TestReading:
    def test_forward_edges(self) -> None:
        """holds and subjects answer who holds a relation on an object."""
        index = index_with(*ORG_TREE)
        assert index.holds("workspace:acme", "admin", "user:adam")
        assert not index.holds("workspace:acme", "admin", "user:ben")
        assert not index.holds("workspace:nowhere", "admin", "user:adam")
        assert index.subjects("workspace:acme", "parent") == {"organization:northwind"}
        assert index.subjects("workspace:acme", "guest") == frozenset()

    def test_reverse_edges(self) -> None:
        """objects answers which objects a subject holds a relation on."""
        index = index_with(*ORG_TREE)
        assert index.objects("user:adam", "admin") == {"workspace:acme", "workspace:globex"}
        assert index.objects("organization:northwind", "parent") == {
            "workspace:acme", "workspace:globex",
        }
        assert index.objects("user:ben", "admin") == frozenset()

    def test_attributes(self) -> None:
        """Objects carry their attributes; unknown objects have none."""
        index = GraphIndex()
        index.apply([Change(1, (put("connection:c1", shared=True),))])
        assert index.attributes("connection:c1") == {"shared": True}
        assert index.attributes("connection:nope") == {}

    def test_put_object_replaces_attributes(self) -> None:
        """Writing an object again replaces its attributes as a whole."""
        index = GraphIndex()
        index.apply([Change(1, (put("connection:c1", shared=True, source_type="csv"),)),
                     Change(2, (put("connection:c1", shared=False),))])
        assert index.attributes("connection:c1") == {"shared": False}

    def test_objects_exist_through_edges_or_attributes(self) -> None:
        """An object exists once it has attributes or takes part in a relationship."""
        index = index_with("workspace:acme#admin@user:adam")
        index.apply([Change(2, (put("user:solo"),))])
        for key in ("workspace:acme", "user:adam", "user:solo"):
            assert index.exists(key)
        assert not index.exists("user:ghost")


class TestChains:
    def test_chain_holds_every_ancestor_by_type(self) -> None:
        """An object's chain maps its own type and each ancestor's type to that object."""
        index = index_with(*ORG_TREE)
        assert index.chain("data_flow:f1") == {
            "data_flow": "data_flow:f1",
            "workspace": "workspace:acme",
            "organization": "organization:northwind",
        }
        assert index.chain("organization:northwind") == {
            "organization": "organization:northwind",
        }

    def test_chain_is_complete_whatever_the_order_edges_arrive_in(self) -> None:
        """A child linked before its parent is linked still sees every ancestor."""
        index = GraphIndex()
        index.apply([Change(1, tuple(touch("data_flow:f1#parent@workspace:acme")))])
        assert index.chain("data_flow:f1") == {
            "data_flow": "data_flow:f1", "workspace": "workspace:acme",
        }
        index.apply([Change(2, tuple(touch("workspace:acme#parent@organization:northwind")))])
        assert index.chain("data_flow:f1")["organization"] == "organization:northwind"

    def test_moving_a_workspace_rechains_its_descendants(self) -> None:
        """When a workspace moves to another organization, everything inside it follows."""
        index = index_with(*ORG_TREE)
        index.apply([Change(2, (
            *delete("workspace:acme#parent@organization:northwind"),
            *touch("workspace:acme#parent@organization:initech"),
        ))])
        for key in ("workspace:acme", "data_flow:f1", "connection:c1"):
            assert index.chain(key)["organization"] == "organization:initech", key
        assert index.chain("workspace:globex")["organization"] == "organization:northwind"
        assert index.objects("organization:northwind", "parent") == {"workspace:globex"}

    def test_moving_a_flow_between_workspaces(self) -> None:
        """A flow moved to a workspace of another organization reaches the new one only."""
        index = index_with(*ORG_TREE, "workspace:other#parent@organization:elsewhere")
        index.apply([Change(2, (
            *delete("data_flow:f1#parent@workspace:acme"),
            *touch("data_flow:f1#parent@workspace:other"),
        ))])
        assert index.chain("data_flow:f1") == {
            "data_flow": "data_flow:f1",
            "workspace": "workspace:other",
            "organization": "organization:elsewhere",
        }

    def test_removing_a_parent_edge_cuts_the_chain_below(self) -> None:
        """Without its parent edge, an object and its descendants lose those ancestors."""
        index = index_with(*ORG_TREE)
        index.apply([Change(2, tuple(delete("workspace:acme#parent@organization:northwind")))])
        assert "organization" not in index.chain("workspace:acme")
        assert index.chain("data_flow:f1") == {
            "data_flow": "data_flow:f1", "workspace": "workspace:acme",
        }

    def test_deleting_the_old_parent_after_adding_the_new_keeps_the_new(self) -> None:
        """Adding the new parent before deleting the old one ends on the new parent."""
        index = index_with(*ORG_TREE)
        index.apply([Change(2, (
            *touch("workspace:acme#parent@organization:initech"),
            *delete("workspace:acme#parent@organization:northwind"),
        ))])
        assert index.chain("data_flow:f1")["organization"] == "organization:initech"
        assert index.parent("workspace:acme") == "organization:initech"

    def test_non_parent_relations_do_not_make_ancestors(self) -> None:
        """Roles and ownership are edges, not ancestry."""
        index = index_with(*ORG_TREE)
        assert "user" not in index.chain("data_flow:f1")
        assert index.chain("user:adam") == {"user": "user:adam"}


class TestDeleting:
    def test_deleting_a_relationship_removes_both_directions(self) -> None:
        """A deleted relationship is gone forwards and backwards, and counted out."""
        index = index_with(*ORG_TREE)
        before = index.relationship_count
        index.apply([Change(2, tuple(delete("workspace:acme#admin@user:adam")))])
        assert not index.holds("workspace:acme", "admin", "user:adam")
        assert index.objects("user:adam", "admin") == {"workspace:globex"}
        assert index.relationship_count == before - 1

    def test_objects_left_with_nothing_are_forgotten(self) -> None:
        """An object with no attributes and no edges left no longer exists."""
        index = index_with("workspace:acme#admin@user:adam")
        index.apply([Change(2, tuple(delete("workspace:acme#admin@user:adam")))])
        assert not index.exists("workspace:acme")
        assert not index.exists("user:adam")
        assert (index.forward, index.held, index.up) == ({}, {}, {})
        assert index.relationship_count == 0

    def test_objects_with_attributes_stay(self) -> None:
        """An object keeps existing while it has attributes, edges or not."""
        index = GraphIndex()
        index.apply([Change(1, (put("user:adam", email="a@x"),
                                *touch("workspace:acme#admin@user:adam"))),
                     Change(2, tuple(delete("workspace:acme#admin@user:adam")))])
        assert index.exists("user:adam")
        assert not index.exists("workspace:acme")

    def test_deleting_an_object_keeps_its_edges(self) -> None:
        """Deleting an object drops its attributes; it exists while relationships name it."""
        index = index_with("workspace:acme#admin@user:adam")
        index.apply([Change(2, (put("user:adam", email="a@x"),)),
                     Change(3, (DeleteObject(ObjectRef.parse("user:adam")),))])
        assert index.attributes("user:adam") == {}
        assert index.exists("user:adam")
        index.apply([Change(4, (put("user:solo"),)),
                     Change(5, (DeleteObject(ObjectRef.parse("user:solo")),))])
        assert not index.exists("user:solo")

    def test_deleting_a_missing_relationship_changes_nothing(self) -> None:
        """Deleting what is not there is a no-op, not an error."""
        index = index_with(*ORG_TREE)
        count = index.relationship_count
        index.apply([Change(2, tuple(delete("workspace:acme#guest@user:nobody",
                                            "workspace:acme#admin@user:ben")))])
        assert index.relationship_count == count
        assert index.revision == 2

    def test_touching_twice_counts_once(self) -> None:
        """Writing an existing relationship again changes nothing."""
        index = index_with("workspace:acme#admin@user:adam")
        index.apply([Change(2, tuple(touch("workspace:acme#admin@user:adam")))])
        assert index.relationship_count == 1
        assert index.revision == 2


class TestRevisions:
    def test_apply_advances_the_revision(self) -> None:
        """After applying changes the index is at the last change's revision."""
        index = GraphIndex()
        assert index.revision == 0
        index.apply([Change(1, tuple(touch("workspace:a#admin@user:x"))),
                     Change(2, tuple(touch("workspace:b#admin@user:x")))])
        assert index.revision == 2

    def test_old_changes_are_skipped(self) -> None:
        """A change at or below the index's revision is already applied and is ignored."""
        index = index_with("workspace:acme#admin@user:adam")
        index.apply([Change(3, tuple(delete("workspace:acme#admin@user:adam")))])
        index.apply([Change(2, tuple(touch("workspace:acme#admin@user:adam"))),
                     Change(3, tuple(touch("workspace:acme#admin@user:adam")))])
        assert not index.holds("workspace:acme", "admin", "user:adam")
        assert index.revision == 3

    def test_snapshot_then_changes(self) -> None:
        """An index built from a snapshot at R skips changes up to R and applies later ones."""
        snapshot = Snapshot(
            revision=5,
            objects=(ObjectRecord(ObjectRef.parse("connection:c1"), {"shared": True}),),
            relationships=tuple(Relationship.parse(t) for t in ORG_TREE),
        )
        index = GraphIndex.from_snapshot(snapshot)
        assert index.revision == 5
        assert index.attributes("connection:c1") == {"shared": True}
        assert index.chain("connection:c1")["organization"] == "organization:northwind"
        index.apply([Change(5, tuple(delete("workspace:acme#admin@user:adam"))),
                     Change(6, tuple(touch("workspace:acme#guest@user:gwen")))])
        assert index.holds("workspace:acme", "admin", "user:adam")
        assert index.holds("workspace:acme", "guest", "user:gwen")
        assert index.revision == 6

    def test_snapshot_equals_replayed_changes(self) -> None:
        """Building from a snapshot and applying the same facts as changes give the same index."""
        rels = tuple(Relationship.parse(t) for t in reversed(ORG_TREE))
        from_snapshot = GraphIndex.from_snapshot(Snapshot(1, (), rels))
        replayed = index_with(*ORG_TREE)
        assert from_snapshot.forward == replayed.forward
        assert from_snapshot.held == replayed.held
        assert {k: from_snapshot.chain(k) for k in from_snapshot.up} == \
            {k: replayed.chain(k) for k in replayed.up}


class TestChurn:
    """A long-running server sees objects come and go; the index must not keep the gone."""

    def test_deleted_objects_leave_no_version_entries(self) -> None:
        """Regression (found by the soak, bench/soak.py): every object ever deleted kept
        its entry in ``versions``, so a server whose flows come and go grew without bound
        (about 1 MiB a minute at a hundred writes a second)."""
        index = index_with(*ORG_TREE)
        baseline = len(index.versions)
        rev = 1
        for i in range(2000):
            flow = f"data_flow:churn{i}"
            rev += 1
            index.apply([Change(rev, tuple(touch(f"{flow}#parent@workspace:acme",
                                                 f"{flow}#owner@user:ben")))])
            assert index.version(flow) == rev
            rev += 1
            index.apply([Change(rev, tuple(delete(f"{flow}#parent@workspace:acme",
                                                  f"{flow}#owner@user:ben")))])
            assert index.version(flow) == 0, "a gone object reports no version"
        index.apply([Change(rev + 1, (put("user:temp", email="t@example.com"),)),
                     Change(rev + 2, (DeleteObject(ObjectRef.parse("user:temp")),))])
        assert len(index.versions) <= baseline + 2  # the ancestors, bumped; no gone keys
        assert "user:temp" not in index.versions

    def test_ancestors_still_see_the_churn_and_a_returning_object_gets_a_new_version(
            self) -> None:
        """Caches stamped with a version stay correct: each change below a workspace moves
        its version, and an object deleted and written again comes back with a revision
        it never had before."""
        index = index_with(*ORG_TREE)
        index.apply([Change(2, tuple(touch("data_flow:f9#parent@workspace:acme")))])
        assert index.version("workspace:acme") == 2
        assert index.version("organization:northwind") == 2
        index.apply([Change(3, tuple(delete("data_flow:f9#parent@workspace:acme")))])
        assert index.version("workspace:acme") == 3
        assert index.version("organization:northwind") == 3
        index.apply([Change(4, tuple(touch("data_flow:f9#parent@workspace:acme")))])
        assert index.version("data_flow:f9") == 4
        assert index.version("workspace:acme") == 4
