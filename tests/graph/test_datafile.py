"""Bootstrap data files: checked line by line against the policy, loaded all or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gatehouse.errors import DataFileError
from gatehouse.graph.changes import Change, PutObject, TouchRelationship
from gatehouse.graph.datafile import load_data_file, load_data_text
from gatehouse.graph.index import GraphIndex
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.policy.loader import load_policy
from gatehouse.policy.model import CompiledPolicy

REPO = Path(__file__).resolve().parents[2]
POLICY: CompiledPolicy = load_policy(REPO / "policies" / "coupler")
EXAMPLE = REPO / "examples" / "coupler.data.yaml"


def problems(text: str) -> list[str]:
    """The rendered problems of a data file that must fail to load."""
    with pytest.raises(DataFileError) as info:
        load_data_text(text, "d.yaml", POLICY)
    return [str(p) for p in info.value.problems]


def one_problem(text: str) -> str:
    (only,) = problems(text)
    return only


class TestValidFiles:
    def test_example_file_loads(self) -> None:
        """The shipped example data file loads against the coupler policy."""
        ops = load_data_file(EXAMPLE, POLICY)
        puts = [op for op in ops if isinstance(op, PutObject)]
        rels = [op.relationship for op in ops if isinstance(op, TouchRelationship)]
        raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
        assert [str(op.ref) for op in puts] == list(raw["objects"])
        assert [str(r) for r in rels] == list(dict.fromkeys(raw["relationships"]))
        assert Relationship.parse("organization:northwind#owner@user:olivia") in rels
        hubspot = next(op for op in puts if op.ref == ObjectRef("connection", "acme-hubspot"))
        assert hubspot.attributes["shared"] is True

    def test_example_file_builds_the_expected_graph(self) -> None:
        """Applied to an index, the example data gives each flow its workspace and organization."""
        index = GraphIndex()
        index.apply([Change(1, tuple(load_data_file(EXAMPLE, POLICY)))])
        assert index.chain("data_flow:acme-gwen-report") == {
            "data_flow": "data_flow:acme-gwen-report",
            "workspace": "workspace:acme",
            "organization": "organization:northwind",
        }

    def test_objects_come_before_relationships_in_file_order(self) -> None:
        """Operations keep the file's order, objects first."""
        ops = load_data_text(
            "relationships:\n"
            "  - workspace:b#parent@organization:o\n"
            "  - workspace:a#parent@organization:o\n"
            "objects:\n"
            "  user:z: {}\n"
            "  user:y: {email: y@example.com}\n",
            "d.yaml", POLICY,
        )
        assert [str(op.ref) for op in ops if isinstance(op, PutObject)] == ["user:z", "user:y"]
        assert [str(op.relationship) for op in ops if isinstance(op, TouchRelationship)] == [
            "workspace:b#parent@organization:o", "workspace:a#parent@organization:o",
        ]

    @pytest.mark.parametrize("text", ["", "# nothing yet\n", "objects:\nrelationships:\n"])
    def test_empty_file_loads_nothing(self, text: str) -> None:
        """An empty data file, or empty sections, load as no operations."""
        assert load_data_text(text, "d.yaml", POLICY) == []

    def test_objects_without_attributes(self) -> None:
        """An object written with no attributes (null or {}) is still created."""
        ops = load_data_text("objects:\n  user:a:\n  user:b: {}\n", "d.yaml", POLICY)
        assert ops == [PutObject(ObjectRef("user", "a"), {}), PutObject(ObjectRef("user", "b"), {})]

    def test_repeated_relationship_is_written_once(self) -> None:
        """A relationship listed twice (even a parent edge) is one relationship."""
        ops = load_data_text(
            "relationships:\n"
            "  - workspace:a#parent@organization:o\n"
            "  - workspace:a#parent@organization:o\n",
            "d.yaml", POLICY,
        )
        assert len(ops) == 1

    def test_list_attributes(self) -> None:
        """A list attribute takes a list of strings."""
        (op,) = load_data_text("objects:\n  connection:c: {tenants: [a, b]}\n", "d.yaml", POLICY)
        assert isinstance(op, PutObject) and op.attributes == {"tenants": ["a", "b"]}


class TestBadLines:
    def test_malformed_relationship(self) -> None:
        """A relationship that is not type:id#relation@type:id is reported at its line."""
        assert one_problem("relationships:\n  - workspace:acme#admin user:adam\n") == (
            "d.yaml:2:5 relationships[0]: 'workspace:acme#admin user:adam' is not of the form "
            "type:id#relation@type:id"
        )

    def test_relationship_that_is_not_text(self) -> None:
        """A relationship written as a mapping is reported at its line."""
        assert one_problem("relationships:\n  - {resource: workspace:acme}\n") == (
            "d.yaml:2:5 relationships[0]: write a relationship as type:id#relation@type:id"
        )

    def test_bad_id(self) -> None:
        """An id with characters ids may not hold is reported at its line."""
        assert one_problem("relationships:\n  - workspace:acme corp#admin@user:adam\n") == (
            "d.yaml:2:5 relationships[0]: 'acme corp' is not a valid id (1-256 of letters, "
            "digits and _ . - = + / |; it may not start with punctuation)"
        )

    def test_unknown_object_type(self) -> None:
        """An object of a type the policy does not declare is reported at its line."""
        assert one_problem("objects:\n  user:a: {}\n  robot:r2: {}\n") == (
            "d.yaml:3:3 objects.robot:r2: unknown type 'robot' (declared: access_link, ai_chat, "
            "connection, dashboard, data_flow, email_domain, invitation, organization, user, "
            "workspace)"
        )

    def test_unknown_resource_type_in_relationship(self) -> None:
        """A relationship on an undeclared type is reported at its line."""
        assert one_problem("relationships:\n  - robot:r2#admin@user:adam\n").startswith(
            "d.yaml:2:5 relationships[0]: unknown type 'robot'"
        )

    def test_unknown_relation(self) -> None:
        """A relation the type does not have is reported, listing the ones it has."""
        assert one_problem("relationships:\n  - workspace:acme#owner@user:adam\n") == (
            "d.yaml:2:5 relationships[0]: type 'workspace' has no relation 'owner' "
            "(known: admin, guest, parent, user)"
        )

    def test_unknown_subject_type(self) -> None:
        """A subject of an undeclared type is reported at its line."""
        assert one_problem("relationships:\n  - workspace:acme#admin@robot:r2\n").startswith(
            "d.yaml:2:5 relationships[0]: unknown subject type 'robot'"
        )

    @pytest.mark.parametrize(
        ("rel", "message"),
        [
            ("workspace:acme#admin@organization:northwind",
             "workspace#admin takes subjects of type user, not 'organization'"),
            ("data_flow:f#parent@organization:northwind",
             "data_flow#parent takes subjects of type workspace, not 'organization'"),
            ("organization:northwind#ai_workspace@data_flow:f",
             "organization#ai_workspace takes subjects of type workspace, not 'data_flow'"),
        ],
    )
    def test_wrong_subject_type(self, rel: str, message: str) -> None:
        """A subject of a type the relation does not take is reported at its line."""
        expected = f"d.yaml:2:5 relationships[0]: {message}"
        assert one_problem(f"relationships:\n  - {rel}\n") == expected

    def test_unknown_attribute(self) -> None:
        """An attribute the type does not declare is reported at the object's line."""
        assert one_problem("objects:\n  user:a: {email: a@x, nickname: al}\n") == (
            "d.yaml:2:3 objects.user:a: type 'user' has no attribute 'nickname' (declared: email)"
        )

    @pytest.mark.parametrize(
        ("attrs", "message"),
        [
            ("{shared: 'yes'}", "attribute 'shared' of 'connection' is a bool, not 'yes'"),
            ("{source_type: 7}", "attribute 'source_type' of 'connection' is a string, not 7"),
            ("{tenants: a}", "attribute 'tenants' of 'connection' is a list, not 'a'"),
            ("{tenants: [1]}", "attribute 'tenants' of 'connection' is a list, not [1]"),
            ("{shared: null}", "attribute 'shared' of 'connection' is a bool, not None"),
        ],
    )
    def test_attribute_of_wrong_type(self, attrs: str, message: str) -> None:
        """An attribute value of the wrong type is reported at the object's line."""
        assert one_problem(f"objects:\n  connection:c1: {attrs}\n") == (
            f"d.yaml:2:3 objects.connection:c1: {message}"
        )

    def test_attributes_not_a_mapping(self) -> None:
        """Attributes written as anything but a mapping are reported."""
        assert one_problem("objects:\n  user:a: [x]\n") == (
            "d.yaml:2:3 objects.user:a: attributes must be a mapping of name: value"
        )

    def test_object_that_is_not_type_id(self) -> None:
        """An object key without type:id is reported at its line."""
        assert one_problem("objects:\n  alice: {}\n") == (
            "d.yaml:2:3 objects.alice: 'alice' is not of the form type:id"
        )

    def test_two_parents_for_one_object(self) -> None:
        """A second parent for the same object is reported, naming the first and its line."""
        assert one_problem(
            "relationships:\n"
            "  - workspace:acme#parent@organization:northwind\n"
            "  - workspace:acme#admin@user:adam\n"
            "  - workspace:acme#parent@organization:globex\n"
        ) == (
            "d.yaml:4:5 relationships[2]: workspace:acme already has parent "
            "organization:northwind (line 2); an object has one parent"
        )

    def test_object_written_twice(self) -> None:
        """The same object listed twice is a duplicate key at the second line."""
        assert one_problem("objects:\n  user:a: {}\n  user:a: {email: x}\n") == (
            "d.yaml:3:3 objects.user:a: duplicate key 'user:a' (first written at line 2)"
        )

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("- workspace:a#admin@user:x\n",
             "d.yaml:1:1 data must be a mapping with objects and relationships"),
            ("just text\n", "d.yaml:1:1 data must be a mapping with objects and relationships"),
            ("objects: [user:a]\n",
             "d.yaml:1:10 objects: objects must map type:id to attributes"),
            ("relationships: {a: b}\n",
             "d.yaml:1:16 relationships: relationships must be a list of "
             "type:id#relation@type:id"),
            ("objects: {}\nusers: []\n",
             "d.yaml:2:1 users: unknown key 'users' (known: objects, relationships)"),
        ],
    )
    def test_not_a_mapping_or_wrong_sections(self, text: str, expected: str) -> None:
        """A file or section of the wrong shape is reported where it is written."""
        assert one_problem(text) == expected

    def test_yaml_syntax_error(self) -> None:
        """A file that is not YAML is reported with the parser's position."""
        assert one_problem("objects:\n  user:a: {email: a\n").startswith(
            "d.yaml:3:1 YAML syntax error:"
        )


class TestAllOrNothing:
    TEXT = (
        "objects:\n"                                          # 1
        "  user:adam: {email: adam@example.com}\n"            # 2
        "  robot:r2: {}\n"                                    # 3
        "  connection:c1: {shared: maybe}\n"                  # 4
        "relationships:\n"                                    # 5
        "  - workspace:acme#parent@organization:northwind\n"  # 6
        "  - workspace:acme#admin@user:adam\n"                # 7
        "  - not a relationship\n"                            # 8
        "  - workspace:acme#boss@user:adam\n"                 # 9
        "  - workspace:acme#parent@organization:globex\n"     # 10
        "  - workspace:acme#admin@workspace:acme\n"           # 11
    )

    def test_every_problem_is_reported_at_once_in_line_order(self) -> None:
        """All bad lines of a file are reported together, sorted by line."""
        lines = [p.split(" ", 1)[0] for p in problems(self.TEXT)]
        assert lines == ["d.yaml:3:3", "d.yaml:4:3", "d.yaml:8:5", "d.yaml:9:5", "d.yaml:10:5",
                         "d.yaml:11:5"]

    def test_nothing_is_loaded_when_any_line_is_bad(self) -> None:
        """One bad line rejects the whole file: the loader raises instead of returning the rest."""
        good = "objects:\n  user:adam: {}\nrelationships:\n  - workspace:acme#admin@user:adam\n"
        assert len(load_data_text(good, "d.yaml", POLICY)) == 2
        with pytest.raises(DataFileError) as info:
            load_data_text(good + "  - workspace:acme#admin@user:adam extra\n", "d.yaml", POLICY)
        assert len(info.value.problems) == 1
        assert str(info.value).startswith("data file has 1 problem(s):\n  d.yaml:5:5 ")


class TestLoadDataFile:
    def test_missing_file(self, tmp_path: Path) -> None:
        """A file that cannot be read is a DataFileError naming it."""
        path = tmp_path / "missing.yaml"
        with pytest.raises(DataFileError) as info:
            load_data_file(path, POLICY)
        (problem,) = info.value.problems
        assert problem.file == str(path) and problem.message.startswith("cannot read:")

    def test_problems_name_the_file(self, tmp_path: Path) -> None:
        """Problems carry the path the file was loaded from."""
        path = tmp_path / "data.yaml"
        path.write_text("objects:\n  robot:r2: {}\n")
        with pytest.raises(DataFileError) as info:
            load_data_file(path, POLICY)
        assert info.value.problems[0].file == str(path)
