"""Run policy test suites: the engine behind ``gatehouse policy test`` and pytest.

A suite's graph is loaded into its own index, then every case is decided
twice — by ``check`` and by ``explain`` — and both must agree with the
expectation. One loader, shared by the CLI and the project's own tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gatehouse import engine
from gatehouse.errors import GatehouseError, PolicyError, Problem
from gatehouse.graph.changes import Change
from gatehouse.graph.datafile import parse_data
from gatehouse.graph.index import GraphIndex
from gatehouse.names import split_key
from gatehouse.policy.files import size_problems
from gatehouse.policy.loader import load_policy
from gatehouse.policy.model import CompiledPolicy
from gatehouse.policy.suite import Case, Suite, find_suites, parse_suite


@dataclass(frozen=True, slots=True)
class Outcome:
    case: Case
    passed: bool
    detail: str


def suite_index(policy: CompiledPolicy, suite: Suite) -> tuple[GraphIndex | None, list[Problem]]:
    ops, problems = parse_data(suite.data, suite.smap, policy, suite.data_base)
    if problems:
        return None, problems
    index = GraphIndex()
    index.apply([Change(1, tuple(ops))])
    return index, []


def run_case(policy: CompiledPolicy, index: GraphIndex, case: Case) -> Outcome:
    s_type, s_id = split_key(case.subject)
    r_type, r_id = split_key(case.resource)
    try:
        subject, resource = engine.validate_request(policy, s_type, s_id, case.action, r_type,
                                                    r_id)
    except GatehouseError as exc:
        return Outcome(case, False, f"invalid case: {exc}")
    got = engine.check(policy, index, subject, case.action, r_type, resource, case.context)
    exp = engine.explain(policy, index, subject, case.action, r_type, resource, case.context)
    if exp.allowed != got:
        return Outcome(case, False, f"check says {got} but explain says {exp.allowed}")
    if got != case.expect_allow:
        want = "allow" if case.expect_allow else "deny"
        have = "allow" if got else "deny"
        trace = "\n      ".join(exp.trace)
        return Outcome(case, False, f"expected {want}, got {have}: {exp.summary}\n      {trace}")
    return Outcome(case, True, exp.summary)


@dataclass(slots=True)
class SuiteResults:
    """What ``gatehouse policy test`` prints: problems found, then every case's outcome."""

    policy: CompiledPolicy | None
    problems: list[Problem]
    outcomes: list[Outcome]

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.outcomes) and all(o.passed for o in self.outcomes)


def collect(directory: str | Path) -> tuple[CompiledPolicy, list[tuple[Case, GraphIndex]],
                                             list[Problem]]:
    """Load a policy folder and its suites. Raises PolicyError if the policy is bad."""
    policy = load_policy(directory)
    cases: list[tuple[Case, GraphIndex]] = []
    suites = find_suites(directory)
    problems = size_problems(Path(directory), suites, "test suites")
    if problems:
        return policy, cases, problems
    for path in suites:
        suite, probs = parse_suite(path)
        problems.extend(probs)
        if suite is None:
            continue
        index, probs = suite_index(policy, suite)
        problems.extend(probs)
        if index is not None:
            cases.extend((case, index) for case in suite.cases)
    return policy, cases, problems


def run(directory: str | Path) -> SuiteResults:
    try:
        policy, cases, problems = collect(directory)
    except PolicyError as exc:
        return SuiteResults(None, exc.problems, [])
    outcomes = [run_case(policy, index, case) for case, index in cases]
    if not cases and not problems:
        problems.append(Problem(str(directory), 0, 0, "", "no test suites (*_test.yaml) found"))
    return SuiteResults(policy, problems, outcomes)
