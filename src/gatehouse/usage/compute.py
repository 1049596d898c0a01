"""Compute usage from the index and recorded counters: pure functions, no I/O.

Workspace values follow each metric's kind (see ``gatehouse.policy.model``);
organization values roll the workspaces up: sums for counts, accounts and
recorded sums/counts/latest; the distinct union for members and distinct
values (so a person in three workspaces is one user); the max for maxima.

Everything a workspace contributes is gathered in one pass over its
descendants into :class:`WorkspaceFacts`, which callers may cache by the
index's per-object version: an organization of 1,000 workspaces then only
recomputes the workspaces that changed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gatehouse.graph.index import GraphIndex
from gatehouse.names import split_key, type_of
from gatehouse.policy.model import Metric, Plan, UsageModel
from gatehouse.usage.events import ALL_TIME, Counters


@dataclass(frozen=True, slots=True)
class Breakdown:
    """Where a value comes from: per workspace (organization level) and per
    source type (accounts)."""

    by_workspace: Mapping[str, float] = field(default_factory=dict)
    by_source_type: Mapping[str, float] = field(default_factory=dict)


NO_BREAKDOWN = Breakdown()


@dataclass(frozen=True, slots=True)
class MetricUsage:
    metric: Metric
    value: float
    limit: float | None
    breakdown: Breakdown = NO_BREAKDOWN

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


@dataclass(slots=True)
class AccountFacts:
    per_source: Counter[str] = field(default_factory=Counter)
    tenants: set[tuple[str, str]] = field(default_factory=set)
    credentials: set[tuple[str, str]] = field(default_factory=set)


@dataclass(slots=True)
class WorkspaceFacts:
    """What one workspace contributes to every graph-derived metric."""

    counts: Counter[str] = field(default_factory=Counter)
    identities: dict[str, frozenset[str]] = field(default_factory=dict)
    accounts: dict[str, AccountFacts] = field(default_factory=dict)
    distinct: dict[str, frozenset[Any]] = field(default_factory=dict)


def identity_of(value: str) -> str:
    """The identity an attribute value (an email) counts as: trimmed, lower-cased, and
    marked so that no value can equal a subject counted as itself (an email that reads
    ``user:ann`` is not the subject ``user:ann``)."""
    return "=" + value.strip().lower()


def _identity(index: GraphIndex, subject: str, attribute: str) -> str:
    value = index.attributes(subject).get(attribute)
    if isinstance(value, str) and value.strip():
        return identity_of(value)
    return "@" + subject  # no such attribute: the subject itself is the identity


def identities(index: GraphIndex, metric: Metric, holder_type: str, holder: str) -> set[str]:
    out: set[str] = set()
    for type_, relation in metric.relations:
        if type_ == holder_type:
            for subject in index.forward.get(holder, {}).get(relation, ()):
                out.add(_identity(index, subject, metric.attribute))
    return out


def workspace_facts(model: UsageModel, index: GraphIndex, ws: str) -> WorkspaceFacts:
    """One pass over the workspace's descendants for all graph metrics."""
    facts = WorkspaceFacts()
    by_type: dict[str, list[Metric]] = {}
    for m in model.metrics.values():
        if m.kind in ("accounts", "distinct"):
            by_type.setdefault(m.object_type, []).append(m)
            if m.kind == "accounts":
                facts.accounts[m.name] = AccountFacts()
        elif m.kind == "members":
            facts.identities[m.name] = frozenset(
                identities(index, m, model.workspace_type, ws))
    values: dict[str, set[Any]] = {m.name: set() for ms in by_type.values() for m in ms
                                   if m.kind == "distinct"}
    attributes = index.attributes
    children = index.children
    stack = list(children.get(ws, ()))
    while stack:
        key = stack.pop()
        t = type_of(key)
        facts.counts[t] += 1
        for m in by_type.get(t, ()):
            attrs = attributes(key)
            if m.kind == "distinct":
                v = attrs.get(m.attribute)
                if v is not None and v != "":
                    values[m.name].add(v if not isinstance(v, list) else tuple(v))
                continue
            acc = facts.accounts[m.name]
            source = attrs.get(m.source_attribute)
            source = source if isinstance(source, str) and source else "unknown"
            kind = m.source_kinds.get(source, m.default_kind)
            if kind == "tenant":
                for tenant in attrs.get(m.tenants_attribute) or ():
                    if (source, tenant) not in acc.tenants:
                        acc.tenants.add((source, tenant))
                        acc.per_source[source] += 1
            elif kind == "connection":
                cred = attrs.get(m.credential_attribute) or key
                if (source, cred) not in acc.credentials:
                    acc.credentials.add((source, cred))
                    acc.per_source[source] += 1
            else:
                acc.per_source[source] += 1
        kids = children.get(key)
        if kids:
            stack.extend(kids)
    facts.distinct = {name: frozenset(v) for name, v in values.items()}
    return facts


FactsSource = Callable[[str], WorkspaceFacts]


class UsageView:
    """Everything one organization's usage is computed from."""

    def __init__(self, model: UsageModel, index: GraphIndex, org: str,
                 counters: Mapping[str, Counters], period: str,
                 facts: FactsSource | None = None) -> None:
        self.model = model
        self.index = index
        self.org = org
        self.counters = counters
        self.period = period
        self._facts = facts or (lambda ws: workspace_facts(model, index, ws))
        attrs = index.attributes(org)
        self.plan, self.plan_is_fallback = model.resolve_plan(attrs.get(model.plan_attribute))
        self.workspaces = sorted(
            k for k in index.children.get(org, ()) if type_of(k) == model.workspace_type)
        self.workspace_ids = [split_key(ws)[1] for ws in self.workspaces]
        self._all: list[WorkspaceFacts] | None = None

    def facts(self, ws: str) -> WorkspaceFacts:
        return self._facts(ws)

    def all_facts(self) -> list[WorkspaceFacts]:
        """Facts of every workspace, in ``self.workspaces`` order (looked up once)."""
        if self._all is None:
            self._all = [self._facts(ws) for ws in self.workspaces]
        return self._all

    def org_identities(self, metric: Metric) -> set[str]:
        return identities(self.index, metric, self.model.tenant_type, self.org)

    def all_identities(self, metric: Metric) -> set[str]:
        everyone = self.org_identities(metric)
        for facts in self.all_facts():
            everyone |= facts.identities[metric.name]
        return everyone

    def recorded(self, metric: Metric) -> Counters:
        return self.counters.get(metric_period(metric, self.period), Counters())

    # -- metric values -------------------------------------------------------

    def workspace_value(self, metric: Metric, ws: str) -> tuple[float, Breakdown]:
        kind = metric.kind
        if kind == "count":
            if metric.object_type == self.model.workspace_type:
                return 1.0, NO_BREAKDOWN
            if metric.object_type == self.model.tenant_type:
                return 0.0, NO_BREAKDOWN
            return float(self.facts(ws).counts[metric.object_type]), NO_BREAKDOWN
        if kind == "members":
            ids = self.facts(ws).identities[metric.name] | self.org_identities(metric)
            return float(len(ids)), NO_BREAKDOWN
        if kind == "accounts":
            per = self.facts(ws).accounts[metric.name].per_source
            return float(sum(per.values())), Breakdown(
                by_source_type={k: float(v) for k, v in sorted(per.items())})
        if kind == "distinct":
            return float(len(self.facts(ws).distinct[metric.name])), NO_BREAKDOWN
        return self.recorded(metric).value(split_key(ws)[1], metric), NO_BREAKDOWN

    def org_value(self, metric: Metric) -> tuple[float, Breakdown]:
        kind = metric.kind
        if kind == "count" and metric.object_type == self.model.tenant_type:
            return 1.0, NO_BREAKDOWN
        if kind == "members":
            org_ids = self.org_identities(metric)
            everyone = set(org_ids)
            per_ws: dict[str, float] = {}
            name = metric.name
            for ws_id, facts in zip(self.workspace_ids, self.all_facts(), strict=True):
                ids = facts.identities[name]
                everyone.update(ids)
                per_ws[ws_id] = float(len(ids.union(org_ids)) if org_ids else len(ids))
            return float(len(everyone)), Breakdown(by_workspace=per_ws)
        if kind == "distinct":
            values: set[Any] = set()
            per_ws = {}
            for ws_id, facts in zip(self.workspace_ids, self.all_facts(), strict=True):
                mine = facts.distinct[metric.name]
                values.update(mine)
                per_ws[ws_id] = float(len(mine))
            return float(len(values)), Breakdown(by_workspace=per_ws)
        if kind == "accounts":
            total: dict[str, int] = {}
            per_ws = {}
            for ws_id, facts in zip(self.workspace_ids, self.all_facts(), strict=True):
                per = facts.accounts[metric.name].per_source
                n = 0
                for source, count in per.items():
                    total[source] = total.get(source, 0) + count
                    n += count
                per_ws[ws_id] = float(n)
            return float(sum(total.values())), Breakdown(
                by_workspace=per_ws,
                by_source_type={k: float(v) for k, v in sorted(total.items())})
        if kind == "recorded":
            # Every workspace that recorded usage this period counts, deleted ones too.
            c = self.recorded(metric)
            recorded_ws = sorted({w for (w, m) in (*c.values, *c.distinct, *c.latest)
                                  if m == metric.name})
            by_ws = {w: c.value(w, metric) for w in recorded_ws}
            parts = Breakdown(by_workspace=by_ws)
            if metric.rollup == "distinct":
                union: set[str] = set()
                for w in recorded_ws:
                    union |= c.members(w, metric)
                return float(len(union)), parts
            if metric.rollup == "max":
                return max(by_ws.values(), default=0.0), parts
            return float(sum(by_ws.values())), parts
        if kind == "count" and metric.object_type == self.model.workspace_type:
            return float(len(self.workspaces)), Breakdown(
                by_workspace=dict.fromkeys(self.workspace_ids, 1.0))
        per_ws = {ws_id: self.workspace_value(metric, ws)[0]
                  for ws_id, ws in zip(self.workspace_ids, self.workspaces, strict=True)}
        return float(sum(per_ws.values())), Breakdown(by_workspace=per_ws)

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
