"""Every shipped policy set compiles and passes its own *_test.yaml suites.

The cases come from the same loader `gatehouse policy test` uses, so a case
that fails here fails there too, with the same message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gatehouse.policy.model import CompiledPolicy
from gatehouse.policy.suite import AnyCase
from gatehouse.policytest import SuiteGraph, collect, run_case

ROOT = Path(__file__).resolve().parents[2]
POLICY_SETS = sorted(p for p in (ROOT / "policies").iterdir() if p.is_dir())


def _cases() -> list[pytest.ParameterSet]:
    params = []
    for folder in POLICY_SETS:
        policy, cases, problems = collect(folder)
        assert not problems, "\n".join(str(p) for p in problems)
        params.extend(pytest.param(policy, graph, case, id=f"{folder.name}/{case.id}")
                      for case, graph in cases)
    return params


class TestShippedPolicySets:
    def test_every_seed_product_has_a_policy_set(self) -> None:
        """The three seed products each ship as a policy set with test suites."""
        names = {p.name for p in POLICY_SETS}
        assert {"coupler", "agency", "gumloop"} <= names
        for folder in POLICY_SETS:
            assert list(folder.rglob("*_test.yaml")), f"{folder.name} has no test suite"

    @pytest.mark.parametrize(("policy", "graph", "case"), _cases())
    def test_case(self, policy: CompiledPolicy, graph: SuiteGraph, case: AnyCase) -> None:
        """The case (a Check, usage value, limit, write or tenancy operation) is decided as
        its suite expects."""
        outcome = run_case(policy, graph, case)
        assert outcome.passed, outcome.detail
