"""Validating objects against the policy's attribute rules (GraphService writes, data files)."""

from __future__ import annotations

from gatehouse.graph.model import ObjectRef
from gatehouse.graph.schema import object_problems
from gatehouse.policy.loader import compile_sources

POLICY = compile_sources([("policy.yaml", """\
types:
  user: {subject: true}
  organization: {roles: [owner]}
  workspace:
    parent: organization
    attributes:
      name: {type: string, min_length: 1, max_length: 10}
      slug: {type: string, pattern: "[a-z]+(-[a-z]+)*", immutable: true,
             unique_within: organization}
""")], "t")
W1 = ObjectRef.parse("workspace:w1")


class TestAttributeRules:
    def test_values_within_the_rules_pass(self) -> None:
        """A value of the right length matching the pattern has no problem."""
        assert object_problems(POLICY, W1, {"name": "Sales", "slug": "sales-eu"}) == []

    def test_each_rule_names_the_attribute(self) -> None:
        """Too short, too long and not matching are each reported naming the attribute."""
        assert object_problems(POLICY, W1, {"name": ""}) == [
            "attribute 'name' of 'workspace': '' is shorter than 1 characters"]
        assert object_problems(POLICY, W1, {"name": "x" * 11}) == [
            "attribute 'name' of 'workspace': 'xxxxxxxxxxx' is longer than 10 characters"]
        assert object_problems(POLICY, W1, {"slug": "Sales EU"}) == [
            "attribute 'slug' of 'workspace': 'Sales EU' does not match the pattern "
            "'[a-z]+(-[a-z]+)*'"]

    def test_the_pattern_must_match_the_whole_value(self) -> None:
        """A pattern matching only a prefix or a part of the value does not pass it."""
        assert object_problems(POLICY, W1, {"slug": "sales-"}) != []
        assert object_problems(POLICY, W1, {"slug": "sales\n"}) != []

    def test_a_long_bad_value_is_quoted_short(self) -> None:
        """A hostile value is quoted by a short prefix only."""
        (problem,) = object_problems(POLICY, W1, {"slug": "A" * 100_000})
        assert len(problem) < 200 and "100000 characters" in problem
