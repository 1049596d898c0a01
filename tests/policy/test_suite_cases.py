"""Suites' usage, limits, writes and operations cases: malformed ones are positioned
problems, and a wrong expectation of each kind fails with a reason."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gatehouse.policy.suite import parse_suite
from gatehouse.policytest import run

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "testdata" / "suite"

DATA = """\
name: kinds
data:
  objects:
    user:olivia: {email: olivia@acme.example}
    user:adam: {email: adam@acme.example}
    user:nina: {email: nina@acme.example}
    organization:acme: {name: Acme, plan: active}
    workspace:w: {name: W, slug: ww}
  relationships:
    - organization:acme#owner@user:olivia
    - workspace:w#parent@organization:acme
    - workspace:w#admin@user:adam
"""

# (kind, a case whose expectation holds, the same case expecting the wrong thing, what the
# failure says)
CASES = [
    ("usage",
     "  - {organization: acme, metrics: {users: 2, workspaces: 1}, plan: active, fallback: false}",
     "  - {organization: acme, metrics: {users: 3}}",
     "users: expected 3, got 2"),
    ("usage",
     "  - {organization: acme, events: [{workspace: w, metric: llm_credits, amount: 4}],\n"
     "     metrics: {llm_credits: 4}}",
     "  - {organization: acme, events: [{workspace: w, metric: llm_credits, amount: 4}],\n"
     "     metrics: {llm_credits: 5}}",
     "llm_credits: expected 5, got 4"),
    ("limits",
     "  - {organization: acme, change: {create_workspace: {}}, allowed: false,\n"
     "     reason: \"workspaces: 2 would exceed the limit of 1 on plan 'active'\"}",
     "  - {organization: acme, change: {create_workspace: {}}, allowed: true}",
     "expected allowed, got refused: workspaces: 2 would exceed"),
    ("limits",
     "  - {organization: acme, change: {create_workspace: {}}, allowed: false,\n"
     "     reason: workspaces}",
     "  - {organization: acme, change: {create_workspace: {}}, allowed: false,\n"
     "     reason: users}",
     "expected a reason holding 'users'"),
    ("writes",
     "  - {write: [{delete: organization:acme#owner@user:olivia}], refused: an_owner_remains}",
     "  - {write: [{delete: organization:acme#owner@user:olivia}], allowed: true}",
     "expected the write to be allowed, refused: FAILED_PRECONDITION an_owner_remains"),
    ("writes",
     "  - {write: [organization:acme#owner@user:nina], allowed: true,\n"
     "     then: [{present: [organization:acme#owner@user:nina]}]}",
     "  - {write: [organization:acme#owner@user:nina], allowed: true,\n"
     "     then: [{absent: [organization:acme#owner@user:nina]}]}",
     "expected organization:acme#owner@user:nina to be absent"),
    ("operations",
     "  - {op: create_workspace, actor: user:adam, args: {organization_id: acme, name: X},\n"
     "     expect: {code: PERMISSION_DENIED, message: create_workspace}}",
     "  - {op: create_workspace, actor: user:adam, args: {organization_id: acme, name: X}}",
     "expected ok, got PERMISSION_DENIED"),
    ("operations",
     "  - steps:\n"
     "      - {op: invite_member, actor: user:adam, save: inv,\n"
     "         args: {scope: workspace:w, email: nina@acme.example, role: user}}\n"
     "      - {op: accept_invitation, args: {token: $inv.token, subject: user:nina}}\n"
     "    then: [{subject: user:nina, resource: workspace:w, allow: [view]}]",
     "  - steps:\n"
     "      - {op: invite_member, actor: user:adam, save: inv,\n"
     "         args: {scope: workspace:w, email: nina@acme.example, role: user}}\n"
     "      - {op: accept_invitation, args: {token: $inv.token, subject: user:nina},\n"
     "         advance_days: 8}",
     "expected ok, got FAILED_PRECONDITION: invitation: "),
    ("operations",
     "  - {op: check_slug, args: {organization_id: acme, slug: ww}, result: {available: false}}",
     "  - {op: check_slug, args: {organization_id: acme, slug: ww}, result: {available: true}}",
     "expected a result holding {'available': True}"),
]


def _policy(tmp_path: Path, kind: str, case: str) -> Path:
    folder = tmp_path / "coupler"
    shutil.copytree(ROOT / "policies" / "coupler", folder, ignore=shutil.ignore_patterns("tests"))
    (folder / "kinds_test.yaml").write_text(f"{DATA}{kind}:\n{case}\n", encoding="utf-8")
    return folder


class TestMalformedCases:
    def test_every_problem_is_positioned(self) -> None:
        """Malformed usage, limits, writes and operations entries give the expected problems,
        each at its line and column, and no suite."""
        suite, problems = parse_suite(GOLDEN / "new_kinds_test.yaml")
        got = [str(p).replace(f"{GOLDEN}/", "") for p in sorted(problems)]
        expected_file = GOLDEN / "expected.txt"
        if os.environ.get("GATEHOUSE_UPDATE_GOLDEN"):
            expected_file.write_text("\n".join(got) + "\n", encoding="utf-8")
        assert suite is None
        assert got == expected_file.read_text(encoding="utf-8").splitlines()

    def test_a_suite_with_only_new_kinds_is_a_suite(self, tmp_path: Path) -> None:
        """A suite needs no allow/deny tests when it holds cases of another kind."""
        path = tmp_path / "only_test.yaml"
        path.write_text("usage:\n  - {organization: acme, metrics: {users: 1}}\n",
                        encoding="utf-8")
        suite, problems = parse_suite(path)
        assert not problems
        assert suite is not None and [c.kind for c in suite.cases] == ["usage"]

    def test_a_suite_without_any_case_is_refused(self, tmp_path: Path) -> None:
        """A suite holding no list of cases of any kind names every kind it could hold."""
        path = tmp_path / "empty_test.yaml"
        path.write_text("name: nothing\n", encoding="utf-8")
        _, problems = parse_suite(path)
        assert [p.message for p in problems] == [
            "a suite needs at least one non-empty list of cases: tests, usage, limits, "
            "writes, operations"]


class TestWrongExpectationsFail:
    @pytest.mark.parametrize(("kind", "right", "wrong", "why"), CASES,
                             ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
    def test_right_passes_wrong_fails(self, tmp_path: Path, kind: str, right: str, wrong: str,
                                      why: str) -> None:
        """The case passes as written and fails, saying why, once its expectation is wrong."""
        good = run(_policy(tmp_path / "good", kind, right))
        assert good.ok, [(o.case.id, o.detail) for o in good.outcomes] + good.problems
        bad = run(_policy(tmp_path / "bad", kind, wrong))
        assert not bad.problems
        [outcome] = bad.outcomes
        assert not outcome.passed
        assert why in outcome.detail

    def test_a_graph_the_store_refuses_fails_the_case(self, tmp_path: Path) -> None:
        """A suite graph that breaks a constraint fails its runtime cases instead of being
        loaded past the store's rules."""
        folder = _policy(tmp_path, "usage", "  - {organization: acme, metrics: {users: 2}}")
        suite = folder / "kinds_test.yaml"
        text = suite.read_text(encoding="utf-8").replace(
            "    - workspace:w#admin@user:adam\n",
            "    - workspace:w#admin@user:adam\n"
            "    - organization:acme#ai_workspace@workspace:w\n"
            "    - workspace:w2#parent@organization:acme\n"
            "    - organization:acme#ai_workspace@workspace:w2\n")
        suite.write_text(text, encoding="utf-8")
        [outcome] = run(folder).outcomes
        assert not outcome.passed
        assert outcome.detail.startswith("the store refuses the suite's graph: one_ai_workspace")
