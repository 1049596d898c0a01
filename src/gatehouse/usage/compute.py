"""Compute usage from the index and recorded counters: pure functions, no I/O.

Workspace values follow each metric's kind (see ``gatehouse.policy.model``);
organization values roll the workspaces up: sums for counts, accounts and
recorded sums/counts/latest; the distinct union for members and distinct
values (so a person in three workspaces is one user); the max for maxima.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gatehouse.graph.index import GraphIndex, type_of
from gatehouse.policy.model import Metric, Plan, UsageModel
from gatehouse.usage.events import ALL_TIME, Counters


@dataclass(frozen=True, slots=True)
class Breakdown:
    dimension: str  # "workspace" or "source_type"
    key: str
    value: float


@dataclass(frozen=True, slots=True)
class MetricUsage:
    metric: Metric
    value: float
    limit: float | None
    breakdown: tuple[Breakdown, ...] = ()

    @property
    def over(self) -> bool:
        return self.limit is not None and self.value > self.limit


@dataclass(frozen=True, slots=True)
class UsageReport:
    organization: str
    workspace: str | None
    plan: Plan | None
    plan_is_fallback: bool
    metrics: tuple[MetricUsage, ...]
    revision: int
    period: str


def _id(key: str) -> str:
    return key.partition(":")[2]


def _identity(index: GraphIndex, subject: str, attribute: str) -> str:
    value = index.attributes(subject).get(attribute)
    if isinstance(value, str) and value.strip():
        return value.strip().lower()
    return subject  # no such attribute: the subject itself is the identity


class UsageView:
    """Everything one organization's usage is computed from."""

    def __init__(self, model: UsageModel, index: GraphIndex, org: str,
                 counters: Mapping[str, Counters], period: str) -> None:
        self.model = model
        self.index = index
        self.org = org
        self.counters = counters
        self.period = period
        attrs = index.attributes(org)
        self.plan, self.plan_is_fallback = model.resolve_plan(attrs.get(model.plan_attribute))
        self.workspaces = sorted(
            k for k in index.children.get(org, ()) if type_of(k) == model.workspace_type)

    # -- per-workspace facts -------------------------------------------------

    def descendants(self, key: str, type_: str) -> Iterator[str]:
        stack = list(self.index.children.get(key, ()))
        while stack:
            k = stack.pop()
            if type_of(k) == type_:
                yield k
            stack.extend(self.index.children.get(k, ()))

    def identities(self, metric: Metric, ws: str | None) -> set[str]:
        out: set[str] = set()
        index = self.index
        for type_, relation in metric.relations:
            holder = self.org if type_ == self.model.tenant_type else ws
            if holder is None:
                continue
            for subject in index.forward.get(holder, {}).get(relation, ()):
                out.add(_identity(index, subject, metric.attribute))
        return out

    def accounts(self, metric: Metric, ws: str) -> Counter[str]:
        """Accounts per source type in one workspace."""
        return self.account_keys(metric, ws)[0]

    def account_keys(self, metric: Metric, ws: str
                     ) -> tuple[Counter[str], set[tuple[str, str]], set[tuple[str, str]]]:
        """Per source type counts, and the (source, tenant) and (source, credential)
        pairs already counted in one workspace."""
        tenants: set[tuple[str, str]] = set()
        credentials: set[tuple[str, str]] = set()
        per_source: Counter[str] = Counter()
        for conn in self.descendants(ws, metric.object_type):
            attrs = self.index.attributes(conn)
            source = attrs.get(metric.source_attribute)
            source = source if isinstance(source, str) and source else "unknown"
            kind = metric.source_kinds.get(source, metric.default_kind)
            if kind == "tenant":
                for tenant in attrs.get(metric.tenants_attribute) or ():
                    if (source, tenant) not in tenants:
                        tenants.add((source, tenant))
                        per_source[source] += 1
            elif kind == "connection":
                cred = attrs.get(metric.credential_attribute) or conn
                if (source, cred) not in credentials:
                    credentials.add((source, cred))
                    per_source[source] += 1
            else:
                per_source[source] += 1
        return per_source, tenants, credentials

    def distinct_values(self, metric: Metric, ws: str) -> set[Any]:
        out = set()
        for obj in self.descendants(ws, metric.object_type):
            value = self.index.attributes(obj).get(metric.attribute)
            if value is not None and value != "":
                out.add(value)
        return out

    def recorded(self, metric: Metric) -> Counters:
        return self.counters.get(metric_period(metric, self.period), Counters())

    # -- metric values -------------------------------------------------------

    def workspace_value(self, metric: Metric, ws: str) -> tuple[float, tuple[Breakdown, ...]]:
        if metric.kind == "count":
            if metric.object_type == self.model.workspace_type:
                return 1.0, ()
            if metric.object_type == self.model.tenant_type:
                return 0.0, ()
            return float(sum(1 for _ in self.descendants(ws, metric.object_type))), ()
        if metric.kind == "members":
            return float(len(self.identities(metric, ws))), ()
        if metric.kind == "accounts":
            per = self.accounts(metric, ws)
            return float(sum(per.values())), tuple(
                Breakdown("source_type", k, float(v)) for k, v in sorted(per.items()))
        if metric.kind == "distinct":
            return float(len(self.distinct_values(metric, ws))), ()
        return self.recorded(metric).value(_id(ws), metric), ()

    def org_value(self, metric: Metric) -> tuple[float, tuple[Breakdown, ...]]:
        per_ws = [(ws, self.workspace_value(metric, ws)) for ws in self.workspaces]
        by_ws = tuple(Breakdown("workspace", _id(ws), v) for ws, (v, _) in per_ws)
        if metric.kind == "members":
            everyone = self.identities(metric, None)
            for ws in self.workspaces:
                everyone |= self.identities(metric, ws)
            return float(len(everyone)), by_ws
        if metric.kind == "distinct":
            values: set[Any] = set()
            for ws in self.workspaces:
                values |= self.distinct_values(metric, ws)
            return float(len(values)), by_ws
        if metric.kind == "count" and metric.object_type == self.model.tenant_type:
            return 1.0, ()
        if metric.kind == "accounts":
            total: Counter[str] = Counter()
            for _, (_, parts) in per_ws:
                for b in parts:
                    total[b.key] += int(b.value)
            return float(sum(total.values())), by_ws + tuple(
                Breakdown("source_type", k, float(v)) for k, v in sorted(total.items()))
        if metric.kind == "recorded":
            # Every workspace that recorded usage this period counts, deleted ones too.
            c = self.recorded(metric)
            recorded_ws = sorted({w for (w, m) in (*c.values, *c.distinct, *c.latest)
                                  if m == metric.name})
            by_ws = tuple(Breakdown("workspace", w, c.value(w, metric)) for w in recorded_ws)
            if metric.rollup == "distinct":
                union: set[str] = set()
                for w in recorded_ws:
                    union |= c.members(w, metric)
                return float(len(union)), by_ws
            if metric.rollup == "max":
                return max((b.value for b in by_ws), default=0.0), by_ws
            return float(sum(b.value for b in by_ws)), by_ws
        return float(sum(v for _, (v, _) in per_ws)), by_ws

    def limit(self, metric: Metric) -> float | None:
        if self.plan is None:
            return None
        return self.plan.limits.get(metric.name)


def metric_period(metric: Metric, period: str) -> str:
    return period if metric.period == "month" else ALL_TIME


def report(view: UsageView, workspace: str | None, revision: int,
           names: Iterable[str] | None = None) -> UsageReport:
    chosen = [view.model.metrics[n] for n in names] if names else list(
        view.model.metrics.values())
    out = []
    for metric in chosen:
        if workspace is None:
            value, parts = view.org_value(metric)
        else:
            value, parts = view.workspace_value(metric, workspace)
        out.append(MetricUsage(metric, value, view.limit(metric), parts))
    return UsageReport(view.org, workspace, view.plan, view.plan_is_fallback, tuple(out),
                       revision, view.period)
