"""YAML with positions: values, their line and column, and problems instead of exceptions."""

from __future__ import annotations

import pytest

from gatehouse.errors import Problem
from gatehouse.sourcemap import MAX_DEPTH, MAX_EXACT_INT, SourceMap, Strictness, load, render_path

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


STRICT = Strictness(max_values=1000, plain_numbers=True)


class TestStrictReading:
    @pytest.mark.parametrize(
        ("text", "value"),
        [("12", 12), ("-3", -3), ("+3", 3), ("2.5", 2.5), (".5", 0.5), ("1.5e+3", 1500.0), ("0", 0),
         ("!!float 1", 1.0), (str(MAX_EXACT_INT), MAX_EXACT_INT), ("'1:30'", "1:30"),
         ("\uff11", "\uff11"), ("\u00b2", "\u00b2")],
    )
    def test_plain_numbers_and_text_are_kept(self, text: str, value: object) -> None:
        """Plain decimal numbers read as numbers; quoted text and non-ASCII digits stay text."""
        got, _, problems = load(f"a: {text}\n", "p.yaml", STRICT)
        assert problems == [] and got == {"a": value}
        assert type(got["a"]) is type(value)

    @pytest.mark.parametrize(
        ("text", "why"),
        [(".nan", "is not a plain decimal number"), (".inf", "is not a plain decimal number"),
         ("-.Inf", "is not a plain decimal number"), ("1:30", "is not a plain decimal number"),
         ("0x1F", "is not a plain decimal number"), ("017", "is not a plain decimal number"),
         ("0b101", "is not a plain decimal number"),
         ("1_000", "is not a plain decimal number"), ("!!int 1.5", "is not a plain decimal"),
         ("1.0e+400", "is out of range"), (str(MAX_EXACT_INT + 1), "is out of range"),
         ("9" * 5000, "is out of range")],
    )
    def test_loose_numbers_are_problems_where_written(self, text: str, why: str) -> None:
        """A number YAML 1.1 reads loosely, or one past 2^53, is a positioned problem."""
        got, _, problems = load(f"a: [x, {text}]\n", "p.yaml", STRICT)
        assert got == {"a": ["x", None]}
        (problem,) = problems
        assert (problem.line, problem.column, problem.path) == (1, 8, "a[1]")
        assert why in problem.message and len(problem.message) < 200

    def test_lenient_reading_keeps_yaml_numbers(self) -> None:
        """Without strictness (bootstrap data files) YAML's own reading is unchanged."""
        got, _, problems = load("a: [1:30, 0x10]\n", "p.yaml")
        assert problems == [] and got == {"a": [90, 16]}

    def test_value_cap_is_refused_at_the_crossing_value(self) -> None:
        """More values than the cap is one problem at the value past the cap; nothing is built."""
        text = "a:\n" + "".join(f"  - {i}\n" for i in range(1200))
        got, _, problems = load(text, "p.yaml", STRICT)
        assert got is None
        # values: the mapping, key 'a', the list, then items; item 997 is the 1001st.
        assert [str(p) for p in problems] == ["p.yaml:999:5 more than 1000 values in one file"]

    @pytest.mark.parametrize("opener", ["[", "{a: "])
    def test_depth_is_refused_before_composing_at_its_position(self, opener: str) -> None:
        """Nesting past MAX_DEPTH is refused where the level opens, on the libyaml path and
        past libyaml's own nesting limit alike."""
        for depth in (MAX_DEPTH + 1, 5000):
            got, _, problems = load("a: " + opener * depth + "\n", "p.yaml")
            assert got is None
            assert [str(p) for p in problems] == [
                # the document's own mapping is the first level
                f"p.yaml:1:{4 + (MAX_DEPTH - 1) * len(opener)} nested deeper than {MAX_DEPTH} "
                "levels"
            ]


class TestSourceMap:
    def test_unknown_file_positions_default_to_start(self) -> None:
        """An empty source map places everything at 1:1."""
        smap = SourceMap("x.yaml")
        assert smap.problem(("a", 0), "m") == Problem("x.yaml", 1, 1, "a[0]", "m")
