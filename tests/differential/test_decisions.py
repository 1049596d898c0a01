"""Differential: Check, CheckBulk, explain and ListAccessible against the naive reference.

Hypothesis draws a small policy (roles, ownership, defaults, allow and deny
rules with conditions) and a graph over it; the real compiler, memory store
and runtime answer every (subject, action, resource) of the graph, and each
answer must equal the reference evaluator's reading of the docs
(tests/differential/model.py). Contexts in process may hold NaN, which the
wire refuses but the engine must still treat as comparing with nothing.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse.errors import GatehouseError
from gatehouse.runtime import CheckInput, ListInput
from tests.differential import harness
from tests.differential.model import (
    ACTIONS,
    LINEAGE,
    STRANGER,
    USERS,
    GraphCase,
    PolicyCase,
    Reference,
    contexts,
    graphs,
    policies,
)

SUBJECTS = (*USERS, STRANGER)


@st.composite
def cases(draw: st.DrawFn) -> tuple[PolicyCase, GraphCase, dict[str, Any], int]:
    policy = draw(policies())
    graph = draw(graphs(policy))
    return policy, graph, draw(contexts(nan=True)), draw(st.integers(0, 2**32))


async def _compare(policy_case: PolicyCase, graph: GraphCase, ctx: dict[str, Any],
                   seed: int) -> None:
    policy = harness.compile_case(policy_case)
    runtime = await harness.start(policy, harness.operations(policy, graph))
    try:
        ref = Reference(policy_case, graph)
        decisions = runtime.decisions
        rnd = random.Random(seed)
        bulk: list[CheckInput | GatehouseError] = []
        expected: list[bool] = []
        where = harness.describe(policy_case, graph, ctx)
        for resource in harness.resources(graph):
            rtype, rid = resource.split(":")
            for action in ACTIONS[rtype]:
                for subject in SUBJECTS:
                    sid = subject.split(":")[1]
                    want = ref.allowed(subject, action, resource, ctx)
                    req = CheckInput("user", sid, action, rtype, rid, ctx)
                    got = decisions.check(req).allowed
                    assert got == want, f"Check {subject} {action} {resource}: engine " \
                        f"{got}, reference {want}{where}"
                    exp = decisions.check(req._replace(explain=True))
                    assert exp.explanation is not None
                    assert exp.allowed == want, (exp.explanation.trace, where)
                    harness.check_trace(ref, subject, resource, exp.explanation.trace)
                    bulk.append(req)
                    expected.append(want)
                    harness.COUNTS["check"] += 1
                    harness.COUNTS["explain"] += 1
        rnd.shuffle(order := list(range(len(bulk))))
        out = decisions.check_many([bulk[i] for i in order])
        for pos, i in enumerate(order):
            result = out.results[pos]
            assert not isinstance(result, GatehouseError), result
            assert result.allowed == expected[i], (bulk[i], where)
        harness.COUNTS["bulk item"] += len(bulk)
        # ListAccessible: exactly what Check allows, page after page, with or
        # without a `within` scope.
        for subject in SUBJECTS:
            for rtype in ("org", "ws", "doc"):
                for action in ACTIONS[rtype]:
                    within = rnd.choice([None, None, *[r for r in harness.resources(graph)
                                                       if r.split(":")[0] in LINEAGE[rtype]]])
                    allowed = sorted(
                        r.split(":")[1] for r in harness.resources(graph)
                        if r.split(":")[0] == rtype
                        and (within is None or within == r
                             or within in ref.ancestors(r).values())
                        and ref.allowed(subject, action, r, ctx))
                    listed = await _list_all(decisions, subject, rtype, action, within,
                                             rnd.randint(1, 4), ctx)
                    assert listed == allowed, f"ListAccessible {subject} {action} {rtype} " \
                        f"within {within}: engine {listed}, reference {allowed}{where}"
                    harness.COUNTS["list"] += 1
    finally:
        await runtime.close()


async def _list_all(decisions: Any, subject: str, rtype: str, action: str,
                    within: str | None, page_size: int, ctx: dict[str, Any]) -> list[str]:
    wt, wid = within.split(":") if within else ("", "")
    ids: list[str] = []
    after = None
    for _ in range(50):
        page = decisions.list_accessible(
            ListInput("user", subject.split(":")[1], rtype, action, wt, wid, page_size,
                      after, ctx), None)
        assert len(page.ids) <= page_size
        ids.extend(page.ids)
        if page.complete:
            assert page.after is None
            return ids
        after = page.after
    raise AssertionError("ListAccessible did not complete in 50 pages")


class TestDecisionsAgreeWithReference:
    @settings(max_examples=harness.examples(250), deadline=None, phases=harness.PHASES,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(cases())
    def test_check_bulk_explain_and_listing_equal_the_reference(
            self, case: tuple[PolicyCase, GraphCase, dict[str, Any], int]) -> None:
        """For random policies and graphs, every Check, CheckBulk item, explanation
        verdict and ListAccessible listing equals the naive reading of the docs, and
        explanations cite only the resource's ancestors and relationships that exist."""
        asyncio.run(_compare(*case))


def teardown_module() -> None:
    """Print how many decisions were compared (seen with ``pytest -s``)."""
    print(f"\ndifferential decisions: {dict(harness.COUNTS)}")
