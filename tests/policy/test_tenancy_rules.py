"""Compiling the tenancy constraints and attribute rules into what the stores enforce."""

from __future__ import annotations

import pytest

from gatehouse.errors import PolicyError
from gatehouse.policy.loader import compile_sources
from gatehouse.policy.model import CompiledPolicy
from gatehouse.policy.rules import (
    AttributeRule,
    MinChildren,
    MinSubjects,
    PerSubject,
    Requires,
)

POLICY = """\
types:
  user: {subject: true}
  organization: {roles: [owner, admin, member], actions: [view]}
  workspace:
    parent: organization
    roles: [admin, member, client]
    actions: [view]
    attributes:
      name: {type: string, min_length: 1, max_length: 100}
      slug: {type: string, pattern: "[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?", min_length: 2,
             max_length: 50, immutable: true, unique_within: organization}
      created_by: {type: string, immutable: true}
  flow:
    parent: workspace
    actions: [view]
    attributes:
      title: {type: string, unique_within: organization}
      size: int
constraints:
  client_in_one_workspace:
    per_subject: {relation: workspace.client, limit: 1}
  members_are_org_members:
    requires: {relations: [workspace.admin, workspace.member],
               needs: [organization.admin, organization.member]}
  an_owner_remains:
    minimum: {relation: organization.owner, count: 1}
  a_workspace_remains:
    minimum: {children: workspace, count: 1}
"""


def compiled(text: str = POLICY) -> CompiledPolicy:
    return compile_sources([("policy.yaml", text)], "t")


class TestConstraints:
    def test_each_kind_compiles_to_its_store_value(self) -> None:
        """per_subject, requires and both forms of minimum become the values the stores read."""
        assert compiled().write_rules.constraints == (
            PerSubject("client_in_one_workspace", "workspace", "client", 1),
            Requires("members_are_org_members",
                     frozenset({"workspace.admin", "workspace.member"}),
                     frozenset({"organization.admin", "organization.member"})),
            MinSubjects("an_owner_remains", "organization", "owner", 1),
            MinChildren("a_workspace_remains", "workspace", 1),
        )

    def test_a_constraint_with_two_kinds_names_the_new_ones(self) -> None:
        """The list of kinds in the "exactly one of" message includes the new kinds."""
        text = POLICY + "  both:\n    per_subject: {relation: workspace.client, limit: 1}\n" \
            "    minimum: {children: workspace, count: 1}\n"
        with pytest.raises(PolicyError) as info:
            compiled(text)
        (problem,) = info.value.problems
        assert "exactly one of: exclusive, unique, max, per_subject, requires, minimum" \
            in problem.message


class TestAttributeRules:
    def test_rules_compile_onto_the_attribute(self) -> None:
        """Lengths, the pattern (ASCII fullmatch), immutable and unique_within are kept."""
        slug = compiled().types["workspace"].attributes["slug"]
        assert (slug.min_length, slug.max_length, slug.immutable, slug.unique_within) == (
            2, 50, True, "organization")
        assert slug.pattern is not None and slug.rule_problem("my-space") is None
        assert slug.rule_problem("-x") is not None
        # ASCII: \\w-like classes and case folding do not reach beyond ASCII.
        assert slug.rule_problem("\u0430\u0431") is not None

    def test_write_rules_list_only_types_with_store_rules(self) -> None:
        """Only types with immutable or unique attributes appear in the store's rules,
        so writes of other types skip the attribute checks."""
        rules = compiled().write_rules.attribute_rules
        assert dict(rules) == {
            "workspace": (AttributeRule("created_by", immutable=True),
                          AttributeRule("slug", immutable=True, unique=True)),
            "flow": (AttributeRule("title", unique=True),),
        }

    def test_a_policy_without_rules_has_none(self) -> None:
        """Plain attributes compile to no store rules at all."""
        text = "types:\n  user: {subject: true, attributes: {email: string}}\n"
        assert dict(compiled(text).write_rules.attribute_rules) == {}

    @pytest.mark.parametrize(("value", "problem"), [
        ("", "is shorter than 1 characters"),
        ("x" * 101, "is longer than 100 characters"),
        ("ok", None),
    ])
    def test_length_rules(self, value: str, problem: str | None) -> None:
        """min_length and max_length count characters."""
        assert compiled().types["workspace"].attributes["name"].rule_problem(value) == problem
