"""Hostile policy input: the loader answers with a policy or positioned problems, within caps.

The reload watcher and ``gatehouse policy validate`` rely on one contract:
``load_policy`` returns a CompiledPolicy or raises PolicyError, nothing else,
and refuses oversized input before parsing it. The fuzz tests mutate the
shipped policy sets node by node (replace, delete, duplicate, retype; hostile
scalars such as ``.nan``, ``1:30``, fullwidth digits, 10**30) and check that
contract. ``TestDamagedText`` damages the text itself (tests.fuzz.yamltext). ``make test``
runs a fixed, derandomized set of examples; set ``GATEHOUSE_FUZZ_EXAMPLES`` (e.g.
20000; ``make fuzz``) for a longer search.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse.cli import main
from gatehouse.errors import PolicyError
from gatehouse.limits import LIMITS
from gatehouse.policy.loader import INTERNAL_ERROR, compile_sources, load_policy
from gatehouse.policy.model import CompiledPolicy
from gatehouse.policytest import SuiteResults, run
from tests.conftest import GATEHOUSE, ROOT
from tests.fuzz.yamltext import billion_laughs, mutated_text, random_yaml

POLICIES = ROOT / "policies"
SETS = ("coupler", "agency", "gumloop")
CASES = ROOT / "tests" / "testdata" / "policy"
EXAMPLES = int(os.environ.get("GATEHOUSE_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 200, deadline=None, derandomize=EXAMPLES == 0, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SUITE_FUZZ = settings(FUZZ, max_examples=EXAMPLES or 40)
TEXT_FUZZ = settings(FUZZ, max_examples=EXAMPLES or 100)

# Scalars written into the YAML text as they are, unquoted, so the YAML reader
# sees what an author would have typed: loose YAML 1.1 numbers, digits that are
# not ASCII, tags, timestamps.
RAW_SCALARS = (
    ".nan", ".NaN", ".inf", "-.inf", "1.0e+400", "1e400", "1:30", "0x1F", "0o17", "1_000",
    "9007199254740993", "9" * 60, "\uff10", "\uff11\uff12", "\u0663", "\u00b2", "2\u00b3",
    "!!binary aGk=", "!!float 1", "!!int 1.5", "2001-12-14", "~", "-0", "+3", ".5",
)
_RAW = "RAWSCALAR"
NAMES = ("workspace", "organization", "user", "organization.owner", "workspace.admin",
         "owner", "view", "*", "month", "sum", "email", "connection", "")
_hostile_scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(NAMES),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.text(min_size=200, max_size=300),
    st.sampled_from([f"{_RAW}{i}X" for i in range(len(RAW_SCALARS))]),
)
_hostile_values = st.recursive(
    _hostile_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(NAMES) | st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_edits = st.lists(
    st.tuples(st.integers(min_value=0), st.sampled_from(["replace", "delete", "duplicate",
                                                         "rekey", "wrap"]),
              _hostile_values),
    min_size=1, max_size=4,
)


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _nodes(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _nodes(item, (*path, i))
    return out


def _at(tree: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def mutate(tree: Any, edits: list[tuple[int, str, Any]]) -> str:
    """Apply ``edits`` to a copy of a parsed YAML tree and dump it back to YAML text."""
    tree = copy.deepcopy(tree)
    for pick, op, value in edits:
        paths = _nodes(tree)[1:]
        if not paths:
            break
        path = paths[pick % len(paths)]
        parent = tree
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        if op == "replace":
            parent[key] = value
        elif op == "delete":
            del parent[key]
        elif op == "duplicate":
            if isinstance(parent, list):
                parent.insert(key, copy.deepcopy(parent[key]))
            else:
                parent[f"{key}_2"] = copy.deepcopy(parent[key])
        elif op == "rekey" and isinstance(parent, dict):
            parent[value if isinstance(value, str) else repr(value)] = parent.pop(key)
        elif op == "wrap":
            parent[key] = [parent[key]] if value is None else {"x": parent[key]}
    text = yaml.safe_dump(tree, allow_unicode=True, sort_keys=False, width=10**6)
    for i, raw in reversed(list(enumerate(RAW_SCALARS))):
        text = text.replace(f"{_RAW}{i}X", raw)
    return text


def _tree(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


POLICY_TREES = {name: _tree(POLICIES / name / "policy.yaml") for name in SETS}
POLICY_TEXT = {name: (POLICIES / name / "policy.yaml").read_text(encoding="utf-8")
               for name in SETS}
SUITES = [(name, p.relative_to(POLICIES / name)) for name in SETS
          for p in sorted((POLICIES / name).rglob("*_test.yaml"))]


def assert_positioned(exc: PolicyError) -> None:
    """Every problem names its file and a 1-based position, and none is an internal error."""
    assert exc.problems
    for problem in exc.problems:
        assert INTERNAL_ERROR not in problem.message, problem
        assert problem.line >= 1 and problem.column >= 1, problem
    str(exc)


class TestMutatedPoliciesNeverCrash:
    @FUZZ
    @given(st.sampled_from(SETS), _edits)
    def test_mutated_policy_compiles_or_reports_positions(
        self, name: str, edits: list[tuple[int, str, Any]]
    ) -> None:
        """A shipped policy with nodes replaced, deleted, duplicated, re-keyed or retyped
        compiles, or raises PolicyError whose every problem is positioned."""
        text = mutate(POLICY_TREES[name], edits)
        try:
            policy = compile_sources([("policy.yaml", text)], name)
        except PolicyError as exc:
            assert_positioned(exc)
        else:
            assert isinstance(policy, CompiledPolicy)

    @SUITE_FUZZ
    @given(st.sampled_from(SUITES), _edits)
    def test_mutated_suite_runs_or_reports(
        self, suite: tuple[str, Path], edits: list[tuple[int, str, Any]]
    ) -> None:
        """A shipped test suite, mutated, is run or reported as problems; nothing raises."""
        name, rel = suite
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / name
            shutil.copytree(POLICIES / name, folder)
            (folder / rel).write_text(mutate(_tree(folder / rel), edits), encoding="utf-8")
            results = run(folder)
        assert isinstance(results, SuiteResults)
        assert not any(INTERNAL_ERROR in p.message for p in results.problems)

    @pytest.mark.parametrize("name", SETS)
    def test_every_scalar_of_a_shipped_policy_as_a_list(self, name: str) -> None:
        """Each scalar of a shipped policy, turned into a one-item list (a list where a name
        belongs: the retyping that used to crash the compiler), compiles or is reported."""
        tree = POLICY_TREES[name]
        for pick, path in enumerate(_nodes(tree)[1:]):
            if _at(tree, path) is None or isinstance(_at(tree, path), dict | list):
                continue
            try:
                compile_sources([("policy.yaml", mutate(tree, [(pick, "wrap", None)]))], name)
            except PolicyError as exc:
                assert_positioned(exc)

    def test_mutation_reaches_the_compiler(self) -> None:
        """The mutator yields YAML the loader reads, and its raw scalars are written unquoted."""
        text = mutate(POLICY_TREES["coupler"], [(0, "replace", f"{_RAW}0X")])
        assert ": .nan" in text
        with pytest.raises(PolicyError) as info:
            compile_sources([("policy.yaml", text)], "coupler")
        assert any("'.nan' is not a plain decimal number" in p.message
                   for p in info.value.problems)


class TestDamagedText:
    """The text of a policy damaged the way a hand edit or a broken deploy does (the tree
    mutations above always dump well-formed YAML): punctuation, tabs, tags, anchors and
    aliases, spans cut or repeated, lines swapped or re-indented."""

    @TEXT_FUZZ
    @given(st.sampled_from(SETS).flatmap(
        lambda name: st.tuples(st.just(name), mutated_text(POLICY_TEXT[name]))))
    def test_damaged_policy_text_compiles_or_reports_positions(
        self, case: tuple[str, str]
    ) -> None:
        """A shipped policy with its text damaged compiles, or every problem is positioned."""
        name, text = case
        try:
            compile_sources([("policy.yaml", text)], name)
        except PolicyError as exc:
            assert_positioned(exc)

    @TEXT_FUZZ
    @given(random_yaml(("types", "permissions", "constraints", "metrics", "plans", "tenancy",
                        "name", "description", "roles", "actions", "parent", "owned",
                        "attributes", "relations", "when", "deny")))
    def test_random_documents_compile_or_report_positions(self, text: str) -> None:
        """Random small documents of the policy language's own words compile or are
        reported with positions."""
        try:
            compile_sources([("policy.yaml", text)], "random")
        except PolicyError as exc:
            assert_positioned(exc)

    def test_alias_bomb_is_refused_by_the_value_cap(self) -> None:
        """Aliases expanding to a billion values are refused without expanding them."""
        with pytest.raises(PolicyError) as info:
            compile_sources([("policy.yaml", billion_laughs(9))], "bomb")
        assert_positioned(info.value)


class TestInternalErrors:
    def test_a_compiler_bug_is_still_a_policy_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An exception the compiler raises by mistake reaches the caller as a PolicyError."""
        import gatehouse.policy.loader as loader

        def broken(*args: object) -> None:
            raise TypeError("unhashable type: 'list'")

        monkeypatch.setattr(loader, "compile_usage", broken)
        text = (POLICIES / "coupler" / "policy.yaml").read_text(encoding="utf-8")
        with pytest.raises(PolicyError) as info:
            compile_sources([("policy.yaml", text)], "coupler")
        (problem,) = info.value.problems
        assert str(problem) == (f"policy.yaml {INTERNAL_ERROR} (TypeError: \"unhashable type: "
                                "'list'\"); the policy is not loaded")


def _write(path: Path, size: int) -> None:
    """A YAML file of exactly ``size`` bytes: a small policy padded with a comment."""
    head = b"types:\n  user: {subject: true}\n# "
    path.write_bytes(head + b"x" * (size - len(head) - 1) + b"\n")


class TestSizeCaps:
    def test_a_file_past_the_byte_cap_is_refused(self, tmp_path: Path) -> None:
        """A policy file one byte past LIMITS.policy_file_bytes is refused, naming the cap."""
        _write(tmp_path / "big.yaml", LIMITS.policy_file_bytes + 1)
        with pytest.raises(PolicyError) as info:
            load_policy(tmp_path)
        assert [str(p) for p in info.value.problems] == [
            f"{tmp_path / 'big.yaml'}:1:1 file is larger than 1 MiB (the limit of one policy file)"
        ]

    def test_a_file_at_the_byte_cap_is_read(self, tmp_path: Path) -> None:
        """A policy file of exactly LIMITS.policy_file_bytes loads."""
        _write(tmp_path / "full.yaml", LIMITS.policy_file_bytes)
        assert isinstance(load_policy(tmp_path), CompiledPolicy)

    def test_a_set_past_the_total_cap_is_refused(self, tmp_path: Path) -> None:
        """Files each under their cap but together past LIMITS.policy_total_bytes are refused."""
        count = LIMITS.policy_total_bytes // LIMITS.policy_file_bytes + 1
        for i in range(count):
            _write(tmp_path / f"part{i}.yaml", LIMITS.policy_file_bytes)
        with pytest.raises(PolicyError) as info:
            load_policy(tmp_path)
        assert [str(p) for p in info.value.problems] == [
            f"{tmp_path} holds {count} MiB of policy files, more than 8 MiB (the limit of one "
            "policy set)"
        ]

    def test_too_many_files_are_refused(self, tmp_path: Path) -> None:
        """A folder with more than LIMITS.policy_files policy files is refused before reading."""
        for i in range(LIMITS.policy_files + 1):
            (tmp_path / f"p{i:04}.yaml").write_text("bad: [\n")
        with pytest.raises(PolicyError) as info:
            load_policy(tmp_path)
        assert [str(p) for p in info.value.problems] == [
            f"{tmp_path} holds {LIMITS.policy_files + 1} policy files, more than "
            f"{LIMITS.policy_files} (the limit of one policy set)"
        ]

    def test_a_long_flow_sequence_is_refused_where_it_passes_the_value_cap(
        self, tmp_path: Path
    ) -> None:
        """A file within the byte cap holding more than LIMITS.policy_file_values values is
        refused at the value that crosses the cap."""
        items = ",".join(["view"] * LIMITS.policy_file_values)
        (tmp_path / "policy.yaml").write_text(f"types:\n  user: {{actions: [{items}]}}\n")
        with pytest.raises(PolicyError) as info:
            load_policy(tmp_path)
        (problem,) = info.value.problems
        assert (problem.line, problem.message) == (
            2, f"more than {LIMITS.policy_file_values} values in one file")

    def test_rules_past_the_cap_are_refused_at_the_first_one_over(self) -> None:
        """More than LIMITS.policy_rules permission rules are refused at the first rule past
        the cap (each action's table holds every rule granting it)."""
        rules = "".join("  - {actions: ['*'], roles: [user.r]}\n"
                        for _ in range(LIMITS.policy_rules + 1))
        text = f"types:\n  user: {{subject: true, roles: [r], actions: [a]}}\npermissions:\n" \
               f"  user:\n{rules}"
        with pytest.raises(PolicyError) as info:
            compile_sources([("policy.yaml", text)], "rules")
        assert [str(p) for p in info.value.problems] == [
            f"policy.yaml:{5 + LIMITS.policy_rules}:5 permissions.user[{LIMITS.policy_rules}]: "
            f"more than {LIMITS.policy_rules} permission rules (the limit of one policy set)"
        ]

    def test_a_suite_past_the_byte_cap_is_refused(self, tmp_path: Path) -> None:
        """Test suites follow the same per-file cap as policy files."""
        folder = tmp_path / "coupler"
        shutil.copytree(POLICIES / "coupler", folder)
        big = folder / "tests" / "big_test.yaml"
        _write(big, LIMITS.policy_file_bytes + 1)
        results = run(folder)
        assert not results.ok
        assert [str(p) for p in results.problems] == [
            f"{big}:1:1 file is larger than 1 MiB (the limit of one policy file)"
        ]

    def test_a_suite_data_file_that_is_not_a_regular_file_is_refused(
        self, tmp_path: Path
    ) -> None:
        """A suite's data_file pointing at a device is refused, not read without end."""
        (tmp_path / "policy.yaml").write_text((POLICIES / "coupler" / "policy.yaml").read_text())
        (tmp_path / "x_test.yaml").write_text(
            "data_file: /dev/zero\ntests:\n  - {subject: user:u, resource: workspace:w, "
            "deny: [view]}\n")
        results = run(tmp_path)
        assert [p.message for p in results.problems] == [
            "/dev/zero: cannot read: not a regular file"]


class TestCommandLine:
    @pytest.mark.parametrize("case", ["lists_where_names_belong", "numbers_not_plain"])
    def test_validate_prints_positioned_problems(
        self, case: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`gatehouse policy validate` on input that used to crash the compiler exits 1 and
        prints each problem as file:line:col path: message."""
        folder = CASES / case
        assert main(["policy", "validate", str(folder)]) == 1
        err = capsys.readouterr().err.splitlines()
        expected = (folder / "expected.txt").read_text(encoding="utf-8").splitlines()
        assert err[:-1] == [line.replace(f"{case}/", f"{folder}/", 1) for line in expected]
        assert err[-1] == f"{folder}: {len(expected)} problem(s)"

    def test_policy_test_reports_a_crashing_policy(self, capsys: pytest.CaptureFixture[str]
                                                   ) -> None:
        """`gatehouse policy test` on a policy that used to crash the compiler exits 1 with
        the positioned problems."""
        folder = CASES / "lists_where_names_belong"
        assert main(["policy", "test", str(folder)]) == 1
        out = capsys.readouterr()
        assert f"{folder}/policy.yaml:16:23 metrics.workspaces.count: unknown type " \
               "['workspace']" in out.err
        assert out.out.strip().endswith("problem(s)")

    def test_policy_test_reports_a_crashing_suite(self, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
        """A suite listing a list among its denied actions (it used to raise TypeError) is a
        positioned problem and exit 1."""
        folder = tmp_path / "coupler"
        shutil.copytree(POLICIES / "coupler", folder)
        suite = folder / "tests" / "bad_test.yaml"
        suite.write_text("tests:\n  - subject: user:u\n    resource: workspace:w\n"
                         "    allow: [view]\n    deny: [[view]]\n")
        assert main(["policy", "test", str(folder)]) == 1
        assert f"{suite}:5:11 tests[0].deny: deny must be a list of action names" in \
            capsys.readouterr().err

    def test_oversized_file_is_refused_without_a_traceback(self, tmp_path: Path) -> None:
        """Run as a process, validate refuses an oversized file with one line and exit 1."""
        _write(tmp_path / "big.yaml", LIMITS.policy_file_bytes + 1)
        out = subprocess.run([*GATEHOUSE, "policy", "validate", str(tmp_path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1
        assert out.stderr.splitlines() == [
            f"{tmp_path / 'big.yaml'}:1:1 file is larger than 1 MiB (the limit of one policy "
            "file)",
            f"{tmp_path}: 1 problem(s)",
        ]
