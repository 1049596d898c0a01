"""CheckLimit: would this change take the organization over its plan?

A change is allowed when every metric it touches stays within the plan's
limit afterwards — or does not grow at all: adding a person who is already
counted somewhere in the organization costs no seat, and that is allowed
even for an organization already over its user limit. After a downgrade,
existing workspaces keep working (Check never looks at plans) but creating
another is refused here, naming the limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from gatehouse.names import split_key
from gatehouse.policy.model import Metric
from gatehouse.usage.compute import UsageView, identity_of


@dataclass(frozen=True, slots=True)
class CreateWorkspace:
    pass


@dataclass(frozen=True, slots=True)
class AddMember:
    workspace: str  # key
    identity: str  # e.g. the email


@dataclass(frozen=True, slots=True)
class ConnectAccount:
    workspace: str  # key
    source_type: str
    credential_id: str
    tenants: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RecordAmount:
    metric: str
    workspace: str  # key
    amount: float
    dimension: str


Proposal = CreateWorkspace | AddMember | ConnectAccount | RecordAmount


@dataclass(frozen=True, slots=True)
class LimitCheck:
    metric: Metric
    current: float
    proposed: float
    limit: float | None
    # Decided in exact arithmetic: near 2^53 a float sum such as 2^53 + 1 rounds
    # back to 2^53, which would read as "does not grow" and let the change through.
    allowed: bool


def _allowed(current: float, proposed: Fraction, limit: float | None) -> bool:
    return limit is None or proposed <= Fraction(limit) or proposed <= Fraction(current)


@dataclass(frozen=True, slots=True)
class LimitDecision:
    allowed: bool
    checks: tuple[LimitCheck, ...]
    reason: str


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_limit(view: UsageView, proposal: Proposal) -> LimitDecision:
    checks: list[LimitCheck] = []
    model = view.model
    for metric in model.metrics.values():
        delta = _proposed(view, metric, proposal)
        if delta is None:
            continue
        current, _ = view.org_value(metric)
        proposed = delta(Fraction(current))
        limit = view.limit(metric)
        checks.append(LimitCheck(metric, current, float(proposed), limit,
                                 _allowed(current, proposed, limit)))
    refused = [c for c in checks if not c.allowed]
    plan = view.plan.name if view.plan else "none"
    if refused:
        c = refused[0]
        reason = (f"{c.metric.name}: {_fmt(c.proposed)} would exceed the limit of "
                  f"{_fmt(c.limit or 0)} on plan {plan!r} (now {_fmt(c.current)})")
    elif checks:
        reason = "within the plan's limits"
    else:
        reason = "no metric of the plan is affected"
    return LimitDecision(not refused, tuple(checks), reason)


def _proposed(view: UsageView, metric: Metric, p: Proposal
              ) -> Callable[[Fraction], Fraction] | None:
    """A function current -> proposed value (exact), or None if the metric is not
    affected."""
    model = view.model
    if isinstance(p, CreateWorkspace):
        if metric.kind == "count" and metric.object_type == model.workspace_type:
            return lambda cur: cur + 1
        return None
    if isinstance(p, AddMember):
        if metric.kind != "members":
            return None
        new = identity_of(p.identity) not in view.all_identities(metric)
        return lambda cur: cur + (1 if new else 0)
    if isinstance(p, ConnectAccount):
        if metric.kind != "accounts":
            return None
        acc = view.facts(p.workspace).accounts[metric.name]
        tenants, creds = acc.tenants, acc.credentials
        kind = metric.source_kinds.get(p.source_type, metric.default_kind)
        if kind == "tenant":
            added = len({t for t in p.tenants if (p.source_type, t) not in tenants})
        elif kind == "connection":
            added = 0 if (p.source_type, p.credential_id) in creds else 1
        else:
            added = 1
        return lambda cur: cur + added
    if metric.kind != "recorded" or metric.name != p.metric:
        return None
    counters = view.recorded(metric)
    agg = metric.aggregate
    if agg == "count":
        return lambda cur: cur + 1
    if agg == "sum":
        return lambda cur: cur + Fraction(p.amount)
    if agg == "max":
        return lambda cur: max(cur, Fraction(p.amount))
    if agg == "distinct":
        seen: set[str] = set()
        for (_ws, m), dims in counters.distinct.items():
            if m == metric.name:
                seen |= dims
        return lambda cur: cur + (0 if p.dimension in seen else 1)
    prior = counters.latest.get((split_key(p.workspace)[1], metric.name), {}).get(p.dimension)
    return lambda cur: cur - Fraction(prior[1] if prior else 0.0) + Fraction(p.amount)
