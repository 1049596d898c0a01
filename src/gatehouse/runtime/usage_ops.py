"""Usage operations: ComputeUsage, RecordUsage and CheckLimit, with their caches.

Graph-derived metrics are computed from the follower's index and cached by
the index's per-object versions (a workspace's facts until something in it
changes; an organization's graph metrics until anything in it changes);
recorded counters are read from the usage store on every call.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gatehouse.errors import FailedPrecondition, InvalidArgument, NotFound, quote
from gatehouse.graph.index import GraphIndex
from gatehouse.limits import LIMITS
from gatehouse.names import object_key, split_key, validate_id
from gatehouse.policy.model import CompiledPolicy, UsageModel
from gatehouse.runtime.follower import IndexFollower
from gatehouse.usage.compute import (
    FactsSource,
    MetricUsage,
    UsageReport,
    UsageView,
    WorkspaceFacts,
    workspace_facts,
)
from gatehouse.usage.compute import report as usage_report
from gatehouse.usage.events import (
    ALL_TIME,
    DEDUP_WINDOW_SECONDS,
    FUTURE_SKEW_SECONDS,
    UsageEvent,
    UsageStore,
)
from gatehouse.usage.limits import (
    AddMember,
    ConnectAccount,
    LimitDecision,
    Proposal,
    RecordAmount,
    check_limit,
)

_PERIOD_RE = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])", re.ASCII)
SEP_CHAR = "\x1f"


@dataclass(frozen=True, slots=True)
class EventInput:
    event_id: str
    workspace_id: str
    metric: str
    amount: float
    dimension: str = ""
    event_time: float | None = None


class UsageOperations:
    """UsageService's domain side."""

    def __init__(self, follower: IndexFollower, store: UsageStore,
                 dedup_window: int = DEDUP_WINDOW_SECONDS) -> None:
        self.follower = follower
        self.store = store
        self.dedup_window = dedup_window
        # organization key -> ((index generation, org version, policy version), metrics)
        self._org_cache: dict[str, tuple[tuple[int, int, str], dict[str, MetricUsage]]] = {}
        # workspace key -> ((index generation, policy version, workspace version), facts)
        self._facts_cache: dict[str, tuple[tuple[int, str, int], WorkspaceFacts]] = {}

    # -- resolving names ----------------------------------------------------

    def _model(self) -> UsageModel:
        policy = self.follower.policy
        if not policy.usage.metrics:
            raise FailedPrecondition("usage", f"policy {policy.name!r} declares no metrics")
        return policy.usage

    def _organization(self, model: UsageModel, org_id: str,
                      field: str = "organization_id") -> str:
        validate_id(org_id, field)
        key = object_key(model.tenant_type, org_id)
        if not self.follower.index.exists(key):
            raise NotFound(f"{field}: {key} is not in the graph")
        return key

    def _workspace(self, model: UsageModel, org: str, ws_id: str, field: str) -> str:
        validate_id(ws_id, field)
        key = object_key(model.workspace_type, ws_id)
        if self.follower.index.parent(key) != org:
            raise NotFound(f"{field}: {key} is not a workspace of {org}")
        return key

    def facts_source(self, policy: CompiledPolicy, index: GraphIndex) -> FactsSource:
        """Per-workspace facts of ``index``, reused while the workspace is unchanged
        (shared by ComputeUsage, CheckLimit and the tenancy operations' limit checks)."""
        model, version = policy.usage, policy.version
        cache = self._facts_cache
        if len(cache) > 200_000:
            cache.clear()

        def facts(ws: str) -> WorkspaceFacts:
            stamp = (index.generation, version, index.version(ws))
            hit = cache.get(ws)
            if hit is not None and hit[0] == stamp:
                return hit[1]
            fresh = workspace_facts(model, index, ws)
            cache[ws] = (stamp, fresh)
            return fresh

        return facts

    async def _view(self, model: UsageModel, org: str, period: str) -> UsageView:
        periods = {ALL_TIME: ALL_TIME, period: period}
        counters = await self.store.counters(org, periods)
        view = self.follower.view()
        facts = self.facts_source(view.policy, view.index)
        return UsageView(model, view.index, org, counters, period, facts)

    # -- the operations -------------------------------------------------------

    async def compute_usage(self, org_id: str, ws_id: str = "", metrics: Sequence[str] = (),
                            period: str = "") -> UsageReport:
        model = self._model()
        org = self._organization(model, org_id)
        ws = self._workspace(model, org, ws_id, "workspace_id") if ws_id else None
        if len(metrics) > LIMITS.metrics_per_request:
            raise InvalidArgument("metrics", f"{len(metrics)} names; at most "
                                  f"{LIMITS.metrics_per_request} per call")
        seen: dict[str, int] = {}
        for i, name in enumerate(metrics):
            if name not in model.metrics:
                raise InvalidArgument(f"metrics[{i}]", f"unknown metric {quote(name)} "
                                      f"(declared: {', '.join(sorted(model.metrics))})")
            if name in seen:
                raise InvalidArgument(f"metrics[{i}]", f"{name!r} is already metrics"
                                      f"[{seen[name]}]; name each metric once")
            seen[name] = i
        if period and not _PERIOD_RE.fullmatch(period):
            raise InvalidArgument("period", f"{quote(period)} is not a month like 2026-11")
        period = period or time.strftime("%Y-%m", time.gmtime())
        index = self.follower.index
        revision = index.revision
        view = await self._view(model, org, period)
        if ws is not None:
            return usage_report(view, ws, revision, metrics or None)
        # Organization level: graph-derived metrics are reused while nothing in the
        # organization changed; recorded ones are read fresh every time.
        index = view.index
        stamp = (index.generation, index.version(org), self.follower.policy.version)
        cached = self._org_cache.get(org)
        if cached is None or cached[0] != stamp:
            graph_metrics = [m.name for m in model.metrics.values() if m.kind != "recorded"]
            graph_part = usage_report(view, None, revision, graph_metrics).metrics
            if len(self._org_cache) > 10_000:
                self._org_cache.clear()
            cached = (stamp, {m.metric.name: m for m in graph_part})
            self._org_cache[org] = cached
        recorded = [m.name for m in model.metrics.values() if m.kind == "recorded"]
        fresh = {m.metric.name: m
                 for m in usage_report(view, None, revision, recorded).metrics}
        chosen = list(metrics) or list(model.metrics)
        parts = tuple(cached[1].get(n) or fresh[n] for n in chosen)
        return UsageReport(org, None, view.plan, view.plan_is_fallback, parts, revision,
                           view.period)

    async def record_usage(self, org_id: str, events: Sequence[EventInput]) -> list[bool]:
        """Validate every event, then record each once; True marks a duplicate."""
        checked = self.checked_events(org_id, events)
        window = self.dedup_window
        if len(checked) == 1:
            return [await self.store.record(checked[0], window)]
        # All at once: on Redis they join one group commit instead of one round trip each.
        # Each event stays its own atomic step; if one fails the call fails, and a retry
        # with the same ids counts the others once (they are duplicates by then).
        return list(await asyncio.gather(*(self.store.record(ev, window) for ev in checked)))

    def record_soon(self, events: Sequence[UsageEvent],
                    done: Callable[[list[bool] | BaseException], None]) -> None:
        """``record_usage`` of checked events for the short path: ``done`` gets the
        duplicate flags in order, or the first event's error (on the loop), once every
        event has its answer (as ``record_usage``: each event its own atomic step)."""
        results: list[bool | BaseException | None] = [None] * len(events)
        waiting = len(events)

        def one(i: int, result: bool | BaseException) -> None:
            nonlocal waiting
            if results[i] is not None:
                return
            results[i] = result
            waiting -= 1
            if waiting == 0:
                failed = next((r for r in results if isinstance(r, BaseException)), None)
                done(failed if failed is not None else [bool(r) for r in results])

        window = self.dedup_window
        for i, event in enumerate(events):
            try:
                self.store.record_soon(event, window, functools.partial(one, i))
            except Exception as exc:  # a store that raised instead of answering
                one(i, exc)

    def checked_events(self, org_id: str, events: Sequence[EventInput]) -> list[UsageEvent]:
        """The events of a RecordUsage call, each checked (InvalidArgument naming the
        field, NotFound for an unknown organization or workspace)."""
        model = self._model()
        if not events:
            raise InvalidArgument("events", "give at least one event")
        if len(events) > LIMITS.events_per_call:
            raise InvalidArgument("events", f"{len(events)} events; at most "
                                  f"{LIMITS.events_per_call} per call")
        org = self._organization(model, org_id)
        now = time.time()
        checked: list[UsageEvent] = []
        window = self.dedup_window
        for i, e in enumerate(events):
            f = f"events[{i}]"
            if (not e.event_id or len(e.event_id) > LIMITS.event_id_chars
                    or not e.event_id.isprintable()):
                raise InvalidArgument(f"{f}.event_id", "is required: 1-"
                                      f"{LIMITS.event_id_chars} printable characters")
            metric = model.metrics.get(e.metric)
            if metric is None:
                raise InvalidArgument(f"{f}.metric", f"unknown metric {quote(e.metric)} "
                                      f"(declared: {', '.join(sorted(model.metrics))})")
            if metric.kind != "recorded":
                raise InvalidArgument(f"{f}.metric", f"{e.metric!r} is computed from the graph "
                                      f"(kind {metric.kind}); only recorded metrics take events")
            _check_amount(e.amount, f"{f}.amount")
            if (len(e.dimension) > LIMITS.dimension_chars or not e.dimension.isprintable()
                    or SEP_CHAR in e.dimension):
                raise InvalidArgument(f"{f}.dimension", f"at most {LIMITS.dimension_chars} "
                                      "printable characters")
            if metric.aggregate == "distinct" and not e.dimension:
                raise InvalidArgument(f"{f}.dimension", f"{e.metric!r} counts distinct "
                                      "dimensions; give one")
            when = e.event_time if e.event_time is not None else now
            if when > now + FUTURE_SKEW_SECONDS or when < now - window:
                raise InvalidArgument(f"{f}.event_time", "must be within the dedup window "
                                      f"({window // 86400} days) and not in the future")
            ws = self._workspace(model, org, e.workspace_id, f"{f}.workspace_id")
            checked.append(UsageEvent(e.event_id, org, split_key(ws)[1], metric, e.amount,
                                      e.dimension, when))
        return checked

    async def check_limit(self, org_id: str,
                          proposal: Proposal) -> tuple[LimitDecision, str, int]:
        model = self._model()
        org = self._organization(model, org_id)
        period = time.strftime("%Y-%m", time.gmtime())
        if isinstance(proposal, AddMember | ConnectAccount | RecordAmount):
            ws = self._workspace(model, org, proposal.workspace,
                                 f"{_CHANGE_FIELDS[type(proposal)]}.workspace_id")
            proposal = dataclasses.replace(proposal, workspace=ws)
        if isinstance(proposal, RecordAmount):
            metric = model.metrics.get(proposal.metric)
            if metric is None or metric.kind != "recorded":
                raise InvalidArgument("record.metric", f"{quote(proposal.metric)} is not a "
                                      "recorded metric")
            _check_amount(proposal.amount, "record.amount")
        if isinstance(proposal, AddMember) and not proposal.identity.strip():
            raise InvalidArgument("add_member.email", "is required")
        if isinstance(proposal, ConnectAccount) and not proposal.source_type:
            raise InvalidArgument("connect_account.source_type", "is required")
        revision = self.follower.index.revision
        view = await self._view(model, org, period)
        plan = view.plan.name if view.plan else ""
        return check_limit(view, proposal), plan, revision


_CHANGE_FIELDS: dict[type, str] = {AddMember: "add_member", ConnectAccount: "connect_account",
                                   RecordAmount: "record"}
"""The request field (of the ``change`` oneof) each proposal comes from."""


def _check_amount(amount: float, field: str) -> None:
    if not math.isfinite(amount) or amount < 0 or amount > LIMITS.amount_max:
        raise InvalidArgument(field, f"must be a finite number from 0 to {LIMITS.amount_max:g}, "
                              f"not {amount!r}")


__all__ = ["EventInput", "UsageOperations"]
