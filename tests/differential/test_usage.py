"""Differential: ComputeUsage against a naive recount of the same graph.

For random policies with count, members and distinct metrics and random
plans, and random graphs (emails differing in case and surrounding spaces,
empty values, missing attributes, unknown plans), every organization's and
workspace's values, per-workspace breakdowns, plan resolution and "over"
flags must equal a recount written from the docs' table of metric kinds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse.errors import NotFound
from tests.differential import harness
from tests.differential.model import (
    DOCS,
    ORGS,
    WORKSPACES,
    GraphCase,
    PolicyCase,
    graphs,
    policies,
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[PolicyCase, GraphCase]:
    policy = draw(policies(with_usage=True))
    return policy, draw(graphs(policy))


class Recount:
    """The docs' table, read literally: objects "in" a workspace are those whose parent
    chain reaches it; identities are the lower-cased (trimmed) email, or the subject
    itself when it has none; organization-level relations count in every workspace."""

    def __init__(self, policy: PolicyCase, graph: GraphCase) -> None:
        self.policy = policy
        self.graph = graph

    def workspaces(self, org: str) -> list[str]:
        return sorted(w for w in WORKSPACES if self.graph.parent(w) == org)

    def docs(self, ws: str) -> list[str]:
        return [d for d in DOCS if self.graph.parent(d) == ws]

    def identity(self, subject: str) -> str:
        email = self.graph.attrs.get(subject, {}).get("email")
        if isinstance(email, str) and email.strip():
            return "email " + email.strip().lower()
        return "subject " + subject

    def holders(self, obj: str, relation: str) -> set[str]:
        return {s for (r, rel, s) in self.graph.rels if r == obj and rel == relation}

    def people(self, metric: dict[str, Any], org: str, ws: str | None) -> set[str]:
        out: set[str] = set()
        for ref in metric["relations"]:
            t, role = ref.split(".")
            objs = [org] if t == "org" else ([ws] if ws else self.workspaces(org))
            for obj in objs:
                out.update(self.identity(s) for s in self.holders(obj, role))
        return out

    def tags(self, ws: str) -> set[Any]:
        values = set()
        for d in self.docs(ws):
            tag = self.graph.attrs.get(d, {}).get("tag")
            if tag is not None and tag != "":  # an empty value is no value
                values.add(tag)
        return values

    def ws_value(self, name: str, org: str, ws: str) -> float:
        metric = self.policy.metrics[name]
        if name == "workspaces":
            return 1.0
        if name == "docs":
            return float(len(self.docs(ws)))
        if name == "tags":
            return float(len(self.tags(ws)))
        return float(len(self.people(metric, org, ws)))

    def org_value(self, name: str, org: str) -> float:
        metric = self.policy.metrics[name]
        wss = self.workspaces(org)
        if name == "people":
            return float(len(self.people(metric, org, None)))
        if name == "tags":
            return float(len(set().union(*[self.tags(w) for w in wss])))
        return sum(self.ws_value(name, org, w) for w in wss)

    def plan(self, org: str) -> tuple[str, bool]:
        named = self.graph.attrs.get(org, {}).get("plan")
        if named in self.policy.plans:
            return named, False
        return "free", True


async def _compare(policy_case: PolicyCase, graph: GraphCase) -> None:
    policy = harness.compile_case(policy_case)
    runtime = await harness.start(policy, harness.operations(policy, graph))
    try:
        ref = Recount(policy_case, graph)
        where = harness.describe(policy_case, graph)
        for org in ORGS:
            oid = org.split(":")[1]
            if not graph.exists(org):
                try:
                    await runtime.usage.compute_usage(oid)
                except NotFound:
                    continue
                raise AssertionError(f"usage of absent {org} answered{where}")
            plan, fallback = ref.plan(org)
            limits = policy_case.plans[plan]["limits"]
            report = await runtime.usage.compute_usage(oid)
            assert report.plan is not None and report.plan.name == plan, where
            assert report.plan_is_fallback == fallback
            for m in report.metrics:
                name = m.metric.name
                want = ref.org_value(name, org)
                assert m.value == want, f"{name} of {org}: engine {m.value}, recount " \
                    f"{want}{where}"
                assert m.limit == limits.get(name)
                assert m.over == (name in limits and want > limits[name])
                if m.breakdown.by_workspace:
                    assert dict(m.breakdown.by_workspace) == {
                        w.split(":")[1]: ref.ws_value(name, org, w)
                        for w in ref.workspaces(org)}, (name, where)
                harness.COUNTS["usage value"] += 1
            for ws in ref.workspaces(org):
                wreport = await runtime.usage.compute_usage(oid, ws.split(":")[1])
                for m in wreport.metrics:
                    want = ref.ws_value(m.metric.name, org, ws)
                    assert m.value == want, f"{m.metric.name} of {ws}: engine {m.value}, " \
                        f"recount {want}{where}"
                    harness.COUNTS["usage value"] += 1
    finally:
        await runtime.close()


class TestUsageAgreesWithRecount:
    @settings(max_examples=harness.examples(150), deadline=None, phases=harness.PHASES,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(cases())
    def test_compute_usage_equals_a_naive_recount(self, case: tuple[PolicyCase, GraphCase]
                                                  ) -> None:
        """Organization and workspace values, breakdowns, plan and over-limit flags
        equal a recount of the same graph by the documented rules."""
        asyncio.run(_compare(*case))


def teardown_module() -> None:
    """Print how many values were compared so far (seen with ``pytest -s``)."""
    print(f"\ndifferential so far: {dict(harness.COUNTS)}")
