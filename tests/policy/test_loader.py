"""The policy loader: folders and texts in, a CompiledPolicy or every problem out.

Malformed policies live under ``tests/testdata/policy/<case>/``: the case's
``*.yaml`` files are the policy set and ``expected.txt`` holds the exact error
lines, with file names relative to ``tests/testdata/policy``. Run with
``GATEHOUSE_UPDATE_GOLDEN=1`` to rewrite the expected files, then review the diff.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse.errors import PolicyError, Problem
from gatehouse.policy.loader import compile_sources, load_policy, policy_files
from gatehouse.policy.model import CompiledPolicy, Effect, RoleRef

REPO = Path(__file__).resolve().parents[2]
COUPLER = REPO / "policies" / "coupler"
COUPLER_TEXT = (COUPLER / "policy.yaml").read_text(encoding="utf-8")
CASES = Path(__file__).resolve().parents[1] / "testdata" / "policy"
UPDATE_GOLDEN = os.environ.get("GATEHOUSE_UPDATE_GOLDEN") == "1"

SMALL = """\
types:
  user: {subject: true}
  organization: {roles: [owner], actions: [view, manage]}
  workspace: {parent: organization, roles: [admin], actions: [view]}
"""


def _problems(sources: list[tuple[str, str]]) -> list[Problem]:
    with pytest.raises(PolicyError) as info:
        compile_sources(sources, "test")
    return info.value.problems


def _render(problem: Problem, root: Path) -> str:
    file = Path(problem.file)
    if file.is_absolute() and file.is_relative_to(root):
        file = file.relative_to(root)
    message = problem.message.replace(f"{root}{os.sep}", "")
    return str(Problem(str(file), problem.line, problem.column, problem.path, message))


class TestMalformedPolicies:
    @pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
    def test_reports_expected_problems(self, case: str) -> None:
        """A broken policy set fails to load with exactly the problem lines in expected.txt."""
        folder = CASES / case
        with pytest.raises(PolicyError) as info:
            load_policy(folder)
        got = "".join(_render(p, CASES) + "\n" for p in info.value.problems)
        expected_file = folder / "expected.txt"
        if UPDATE_GOLDEN:
            expected_file.write_text(got, encoding="utf-8")
        assert expected_file.exists(), f"no {expected_file}; run with GATEHOUSE_UPDATE_GOLDEN=1"
        assert got == expected_file.read_text(encoding="utf-8")

    def test_every_problem_in_a_file_has_a_position(self) -> None:
        """Each problem found inside a policy file carries its 1-based line and column."""
        for folder in sorted(p for p in CASES.iterdir() if p.is_dir() and policy_files(p)):
            with pytest.raises(PolicyError) as info:
                load_policy(folder)
            for problem in info.value.problems:
                assert problem.line >= 1 and problem.column >= 1, (folder.name, problem)


class TestLoadPolicy:
    def test_loads_the_coupler_policy(self) -> None:
        """The shipped coupler policy compiles, with its name, types and subject type."""
        policy = load_policy(COUPLER)
        assert policy.name == "coupler"
        assert policy.subject_types == frozenset({"user"})
        assert set(policy.types) == {
            "user", "organization", "workspace", "data_flow", "dashboard", "connection", "ai_chat",
            "invitation", "access_link", "email_domain",
        }
        assert policy.tenancy is not None and policy.tenancy.workspace == "workspace"
        assert policy.files == (str(COUPLER / "policy.yaml"),)
        assert policy.version.startswith("sha256:")

    def test_compiled_policy_is_read_only(self) -> None:
        """The compiled tables cannot be changed by the code that reads them."""
        policy = load_policy(COUPLER)
        with pytest.raises(TypeError):
            policy.types["robot"] = policy.types["user"]  # type: ignore[index]
        with pytest.raises(TypeError):
            policy.tables["workspace"]["view"] = None  # type: ignore[index]

    def test_not_a_folder(self, tmp_path: Path) -> None:
        """A path that is not a folder is reported as such."""
        missing = tmp_path / "nope"
        with pytest.raises(PolicyError) as info:
            load_policy(missing)
        assert [str(p) for p in info.value.problems] == [f"{missing} is not a folder"]

    def test_test_suites_and_other_files_are_not_policy(self, tmp_path: Path) -> None:
        """Only top-level *.yaml and *.yml files make the set; *_test.yaml suites do not."""
        (tmp_path / "a.yaml").write_text(SMALL)
        (tmp_path / "b.yml").write_text("permissions: {}\n")
        (tmp_path / "roles_test.yaml").write_text("this is: [not a policy\n")
        (tmp_path / "README.md").write_text("# notes\n")
        (tmp_path / "tests").mkdir()
        (tmp_path / "tests" / "c.yaml").write_text("broken: [\n")
        policy = load_policy(tmp_path)
        assert policy.files == (str(tmp_path / "a.yaml"), str(tmp_path / "b.yml"))

    def test_unreadable_file(self, tmp_path: Path) -> None:
        """A file that is not UTF-8 is reported with its name, not raised as a decode error."""
        (tmp_path / "policy.yaml").write_bytes(b"types:\n  \xff\xfe: {}\n")
        with pytest.raises(PolicyError) as info:
            load_policy(tmp_path)
        (problem,) = info.value.problems
        assert problem.file == str(tmp_path / "policy.yaml")
        assert problem.message.startswith("cannot read:")

    def test_version_is_the_content_hash(self, tmp_path: Path) -> None:
        """The version is stable for the same files and changes with any edit."""
        (tmp_path / "policy.yaml").write_text(SMALL)
        first = load_policy(tmp_path).version
        assert load_policy(tmp_path).version == first
        (tmp_path / "policy.yaml").write_text(SMALL + "# a comment\n")
        assert load_policy(tmp_path).version != first

    def test_set_name_defaults_to_folder_name(self, tmp_path: Path) -> None:
        """Without a 'name' key the set is named after its folder; with one, the key wins."""
        folder = tmp_path / "acme"
        folder.mkdir()
        (folder / "policy.yaml").write_text(SMALL)
        assert load_policy(folder).name == "acme"
        (folder / "policy.yaml").write_text("name: acme-prod\n" + SMALL)
        assert load_policy(folder).name == "acme-prod"


class TestCompileSources:
    def test_sections_may_be_split_across_files(self) -> None:
        """Types in one file and their permissions in another compile as one set."""
        policy = compile_sources(
            [("types.yaml", SMALL),
             ("perms.yaml", "permissions:\n  workspace:\n    - {actions: [view], "
                            "roles: [workspace.admin]}\n")],
            "split",
        )
        table = policy.tables["workspace"]["view"]
        assert table.direct == (("workspace", frozenset({"admin"}), True),)

    def test_wildcard_grants_every_action_of_the_type(self) -> None:
        """actions: ["*"] grants each action the type declares."""
        policy = compile_sources([("p.yaml", SMALL + "permissions:\n  organization:\n"
                                   "    - {actions: ['*'], roles: [organization.owner]}\n")], "t")
        for action in ("view", "manage"):
            rule = policy.tables["organization"][action].grants[0]
            assert rule.actions == frozenset({"view", "manage"})
            assert rule.roles == (RoleRef("organization", "owner"),)

    def test_ancestor_roles_are_merged_per_type(self) -> None:
        """Unconditional grants become one set of relations per ancestor type."""
        policy = load_policy(COUPLER)
        table = policy.tables["data_flow"]["view"]
        assert {t: (rels, own) for t, rels, own in table.direct} == {
            "organization": (frozenset({"owner"}), False),
            "workspace": (frozenset({"admin", "user"}), False),
        }
        assert [r.condition_text for r in table.conditional] == ["owner"]

    def test_rules_remember_where_they_were_written(self) -> None:
        """Each rule carries file:line:column and path, for explanations."""
        policy = compile_sources([("p.yaml", SMALL + "permissions:\n  workspace:\n"
                                   "    - actions: [view]\n      roles: [workspace.admin]\n")],
                                 "t")
        assert policy.tables["workspace"]["view"].grants[0].source == (
            "p.yaml:7:7 permissions.workspace[0]"
        )

    def test_deny_rules_need_no_roles(self) -> None:
        """A deny rule without roles applies to every subject and is kept apart from grants."""
        policy = compile_sources([("p.yaml", SMALL + "permissions:\n  organization:\n"
                                   "    - {effect: deny, actions: [manage]}\n")], "t")
        table = policy.tables["organization"]["manage"]
        assert [r.effect for r in table.denies] == [Effect.DENY]
        assert table.denies[0].roles == ()
        assert table.grants == ()

    def test_actions_without_rules_have_empty_tables(self) -> None:
        """Every declared action has a table, even when no rule mentions it (so it denies)."""
        policy = compile_sources([("p.yaml", SMALL)], "t")
        table = policy.tables["organization"]["manage"]
        assert (table.denies, table.direct, table.conditional, table.grants) == ((), (), (), ())

    def test_all_problems_of_a_file_come_together_sorted(self) -> None:
        """Every problem is reported in one error, ordered by file, line and column."""
        text = SMALL + (
            "permissions:\n"
            "  workspace:\n"
            "    - {actions: [fly], roles: [workspace.admin]}\n"
            "    - {actions: [view], roles: [workspace.boss]}\n"
            "  organization:\n"
            "    - {actions: [view]}\n"
            "surprise: true\n"
        )
        problems = _problems([("b.yaml", text), ("a.yaml", "types: []\n")])
        assert problems == sorted(problems)
        assert [(p.file, p.line, p.path) for p in problems] == [
            ("a.yaml", 1, "types"),
            ("b.yaml", 7, "permissions.workspace[0].actions[0]"),
            ("b.yaml", 8, "permissions.workspace[1].roles[0]"),
            ("b.yaml", 10, "permissions.organization[0]"),
            ("b.yaml", 11, "surprise"),
        ]

    def test_problems_render_as_file_line_column_path_message(self) -> None:
        """A problem reads file:line:col path: message, as a platform engineer expects."""
        (problem,) = _problems([("roles.yaml", SMALL + "permissions:\n  workspace:\n"
                                 "    - actions: [view]\n      roles: [workspace.owner]\n")])
        assert str(problem) == (
            "roles.yaml:8:15 permissions.workspace[0].roles[0]: unknown role 'workspace.owner' "
            "(known: workspace.admin, organization.owner)"
        )

    def test_names_with_a_trailing_newline_are_rejected(self) -> None:
        """A quoted type or role name ending in a newline is not a valid name."""
        problems = _problems([("p.yaml", 'types:\n  user: {subject: true, roles: ["admin\\n"]}\n')])
        assert [p.message for p in problems] == [
            "'admin\\n' is not a valid role name (lowercase letters, digits, '_')"
        ]

    def test_a_type_below_a_cycle_is_not_blamed_for_it(self) -> None:
        """A parent cycle is reported once, on a type in it, not on types that descend from it."""
        problems = _problems([("p.yaml", "types:\n  user: {subject: true}\n  c: {parent: a}\n"
                               "  a: {parent: b}\n  b: {parent: a}\n")])
        assert [str(p) for p in problems] == [
            "p.yaml:4:15 types.a.parent: parent types form a cycle: a -> b -> a"
        ]

    def test_self_parent_is_a_cycle(self) -> None:
        """A type that is its own parent is reported as a cycle."""
        problems = _problems([("p.yaml", "types:\n  user: {subject: true}\n  a: {parent: a}\n")])
        assert [p.message for p in problems] == ["parent types form a cycle: a -> a"]

    def test_empty_text(self) -> None:
        """An empty file is a problem of that file, not a crash."""
        assert [str(p) for p in _problems([("p.yaml", "")])] == ["p.yaml:1:1 file is empty"]

    def test_no_sources(self) -> None:
        """Compiling nothing yields an empty policy rather than an error (the folder check is
        load_policy's job)."""
        policy = compile_sources([], "none")
        assert dict(policy.types) == {}


# -- robustness -------------------------------------------------------------

VOCABULARY = [
    "name", "description", "types", "permissions", "user", "organization", "workspace",
    "data_flow", "connection", "parent", "subject", "owned", "roles", "actions", "attributes",
    "relations", "effect", "allow", "deny", "when", "owner", "not owner", "*", "view", "edit",
    "organization.owner", "workspace.admin", "workspace.user", "type", "default", "bool",
    "int", "number", "string", "list", "all", "any", "not", "shared", "resource.shared == true",
    "context.ip in ['a', 'b']", "subject.email != ''", "resource.nope < 3", "x.y.z", "",
    "'\\x'", "1" * 5000,
]
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.sampled_from(VOCABULARY), st.text(max_size=8),
)
_keys = st.one_of(st.sampled_from(VOCABULARY), st.text(max_size=6), st.integers())
_trees = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=10,
)
# Structures shaped like a policy, so the fuzzing reaches past the first checks.
_type_bodies = st.dictionaries(
    st.sampled_from(["parent", "subject", "owned", "roles", "actions", "attributes",
                     "relations", "bogus"]),
    _trees, max_size=5,
)
_rules = st.dictionaries(
    st.sampled_from(["actions", "roles", "when", "effect", "description", "bogus"]),
    _trees, max_size=4,
)
_policies = st.fixed_dictionaries(
    {
        "types": st.dictionaries(
            st.sampled_from(["user", "organization", "workspace", "data_flow", "Bad"]),
            _type_bodies, max_size=4,
        ),
        "permissions": st.dictionaries(
            st.sampled_from(["organization", "workspace", "data_flow", "ghost"]),
            st.lists(_rules, max_size=3), max_size=3,
        ),
    }
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _compiles_or_reports(text: str) -> None:
    try:
        result = compile_sources([("fuzz.yaml", text)], "fuzz")
    except PolicyError as exc:
        assert exc.problems, "a PolicyError always names at least one problem"
        str(exc)
    else:
        assert isinstance(result, CompiledPolicy)


class TestCompileSourcesNeverCrashes:
    @FUZZ
    @given(st.text())
    def test_arbitrary_text(self, text: str) -> None:
        """Any text compiles or raises PolicyError; nothing else escapes the loader."""
        _compiles_or_reports(text)

    @FUZZ
    @given(st.one_of(_trees, _policies))
    def test_arbitrary_yaml_structures(self, value: object) -> None:
        """Any YAML-shaped structure compiles or raises PolicyError."""
        _compiles_or_reports(yaml.dump(value, Dumper=yaml.CSafeDumper, allow_unicode=True))

    @FUZZ
    @given(st.randoms(use_true_random=False), st.integers(1, 6))
    def test_mutated_coupler_policy(self, rnd: random.Random, edits: int) -> None:
        """The coupler policy with lines deleted, duplicated or characters changed compiles or
        raises PolicyError."""
        lines = COUPLER_TEXT.splitlines(keepends=True)
        for _ in range(edits):
            if not lines:
                break
            i = rnd.randrange(len(lines))
            kind = rnd.choice(["delete", "duplicate", "insert", "replace", "swap"])
            if kind == "delete":
                del lines[i]
            elif kind == "duplicate":
                lines.insert(rnd.randrange(len(lines) + 1), lines[i])
            elif kind == "swap":
                j = rnd.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
            else:
                line = lines[i]
                at = rnd.randrange(len(line) + 1)
                char = rnd.choice(":-[]{},#&*!|>'\"%@` \t\n\\x0é" + chr(rnd.randrange(1, 0x3000)))
                cut = at + (1 if kind == "replace" else 0)
                lines[i] = line[:at] + char + line[cut:]
        _compiles_or_reports("".join(lines))

    @FUZZ
    @given(st.lists(st.sampled_from([
        "resource.shared", "resource.name", "subject.email", "context.ip", "owner", "not",
        "in", "==", "!=", "<", ">=", "true", "false", "1", "-2.5", "'a'", '"b"', "'\\x'",
        "'\\''", "'é'", "[", "]", ",", "(", "1" * 5000, "resource", ".", "\\",
    ]), min_size=1, max_size=6))
    def test_arbitrary_conditions(self, words: list[str]) -> None:
        """Any condition text in a rule compiles or raises PolicyError."""
        condition = json.dumps(" ".join(words))
        _compiles_or_reports(
            "types:\n"
            "  user: {subject: true, attributes: {email: string}}\n"
            "  doc: {owned: true, roles: [editor], actions: [view],\n"
            "        attributes: {shared: bool, name: string}}\n"
            "permissions:\n"
            f"  doc: [{{actions: [view], roles: [doc.editor], when: {condition}}}]\n"
        )
