"""YAML with positions: values, their line and column, and problems instead of exceptions."""

from __future__ import annotations

import pytest

from gatehouse.errors import Problem
from gatehouse.sourcemap import MAX_DEPTH, SourceMap, load, render_path

DOC = """\
types:
  user:
    subject: true
  workspace:
    roles: [admin, user]
permissions:
  workspace:
    - actions: [view]
"""


class TestRenderPath:
    @pytest.mark.parametrize(
        ("path", "text"),
        [
            ((), ""),
            (("types",), "types"),
            (("types", "user", "roles"), "types.user.roles"),
            (("permissions", "connection", 2, "roles", 0), "permissions.connection[2].roles[0]"),
            ((0, "a"), "[0].a"),
        ],
    )
    def test_renders_dotted_and_indexed(self, path: tuple[str | int, ...], text: str) -> None:
        """Keys join with dots and list indexes are bracketed, as in error messages."""
        assert render_path(path) == text


class TestLoad:
    def test_returns_plain_values(self) -> None:
        """A valid document comes back as plain dicts, lists and scalars, with no problems."""
        value, _, problems = load(DOC, "p.yaml")
        assert problems == []
        assert value == {
            "types": {"user": {"subject": True}, "workspace": {"roles": ["admin", "user"]}},
            "permissions": {"workspace": [{"actions": ["view"]}]},
        }

    def test_positions_of_values_and_keys(self) -> None:
        """Every value and key has its 1-based line and column."""
        _, smap, _ = load(DOC, "p.yaml")
        assert smap.position(("types", "workspace", "roles", 1)) == (5, 20)
        assert smap.position(("types", "user", "subject")) == (3, 14)
        assert smap.key_position(("types", "user", "subject")) == (3, 5)
        assert smap.position(("permissions", "workspace", 0)) == (8, 7)
        assert smap.position(()) == (1, 1)

    def test_missing_path_falls_back_to_nearest_ancestor(self) -> None:
        """A path that was not written points at the closest thing that was."""
        _, smap, _ = load(DOC, "p.yaml")
        assert smap.position(("types", "user", "parent")) == smap.position(("types", "user"))
        assert smap.position(("nothing", "here")) == (1, 1)

    def test_problem_carries_file_position_and_path(self) -> None:
        """A problem built from the source map renders as file:line:col path: message."""
        _, smap, _ = load(DOC, "p.yaml")
        problem = smap.problem(("types", "workspace", "roles", 0), "bad role")
        assert str(problem) == "p.yaml:5:13 types.workspace.roles[0]: bad role"
        at_key = smap.problem(("types", "workspace", "roles"), "bad", at_key=True)
        assert (at_key.line, at_key.column) == (5, 5)

    def test_syntax_error_is_a_problem_with_position(self) -> None:
        """A YAML syntax error comes back as one problem at the parser's position."""
        value, _, problems = load("a: [1, 2\nb: 3\n", "p.yaml")
        assert value is None
        assert [str(p) for p in problems] == [
            "p.yaml:2:2 YAML syntax error: while parsing a flow sequence (line 1): "
            "expected ',' or ']', but got ':'"
        ]

    def test_duplicate_key_is_reported_and_first_value_kept(self) -> None:
        """A key written twice is a problem naming both lines; the first value stays."""
        value, _, problems = load("a: 1\nb: 2\na: 3\n", "p.yaml")
        assert value == {"a": 1, "b": 2}
        assert [str(p) for p in problems] == [
            "p.yaml:3:1 a: duplicate key 'a' (first written at line 1)"
        ]

    def test_non_scalar_keys_are_reported(self) -> None:
        """A list or mapping used as a key is a problem, not a crash."""
        value, _, problems = load("? [a, b]\n: 1\nc: 2\n", "p.yaml")
        assert value == {"c": 2}
        assert [(p.line, p.column, p.message) for p in problems] == [(1, 3, "keys must be plain")]

    def test_keys_are_strings(self) -> None:
        """Numeric and boolean keys come back as their text."""
        value, _, _ = load("1: a\ntrue: b\n", "p.yaml")
        assert value == {"1": "a", "true": "b"}

    def test_unreadable_scalar_is_reported(self) -> None:
        """A tagged scalar that cannot be read is a problem at its position."""
        value, _, problems = load("a: !!int x\n", "p.yaml")
        assert value == {"a": None}
        assert [(p.line, p.column, p.path) for p in problems] == [(1, 4, "a")]
        assert problems[0].message.startswith("cannot read value:")

    @pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
    def test_empty_document_is_none_without_problems(self, text: str) -> None:
        """An empty document is None and not itself a problem (callers decide)."""
        value, _, problems = load(text, "p.yaml")
        assert value is None and problems == []

    def test_several_documents_are_a_problem(self) -> None:
        """A file holding more than one YAML document is rejected."""
        _, _, problems = load("a: 1\n---\nb: 2\n", "p.yaml")
        assert len(problems) == 1
        assert "expected a single document" in problems[0].message

    def test_depth_limit(self) -> None:
        """Nesting deeper than the limit is a problem, not a recursion error."""
        text = "a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
        _, _, problems = load(text, "p.yaml")
        assert [p.message for p in problems] == [f"nested deeper than {MAX_DEPTH} levels"]

    def test_very_deep_nesting_is_a_problem(self) -> None:
        """Nesting too deep for the YAML parser itself is still only a problem."""
        _, _, problems = load("[" * 1000 + "]" * 1000, "p.yaml")
        assert len(problems) == 1 and problems[0].file == "p.yaml"

    def test_recursive_alias_is_a_problem(self) -> None:
        """A list that contains itself through an alias stops at the depth limit."""
        _, _, problems = load("a: &a [*a]\n", "p.yaml")
        assert [p.message for p in problems] == [f"nested deeper than {MAX_DEPTH} levels"]

    def test_aliases_are_expanded_with_their_positions(self) -> None:
        """An alias reads as a copy of its anchor's value, positioned where the anchor is."""
        value, smap, problems = load("a: &x {k: 1}\nb: *x\n", "p.yaml")
        assert problems == [] and value == {"a": {"k": 1}, "b": {"k": 1}}
        assert smap.position(("b", "k")) == (1, 11)
        assert smap.key_position(("b",)) == (2, 1)

    def test_alias_bomb_is_rejected_quickly(self) -> None:
        """A 'billion laughs' document is a problem, not hours of work and all the memory."""
        lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
        value, _, problems = load("\n".join(lines) + "\n", "p.yaml")
        assert value is None
        assert [str(p) for p in problems] == [
            "p.yaml:1:1 aliases (*name) expand to more than 100000 values"
        ]


class TestSourceMap:
    def test_unknown_file_positions_default_to_start(self) -> None:
        """An empty source map places everything at 1:1."""
        smap = SourceMap("x.yaml")
        assert smap.problem(("a", 0), "m") == Problem("x.yaml", 1, 1, "a[0]", "m")
