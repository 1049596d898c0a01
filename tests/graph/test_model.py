"""Values of the relationship graph: object references, relationships, keys."""

from __future__ import annotations

import pytest

from gatehouse.errors import InvalidArgument
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.names import object_key


class TestObjectRef:
    def test_parse_and_str_round_trip(self) -> None:
        """type:id parses into its parts and prints back the same."""
        ref = ObjectRef.parse("workspace:acme")
        assert (ref.type, ref.id) == ("workspace", "acme")
        assert str(ref) == "workspace:acme"

    def test_id_may_not_hold_a_second_colon(self) -> None:
        """Only the first ':' separates type from id, so an id cannot smuggle a second one."""
        with pytest.raises(InvalidArgument) as info:
            ObjectRef.parse("user:a:b", "subject")
        assert info.value.field == "subject.id"

    @pytest.mark.parametrize(("text", "field"), [
        ("alice", "subject"), ("User:alice", "subject.type"), (":alice", "subject.type"),
        ("user:", "subject.id"),
    ])
    def test_parse_errors_name_the_field(self, text: str, field: str) -> None:
        """A malformed reference names which part of which field is wrong."""
        with pytest.raises(InvalidArgument) as info:
            ObjectRef.parse(text, "subject")
        assert info.value.field == field

    def test_key_is_interned_and_canonical(self) -> None:
        """The key of equal references is one shared string."""
        a = ObjectRef("user", "".join(["ali", "ce"]))
        b = ObjectRef.parse("user:alice")
        assert a == b and hash(a) == hash(b)
        assert a.key == "user:alice" and a.key is b.key is object_key("user", "alice")

    def test_ordering(self) -> None:
        """References sort by type, then id."""
        refs = [ObjectRef("user", "b"), ObjectRef("org", "z"), ObjectRef("user", "a")]
        assert [str(r) for r in sorted(refs)] == ["org:z", "user:a", "user:b"]


class TestRelationship:
    def test_parse_and_str_round_trip(self) -> None:
        """resource#relation@subject parses into its parts and prints back the same."""
        text = "workspace:acme#admin@user:adam"
        rel = Relationship.parse(text)
        assert rel == Relationship(
            ObjectRef("workspace", "acme"), "admin", ObjectRef("user", "adam")
        )
        assert str(rel) == text

    def test_surrounding_whitespace_is_ignored(self) -> None:
        """Spaces around a relationship, as in a hand-written file, are dropped."""
        assert str(Relationship.parse("  workspace:acme#admin@user:adam \n")) == (
            "workspace:acme#admin@user:adam"
        )

    @pytest.mark.parametrize(
        ("text", "field", "reason"),
        [
            ("workspace:acme#admin", "relationship",
             "'workspace:acme#admin' is not of the form type:id#relation@type:id"),
            ("workspace:acme@user:adam", "relationship",
             "'workspace:acme@user:adam' is not of the form type:id#relation@type:id"),
            ("workspace:acme#Admin@user:adam", "relationship", "'Admin' is not a relation name"),
            ("workspace:acme#@user:adam", "relationship", "'' is not a relation name"),
            ("Workspace:acme#admin@user:adam", "relationship.resource.type", None),
            ("workspace:acme#admin@user", "relationship.subject", None),
            ("workspace:acme#admin@user:a b", "relationship.subject.id", None),
        ],
    )
    def test_parse_errors(self, text: str, field: str, reason: str | None) -> None:
        """A malformed relationship names the part that is wrong."""
        with pytest.raises(InvalidArgument) as info:
            Relationship.parse(text)
        assert info.value.field == field
        if reason is not None:
            assert info.value.reason == reason

    def test_equal_relationships_are_one(self) -> None:
        """Relationships are values: equal ones hash alike and collapse in a set."""
        a = Relationship.parse("workspace:acme#admin@user:adam")
        b = Relationship.parse("workspace:acme#admin@user:adam")
        assert {a, b} == {a}
