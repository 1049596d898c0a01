"""The condition language of permission rules (``when:``).

Conditions are compiled against a small policy and evaluated over a fake that
implements the ``Facts`` protocol, so each test states the facts it relies on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from gatehouse.policy.conditions import ConditionError, compile_condition
from gatehouse.policy.loader import compile_sources
from gatehouse.policy.model import OWNER, CompiledPolicy

POLICY_TEXT = """\
types:
  user:
    subject: true
    attributes:
      email: string
      level: {type: int, default: 1}
  team:
    actions: [view]
  doc:
    owned: true
    actions: [view]
    attributes:
      shared: bool
      size: int
      score: number
      title: string
      tags: list
      region: {type: string, default: eu}
      archived: {type: bool, default: false}
"""
POLICY: CompiledPolicy = compile_sources([("conditions.yaml", POLICY_TEXT)], "conditions")

SUBJECT = "user:alice"
RESOURCE = "doc:d1"


@dataclass
class FakeFacts:
    """A ``Facts`` implementation holding exactly the facts a test gives it."""

    attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: set[tuple[str, str, str]] = field(default_factory=set)

    def attributes(self, key: str) -> Mapping[str, Any]:
        return self.attrs.get(key, {})

    def holds(self, obj: str, relation: str, subject: str) -> bool:
        return (obj, relation, subject) in self.edges


def _compile(spec: Any, on: str = "doc") -> Any:
    condition, _ = compile_condition(spec, POLICY.types[on], POLICY.types,
                                     set(POLICY.subject_types))
    return condition


def evaluate(
    spec: Any,
    resource: dict[str, Any] | None = None,
    *,
    subject: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    owner: bool = False,
) -> bool:
    """Compile ``spec`` for rules on doc and evaluate it for alice on doc:d1."""
    facts = FakeFacts()
    if resource is not None:
        facts.attrs[RESOURCE] = resource
    if subject is not None:
        facts.attrs[SUBJECT] = subject
    if owner:
        facts.edges.add((RESOURCE, OWNER, SUBJECT))
    result = _compile(spec)(SUBJECT, RESOURCE, facts, context or {})
    assert result in (True, False, None)
    return result is True  # only a true condition applies a rule


def compile_error(spec: Any, on: str = "doc") -> ConditionError:
    with pytest.raises(ConditionError) as info:
        _compile(spec, on)
    return info.value


class TestOperators:
    @pytest.mark.parametrize(
        ("spec", "resource", "expected"),
        [
            ("resource.shared == true", {"shared": True}, True),
            ("resource.shared == true", {"shared": False}, False),
            ("resource.title == 'q3 report'", {"title": "q3 report"}, True),
            ("resource.title != 'draft'", {"title": "final"}, True),
            ("resource.title != 'draft'", {"title": "draft"}, False),
            ("resource.size < 10", {"size": 9}, True),
            ("resource.size < 10", {"size": 10}, False),
            ("resource.size <= 10", {"size": 10}, True),
            ("resource.size > 10", {"size": 11}, True),
            ("resource.size >= 10", {"size": 9}, False),
            ("resource.score < 2", {"score": 1.5}, True),
            ("resource.score == 2", {"score": 2.0}, True),
            ("resource.size > -2.5", {"size": -2}, True),
            ("resource.title < 'm'", {"title": "alpha"}, True),
        ],
    )
    def test_comparisons(self, spec: str, resource: dict[str, Any], expected: bool) -> None:
        """==, !=, <, <=, >, >= compare an attribute with a literal as written."""
        assert evaluate(spec, resource) is expected

    @pytest.mark.parametrize(
        ("spec", "resource", "expected"),
        [
            ("resource.title in ['a', 'b']", {"title": "b"}, True),
            ("resource.title in ['a', 'b']", {"title": "c"}, False),
            ("resource.title not in ['a', 'b']", {"title": "c"}, True),
            ("resource.title not in ['a', 'b']", {"title": "a"}, False),
            ("resource.size in [1, 2, 3]", {"size": 2}, True),
            ("'gold' in resource.tags", {"tags": ["silver", "gold"]}, True),
            ("'gold' not in resource.tags", {"tags": ["silver"]}, True),
            ("resource.title in []", {"title": "a"}, False),
        ],
    )
    def test_membership(self, spec: str, resource: dict[str, Any], expected: bool) -> None:
        """in and not in test membership in a literal list or a list attribute."""
        assert evaluate(spec, resource) is expected

    def test_surrounding_whitespace_is_ignored(self) -> None:
        """Spaces around and between tokens do not change a condition."""
        assert evaluate("  resource.size   ==   3  ", {"size": 3})
        assert evaluate("resource.size==3", {"size": 3})


class TestCombinators:
    @pytest.mark.parametrize(
        ("spec", "expected"),
        [
            ({"all": ["resource.shared == true", "resource.size < 5"]}, True),
            ({"all": ["resource.shared == true", "resource.size > 5"]}, False),
            ({"any": ["resource.shared == false", "resource.size < 5"]}, True),
            ({"any": ["resource.shared == false", "resource.size > 5"]}, False),
            ({"not": "resource.shared == false"}, True),
            ({"not": {"any": ["resource.shared == false", "resource.size > 5"]}}, True),
            (["resource.shared == true", "resource.size < 5"], True),
            (["resource.shared == true", "resource.size > 5"], False),
        ],
    )
    def test_all_any_not(self, spec: Any, expected: bool) -> None:
        """all needs every part, any needs one, not inverts, and a plain list means all."""
        assert evaluate(spec, {"shared": True, "size": 3}) is expected

    def test_text_reads_as_the_rule(self) -> None:
        """A compiled condition comes with a readable text for explanations."""
        _, text = compile_condition({"all": ["owner", {"not": "resource.shared == true"}]},
                                    POLICY.types["doc"], POLICY.types, {"user"})
        assert text == "owner and (not (resource.shared == true))"
        _, text = compile_condition({"any": ["owner", "resource.size < 3"]},
                                    POLICY.types["doc"], POLICY.types, {"user"})
        assert text == "owner or (resource.size < 3)"


class TestFailClosed:
    @pytest.mark.parametrize(
        "spec",
        [
            "resource.title == 'a'",
            "resource.title != 'a'",
            "resource.size < 3",
            "resource.size >= 3",
            "resource.title in ['a', 'b']",
            "resource.title not in ['a', 'b']",
            "'a' in resource.tags",
            "'a' not in resource.tags",
        ],
    )
    def test_missing_attribute_is_false(self, spec: str) -> None:
        """A comparison on an attribute the object lacks (and that has no default) is false,
        whatever the operator."""
        assert evaluate(spec, {}) is False
        assert evaluate(spec, None) is False

    @pytest.mark.parametrize(
        ("spec", "resource"),
        [
            ("resource.size == '3'", {"size": 3}),
            ("resource.size != '3'", {"size": 3}),
            ("resource.size < 'z'", {"size": 3}),
            ("resource.shared == 1", {"shared": True}),
            ("resource.shared != 1", {"shared": True}),
            ("resource.size == true", {"size": 1}),
            ("resource.size != false", {"size": 1}),
            ("resource.title in resource.title", {"title": "abc"}),
            ("resource.title not in resource.title", {"title": "abc"}),
            ("resource.shared in [1, 0]", {"shared": True}),
        ],
    )
    def test_type_mismatch_is_false(self, spec: str, resource: dict[str, Any]) -> None:
        """Values of different types never compare, not even as unequal (true is not 1)."""
        assert evaluate(spec, resource) is False

    def test_wrongly_typed_stored_value_is_false(self) -> None:
        """An attribute holding a value of another type than declared compares as false."""
        assert evaluate("resource.size < 10", {"size": "5"}) is False
        assert evaluate("resource.size != 10", {"size": "5"}) is False

    def test_negated_comparison_on_missing_attribute_is_false(self) -> None:
        """Negating a comparison on a missing attribute does not grant either."""
        assert evaluate({"not": "resource.title == 'secret'"}, {}) is False

    @pytest.mark.parametrize(
        "spec",
        ["context.x == 5", "context.x != 5", "context.x < 5", "context.x >= 5",
         "context.x in [5]", "context.x not in [5]", "resource.score != context.x",
         {"not": "context.x < 5"}, {"not": "context.x == 5"}],
    )
    def test_nan_compares_with_nothing(self, spec: Any) -> None:
        """NaN (refused at the wire, but a caller in process could pass it) makes every
        comparison unknown, so `!=`, `not in` and `not` cannot grant on it (found by the
        differential suite: `context.x != 5` used to hold for NaN)."""
        nan = float("nan")
        assert evaluate(spec, {"score": 1.0}, context={"x": nan}) is False

    @pytest.mark.parametrize(
        ("spec", "resource"),
        [
            ("resource.shared < true", {"shared": False}),
            ("resource.shared >= false", {"shared": True}),
            ("resource.tags < ['b']", {"tags": ["a"]}),
            ("resource.tags >= []", {"tags": ["a"]}),
            ({"not": "resource.tags > ['z']"}, {"tags": ["a"]}),
        ],
    )
    def test_order_only_between_numbers_or_strings(self, spec: Any,
                                                   resource: dict[str, Any]) -> None:
        """`<` `<=` `>` `>=` between booleans or lists is unknown, not Python's ordering
        (false < true, lists lexicographically) — found by the differential suite."""
        assert evaluate(spec, resource) is False
        assert evaluate("resource.size < 3", {"size": 2}) is True
        assert evaluate("resource.title < 'b'", {"title": "a"}) is True


class TestOperands:
    def test_declared_default_applies_when_attribute_is_missing(self) -> None:
        """An attribute declared with a default reads as that default when the object lacks it."""
        assert evaluate("resource.region == 'eu'", {}) is True
        assert evaluate("resource.archived == false", {}) is True
        assert evaluate("resource.archived != true", None) is True

    def test_stored_value_overrides_default(self) -> None:
        """A value written on the object wins over the declared default."""
        assert evaluate("resource.region == 'eu'", {"region": "us"}) is False

    def test_context_values(self) -> None:
        """context.<key> reads the request context."""
        spec = "context.ip_country in ['DE', 'FR']"
        assert evaluate(spec, context={"ip_country": "DE"}) is True
        assert evaluate(spec, context={"ip_country": "US"}) is False
        assert evaluate("context.risk < 0.5", context={"risk": 0.2}) is True
        assert evaluate("context.mfa == true", context={"mfa": True}) is True

    def test_missing_context_key_is_false(self) -> None:
        """A context key the request did not send fails closed, for != too."""
        assert evaluate("context.ip_country == 'DE'", context={}) is False
        assert evaluate("context.ip_country != 'DE'", context={}) is False

    def test_context_and_resource_compare_with_each_other(self) -> None:
        """Both sides of a comparison may read facts."""
        assert evaluate("context.region == resource.region", {"region": "us"},
                        context={"region": "us"})
        assert not evaluate("context.region == resource.region", {}, context={"region": "us"})

    def test_subject_attributes(self) -> None:
        """subject.<attr> reads the acting subject's attributes, with declared defaults."""
        assert evaluate("subject.email != ''", subject={"email": "a@acme.example"}) is True
        assert evaluate("subject.email != ''", subject={}) is False
        assert evaluate("subject.level == 1", subject={}) is True
        assert evaluate("subject.level >= 2", subject={"level": 3}) is True

    def test_literal_on_both_sides(self) -> None:
        """A comparison of two literals is constant."""
        assert evaluate("1 == 1") is True
        assert evaluate("'a' == 'b'") is False


class TestOwner:
    def test_owner_holds_when_subject_owns_resource(self) -> None:
        """'owner' is true exactly when the subject is the resource's owner."""
        assert evaluate("owner", owner=True) is True
        assert evaluate("owner", owner=False) is False

    def test_not_owner(self) -> None:
        """'not owner' is true exactly when the subject is not the owner."""
        assert evaluate("not owner", owner=False) is True
        assert evaluate("not owner", owner=True) is False

    def test_owner_combines(self) -> None:
        """owner combines with attribute tests, like coupler's shared connections."""
        spec = {"any": ["owner", "resource.shared == true"]}
        assert evaluate(spec, {"shared": True}) is True
        assert evaluate(spec, {"shared": False}, owner=True) is True
        assert evaluate(spec, {"shared": False}) is False

    def test_owner_needs_an_owned_type(self) -> None:
        """'owner' on a type that is not declared owned does not compile."""
        exc = compile_error("owner", on="team")
        assert str(exc) == "'owner' needs a type declared 'owned: true'; 'team' is not"
        compile_error("not owner", on="team")


class TestLiterals:
    @pytest.mark.parametrize(
        ("spec", "title"),
        [
            ("resource.title == 'café'", "café"),
            ("resource.title == '日本'", "日本"),
            ("resource.title == \"it's\"", "it's"),
            ("resource.title == 'it\\'s'", "it's"),
            ("resource.title == 'a\\\\b'", "a\\b"),
            ("resource.title == 'two\\nlines'", "two\nlines"),
        ],
    )
    def test_strings(self, spec: str, title: str) -> None:
        """Quoted strings keep non-ASCII text as written and understand \\' \\\" \\\\ \\n."""
        assert evaluate(spec, {"title": title}) is True

    def test_numbers(self) -> None:
        """Integers and decimals, negative too, are numbers."""
        assert evaluate("resource.size == -4", {"size": -4})
        assert evaluate("resource.score == 0.25", {"score": 0.25})


class TestCompileErrors:
    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ("resource.nope == 1",
             "type 'doc' has no attribute 'nope' (declared: archived, region, score, shared, "
             "size, tags, title)"),
            ("subject.phone == '1'", "no subject type declares attribute 'phone'"),
            ("owner.name == 'x'",
             "unknown operand 'owner.name' (use resource.<attr>, subject.<attr>, context.<key>)"),
            ("resource.shared = true",
             "cannot read '= true' in condition 'resource.shared = true'"),
            ("resource.shared", "'resource.shared' has no operator (expected ==, !=, <, in, ...)"),
            ("resource.shared ==", "'resource.shared ==' has nothing after '=='"),
            ("resource.shared is true",
             "expected an operator after the left side, found 'is'"),
            ("resource.size == 1 2", "unexpected '2' after the condition"),
            ("resource.title in ['a', ['b']]", "lists may not nest"),
            ("resource.title in ['a'", "list is not closed with ']'"),
            ("resource.size == ,", "expected a value, found ','"),
            ("resource.title == '\\x41'",
             "unknown escape '\\x' in a string (known: \\\\ \\' \\\" \\n \\t \\r)"),
            ("resource.size == " + "9" * 5000,
             "number '999999999999999999999999999999999999999999999999'... (5000 characters) "
             "is out of range (numbers are at most 9007199254740992 in size)"),
            ("resource.size == 9007199254740993",
             "number '9007199254740993' is out of range (numbers are at most 9007199254740992 "
             "in size)"),
            ("resource.size == " + "9" * 400 + ".5",
             "number '999999999999999999999999999999999999999999999999'... (402 characters) "
             "is out of range (numbers are at most 9007199254740992 in size)"),
            ("resource.size == \u0663", "cannot read '\u0663' in condition "
             "'resource.size == \u0663'"),
            ("resource.size > \uff11\uff12", "cannot read '\uff11\uff12' in condition "
             "'resource.size > \uff11\uff12'"),
            ("resource.size < 2\u00b2", "cannot read '\u00b2' in condition "
             "'resource.size < 2\u00b2'"),
            ("", "empty condition"),
            (7, "a condition is a string, a list, or {all|any|not: ...}"),
            (None, "a condition is a string, a list, or {all|any|not: ...}"),
            ({"all": [], "any": []}, "a condition mapping has exactly one key: all, any or not"),
            ({"every": ["owner"]}, "unknown condition key 'every' (known: all, any, not)"),
            ({"any": []}, "'any' takes a non-empty list"),
            ({"all": "owner"}, "'all' takes a non-empty list"),
        ],
    )
    def test_messages(self, spec: Any, message: str) -> None:
        """A condition that does not compile says what is wrong in the policy author's terms."""
        assert str(compile_error(spec)) == message

    @pytest.mark.parametrize(
        ("spec", "subpath"),
        [
            ("resource.nope == 1", ()),
            (["owner", "resource.nope == 1"], (1,)),
            ({"all": ["owner", "resource.nope == 1"]}, ("all", 1)),
            ({"not": {"any": ["owner", {"all": ["bad ="]}]}}, ("not", "any", 1, "all", 0)),
            ({"bogus": 1}, ("bogus",)),
        ],
    )
    def test_error_points_at_the_part_that_is_wrong(
        self, spec: Any, subpath: tuple[Any, ...]
    ) -> None:
        """The error carries the path inside the condition, so the loader can give its line."""
        assert compile_error(spec).subpath == subpath
