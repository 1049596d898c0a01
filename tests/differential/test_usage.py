"""Differential: ComputeUsage against a naive recount of the same graph.

For random policies with count, members, distinct, accounts and recorded
(count, sum, max, distinct, latest) metrics and random plans, random graphs
(emails differing in case and surrounding spaces, empty values, missing
attributes, unknown plans) and random RecordUsage events (retried ids, several
dimensions, out-of-order times), every organization's and workspace's values,
breakdowns, plan resolution and "over" flags must equal a recount written from
the docs' table of metric kinds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatehouse.errors import NotFound
from gatehouse.runtime import EventInput
from tests.differential import harness
from tests.differential.model import (
    DOCS,
    ORGS,
    RECORDED,
    WORKSPACES,
    GraphCase,
    PolicyCase,
    graphs,
    policies,
)


@dataclass(frozen=True)
class Event:
    """One RecordUsage event as drawn: ``at`` orders events in time (seconds ago)."""

    id: str
    ws: str
    aggregate: str
    amount: float
    dimension: str
    at: int


EVENTS = st.lists(st.builds(
    Event, id=st.sampled_from([f"e{i}" for i in range(16)]),
    ws=st.sampled_from((WORKSPACES[0], *WORKSPACES)), aggregate=st.sampled_from(RECORDED),
    amount=st.sampled_from([0.0, 1.0, 2.5, 7.0]), dimension=st.sampled_from(["x", "x", "y", ""]),
    at=st.integers(1, 5000)), min_size=2, max_size=24, unique_by=lambda e: e.at)


@st.composite
def cases(draw: st.DrawFn) -> tuple[PolicyCase, GraphCase, list[Event]]:
    policy = draw(policies(with_usage=True))
    return policy, draw(graphs(policy)), draw(EVENTS)


class Recount:
    """The docs' table, read literally: objects "in" a workspace are those whose parent
    chain reaches it; identities are the lower-cased (trimmed) email, or the subject
    itself when it has none; organization-level relations count in every workspace."""

    def __init__(self, policy: PolicyCase, graph: GraphCase,
                 recorded: list[Event] | None = None) -> None:
        self.policy = policy
        self.graph = graph
        # Accepted events, first of each id per organization only (a retry is one event).
        self.recorded = recorded or []

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

    def accounts(self, ws: str) -> dict[str, int]:
        """Per source type: tenant sources count each distinct (source, tenant),
        connection sources each distinct (source, credential) — a connection without one
        counts as itself — and url sources each connection."""
        metric = self.policy.metrics["accounts"]
        kinds = {src: kind for kind, srcs in metric["source_types"].items() for src in srcs}
        seen: set[tuple[str, str]] = set()
        out: dict[str, int] = {}
        for d in self.docs(ws):
            attrs = self.graph.attrs.get(d, {})
            source = attrs.get("source_type") or "unknown"
            kind = kinds.get(source, metric["default"])
            if kind == "tenant":
                units = [("t", source, t) for t in attrs.get("tenants") or []]
            elif kind == "connection":
                units = [("c", source, attrs.get("credential_id") or d)]
            else:
                units = [("u", source, d)]
            for unit in units:
                if unit not in seen:
                    seen.add(unit)
                    out[source] = out.get(source, 0) + 1
        return out

    def events(self, ws: str, aggregate: str) -> list[Event]:
        return [e for e in self.recorded if e.ws == ws and e.aggregate == aggregate]

    def recorded_value(self, ws: str, aggregate: str) -> float:
        events = self.events(ws, aggregate)
        if aggregate == "count":
            return float(len(events))
        if aggregate == "sum":
            return sum(e.amount for e in events)
        if aggregate == "max":
            return max((e.amount for e in events), default=0.0)
        if aggregate == "distinct":
            return float(len({e.dimension for e in events}))
        newest: dict[str, Event] = {}
        for e in events:  # larger `at` is older
            if e.dimension not in newest or e.at < newest[e.dimension].at:
                newest[e.dimension] = e
        return sum(e.amount for e in newest.values())

    def ws_value(self, name: str, org: str, ws: str) -> float:
        metric = self.policy.metrics[name]
        if name.startswith("r_"):
            return self.recorded_value(ws, name[2:])
        if name == "accounts":
            return float(sum(self.accounts(ws).values()))
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
        if name == "r_distinct":
            return float(len({e.dimension for w in wss for e in self.events(w, "distinct")}))
        if name == "r_max":
            return max((self.recorded_value(w, "max") for w in wss
                        if self.events(w, "max")), default=0.0)
        return sum(self.ws_value(name, org, w) for w in wss)

    def plan(self, org: str) -> tuple[str, bool]:
        named = self.graph.attrs.get(org, {}).get("plan")
        if named in self.policy.plans:
            return named, False
        return "free", True


async def _record(runtime: Any, graph: GraphCase, drawn: list[Event]) -> list[Event]:
    """Record the drawn events on existing workspaces; the ones the recount keeps."""
    now = time.time()
    kept: list[Event] = []
    seen: set[tuple[str, str]] = set()
    for org in ORGS:
        mine = [e for e in drawn if graph.parent(e.ws) == org
                and (e.dimension or e.aggregate != "distinct")]
        for part in (mine[:len(mine) // 2], mine[len(mine) // 2:]):
            if not part:
                continue
            duplicate = await runtime.usage.record_usage(org.split(":")[1], [
                EventInput(e.id, e.ws.split(":")[1], f"r_{e.aggregate}", e.amount,
                           e.dimension, now - e.at) for e in part])
            for e, dup in zip(part, duplicate, strict=True):
                assert dup == ((org, e.id) in seen), (e, dup)
                if not dup:
                    seen.add((org, e.id))
                    kept.append(e)
    return kept


async def _compare(policy_case: PolicyCase, graph: GraphCase, drawn: list[Event]) -> None:
    policy = harness.compile_case(policy_case)
    runtime = await harness.start(policy, harness.operations(policy, graph))
    try:
        recorded = await _record(runtime, graph, drawn)
        ref = Recount(policy_case, graph, recorded)
        where = harness.describe(policy_case, graph, recorded)
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
                # Recorded metrics break down over the workspaces that recorded usage;
                # the others over every workspace of the organization.
                wss = [w for w in ref.workspaces(org)
                       if not name.startswith("r_") or ref.events(w, name[2:])]
                assert dict(m.breakdown.by_workspace) == {
                    w.split(":")[1]: ref.ws_value(name, org, w) for w in wss}, \
                    (name, m.breakdown, where)
                if name == "accounts":
                    total: dict[str, float] = {}
                    for w in ref.workspaces(org):
                        for source, n in ref.accounts(w).items():
                            total[source] = total.get(source, 0) + n
                    assert dict(m.breakdown.by_source_type) == total, (m.breakdown, where)
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
    @settings(max_examples=harness.examples(100), deadline=None, phases=harness.PHASES,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(cases())
    def test_compute_usage_equals_a_naive_recount(
            self, case: tuple[PolicyCase, GraphCase, list[Event]]) -> None:
        """Organization and workspace values, breakdowns, plan and over-limit flags
        equal a recount of the same graph and events by the documented rules."""
        asyncio.run(_compare(*case))


def teardown_module() -> None:
    """Print how many values were compared so far (seen with ``pytest -s``)."""
    print(f"\ndifferential so far: {dict(harness.COUNTS)}")
