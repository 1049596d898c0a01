"""The live state a server decides from: current policy, store and index.

This is where requests meet state: it resolves consistency (waiting for the
index when asked to), holds the policy that hot reloads swap atomically, and
calls the pure engine. The API layer translates protobuf to these calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from gatehouse import engine
from gatehouse.engine.listing import list_accessible
from gatehouse.errors import (
    FailedPrecondition,
    GatehouseError,
    InvalidArgument,
    NotFound,
    PolicyError,
    Unavailable,
)
from gatehouse.graph.changes import Change, DeleteRelationship, Operation, Precondition
from gatehouse.graph.index import GraphIndex
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.graph.query import RelationshipFilter, read_relationships
from gatehouse.graph.schema import object_problems, relationship_problem
from gatehouse.graph.store import ChangelogGap, GraphStore
from gatehouse.names import object_key, validate_id, validate_type
from gatehouse.policy.loader import load_policy, policy_files
from gatehouse.policy.model import CompiledPolicy, UsageModel
from gatehouse.usage.compute import (
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
from gatehouse.usage.memory import MemoryUsageStore

log = logging.getLogger("gatehouse.runtime")


@dataclass(frozen=True, slots=True)
class Consistency:
    """How fresh the index must be before answering."""

    mode: str = "minimize_latency"  # or "at_least_as_fresh", "fully_consistent"
    revision: int = 0

    @classmethod
    def at_least(cls, text: str, field: str) -> Consistency:
        if not text.isdigit() or len(text) > 20 or int(text) >= 2**64:
            raise InvalidArgument(field, f"{text!r} is not a revision (a decimal uint64)")
        return cls("at_least_as_fresh", int(text))


_PERIOD_RE = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
SEP_CHAR = "\x1f"


@dataclass(frozen=True, slots=True)
class EventInput:
    event_id: str
    workspace_id: str
    metric: str
    amount: float
    dimension: str = ""
    event_time: float | None = None


class CheckInput(NamedTuple):
    """One check request (a tuple: cheap to build thousands of times per bulk call)."""

    subject_type: str
    subject_id: str
    action: str
    resource_type: str
    resource_id: str
    context: Mapping[str, Any] | None = None
    explain: bool = False


MAX_LIST_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class ListInput:
    subject_type: str
    subject_id: str
    resource_type: str
    action: str
    within_type: str = ""
    within_id: str = ""
    page_size: int = 0
    after: str | None = None
    context: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ListOutput:
    ids: list[str]
    after: str | None
    complete: bool
    revision: int
    policy_version: str


@dataclass(frozen=True, slots=True)
class CheckOutput:
    allowed: bool
    revision: int
    policy_version: str
    explanation: engine.Explanation | None = None


FRESHNESS_WAIT_SECONDS = 10.0


class BulkOutput(NamedTuple):
    results: list[CheckOutput | GatehouseError]
    revision: int
    policy_version: str


class Runtime:
    """Policy + store + index of one server process.

    The index follows the store's changelog in a background task; when the
    changelog cannot continue (trimmed, or the store lost its data) the index
    is rebuilt from a snapshot and swapped in whole. Decisions read
    ``self.index`` once per request, so each sees one revision.

    Threads: everything here runs on the event loop's thread except
    ``check``/``check_many``, which the transport also calls from its poll
    thread. The index changes only under ``index_lock`` (follower), and those
    two read it under the same lock, so a decision never sees half a change.
    """

    def __init__(self, policy: CompiledPolicy, store: GraphStore, index: GraphIndex, epoch: str,
                 policy_dir: Path | None = None, usage_store: UsageStore | None = None) -> None:
        self._policy = policy
        self.store = store
        self.usage_store: UsageStore = usage_store or MemoryUsageStore()
        self.usage_window = DEDUP_WINDOW_SECONDS
        # How long a read without a deadline may wait for the index to reach
        # the revision it asks for; the changelog normally follows in
        # milliseconds, so this only ends waits that would never end.
        self.freshness_wait = FRESHNESS_WAIT_SECONDS
        # organization key -> ((index generation, org version, policy version), metrics)
        self._org_cache: dict[str, tuple[tuple[int, int, str], dict[str, MetricUsage]]] = {}
        # workspace key -> ((index generation, policy version, workspace version), facts)
        self._facts_cache: dict[str, tuple[tuple[int, str, int], WorkspaceFacts]] = {}
        self.index = index
        self.index_lock = threading.Lock()
        self.epoch = epoch
        self.policy_dir = policy_dir
        self.store_healthy = True
        self.health_listeners: list[Callable[[bool], None]] = []
        self._advanced = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, policy: CompiledPolicy, store: GraphStore,
                    policy_dir: Path | None = None,
                    usage_store: UsageStore | None = None) -> Runtime:
        """Build the index from a snapshot and start following the changelog."""
        index, epoch = await cls._snapshot_index(store)
        runtime = cls(policy, store, index, epoch, policy_dir, usage_store)
        runtime._follower = asyncio.create_task(runtime._follow_loop(), name="index-follower")
        return runtime

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await self.store.close()
        await self.usage_store.close()

    @property
    def policy(self) -> CompiledPolicy:
        return self._policy

    # -- following the store ------------------------------------------------

    @staticmethod
    async def _snapshot_index(store: GraphStore) -> tuple[GraphIndex, str]:
        started = time.perf_counter()
        snap = await store.snapshot()
        index = GraphIndex.from_snapshot(snap)
        log.info("index built from snapshot", extra={
            "revision": snap.revision, "relationships": index.relationship_count,
            "seconds": round(time.perf_counter() - started, 3)})
        return index, snap.epoch

    def _set_store_health(self, healthy: bool) -> None:
        if healthy != self.store_healthy:
            self.store_healthy = healthy
            log.warning("store %s", "reachable again" if healthy else "unreachable",
                        extra={"store": self.store.description})
            for listener in self.health_listeners:
                listener(healthy)

    def _advance(self) -> None:
        self._advanced.set()
        self._advanced = asyncio.Event()

    async def _follow_loop(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self.store.head_revision()  # raises Unavailable when unreachable
                self._set_store_health(True)
                backoff = 0.05
                async for change in self.store.follow(self.index.revision, self.epoch):
                    with self.index_lock:
                        self.index.apply((change,))
                    self._advance()
            except ChangelogGap as exc:
                log.warning("rebuilding the index from a snapshot", extra={"reason": str(exc)})
                try:
                    index, epoch = await self._snapshot_index(self.store)
                except Unavailable:
                    self._set_store_health(False)
                    await asyncio.sleep(backoff)
                    continue
                with self.index_lock:
                    self.index, self.epoch = index, epoch
                self._advance()
            except Unavailable as exc:
                self._set_store_health(False)
                log.debug("follower waiting for the store", extra={"error": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("index follower failed; retrying")
                await asyncio.sleep(1.0)

    async def wait_for(self, revision: int, timeout: float | None) -> bool:
        """Wait until the index has applied ``revision``; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.index.revision < revision:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._advanced.wait(), remaining)
            except TimeoutError:
                return False
        return True

    # -- writes -------------------------------------------------------------

    async def write(self, ops: Sequence[Operation],
                    preconditions: Sequence[Precondition] = ()) -> int:
        """Commit one atomic batch under the current policy's rules; return its revision."""
        change = await self.store.write(ops, preconditions, self._policy.write_rules)
        return change.revision

    def validate_relationship(self, rel: Relationship, field: str) -> None:
        """InvalidArgument naming ``field`` unless the policy's types allow ``rel``."""
        problem = relationship_problem(self._policy, rel)
        if problem:
            raise InvalidArgument(field, problem)

    def validate_object(self, ref: ObjectRef, attrs: Mapping[str, Any],
                        field: str) -> dict[str, Any]:
        """The attributes, checked against the type (numbers coerced to int where declared)."""
        tdef = self._policy.types.get(ref.type)
        fixed = dict(attrs)
        if tdef is not None:
            for name, value in attrs.items():
                attr = tdef.attributes.get(name)
                if (attr is not None and attr.type == "int" and isinstance(value, float)
                        and value.is_integer()):
                    fixed[name] = int(value)
        problems = object_problems(self._policy, ref, fixed)
        if problems:
            raise InvalidArgument(f"{field}.object" if "unknown type" in problems[0]
                                  else f"{field}.attributes", problems[0])
        return fixed

    async def delete_matching(self, flt: RelationshipFilter,
                              preconditions: Sequence[Precondition],
                              limit: int) -> tuple[int, int]:
        """Delete every relationship matching ``flt`` at the store's current revision."""
        await self.ensure(Consistency("fully_consistent"), 10.0)
        rels, more = read_relationships(self.index, flt, None, limit)
        if more is not None:
            raise FailedPrecondition(
                "delete-limit", f"more than {limit} relationships match; narrow the filter")
        ops = [DeleteRelationship(rel) for rel in rels]
        pres = list(preconditions) + [Precondition(rel, must_exist=True) for rel in rels]
        revision = await self.write(ops, pres)
        return revision, len(rels)

    def read_relationships(self, flt: RelationshipFilter, after: tuple[str, str, str] | None,
                           limit: int) -> tuple[list[Relationship], tuple[str, str, str] | None,
                                                int]:
        index = self.index
        rels, next_key = read_relationships(index, flt, after, limit)
        return rels, next_key, index.revision

    def read_object(self, ref: ObjectRef) -> tuple[Mapping[str, Any], int]:
        index = self.index
        if ref.type not in self._policy.types:
            raise InvalidArgument("object.type", f"unknown type {ref.type!r}")
        if not index.exists(ref.key):
            raise NotFound(f"{ref} is not in the graph")
        return index.attributes(ref.key), index.revision

    async def watch(self, after: int | None) -> AsyncIterator[Change]:
        """Changes above ``after`` (default: from now on), then live ones."""
        start = self.index.revision if after is None else after
        async for change in self.store.follow(start, self.epoch):
            yield change

    # -- usage --------------------------------------------------------------

    def _usage_model(self) -> UsageModel:
        model = self._policy.usage
        if not model.metrics:
            raise FailedPrecondition("usage", f"policy {self._policy.name!r} declares no metrics")
        return model

    def _organization(self, model: UsageModel, org_id: str, field: str = "organization_id"
                      ) -> str:
        validate_id(org_id, field)
        key = object_key(model.tenant_type, org_id)
        if not self.index.exists(key):
            raise NotFound(f"{key} is not in the graph")
        return key

    def _workspace(self, model: UsageModel, org: str, ws_id: str, field: str) -> str:
        validate_id(ws_id, field)
        key = object_key(model.workspace_type, ws_id)
        if self.index.parent(key) != org:
            raise NotFound(f"{key} is not a workspace of {org}")
        return key

    async def _view(self, model: UsageModel, org: str, period: str) -> UsageView:
        periods = {ALL_TIME: ALL_TIME, period: period}
        counters = await self.usage_store.counters(org, periods)
        index, version = self.index, self._policy.version
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

        return UsageView(model, index, org, counters, period, facts)

    async def compute_usage(self, org_id: str, ws_id: str = "", metrics: Sequence[str] = (),
                            period: str = "") -> UsageReport:
        model = self._usage_model()
        org = self._organization(model, org_id)
        ws = self._workspace(model, org, ws_id, "workspace_id") if ws_id else None
        for i, name in enumerate(metrics):
            if name not in model.metrics:
                raise InvalidArgument(f"metrics[{i}]", f"unknown metric {name!r} (declared: "
                                      f"{', '.join(sorted(model.metrics))})")
        if period and not _PERIOD_RE.fullmatch(period):
            raise InvalidArgument("period", f"{period!r} is not a month like 2026-11")
        period = period or time.strftime("%Y-%m", time.gmtime())
        revision = self.index.revision
        view = await self._view(model, org, period)
        if ws is not None:
            return usage_report(view, ws, revision, metrics or None)
        # Organization level: graph-derived metrics are reused while nothing in the
        # organization changed; recorded ones are read fresh every time.
        index = self.index
        stamp = (index.generation, index.version(org), self._policy.version)
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
        model = self._usage_model()
        if not events:
            raise InvalidArgument("events", "give at least one event")
        if len(events) > 1000:
            raise InvalidArgument("events", f"{len(events)} events; at most 1000 per call")
        org = self._organization(model, org_id)
        now = time.time()
        checked: list[UsageEvent] = []
        for i, e in enumerate(events):
            f = f"events[{i}]"
            if not e.event_id or len(e.event_id) > 200 or not e.event_id.isprintable():
                raise InvalidArgument(f"{f}.event_id", "is required: 1-200 printable characters")
            metric = model.metrics.get(e.metric)
            if metric is None:
                raise InvalidArgument(f"{f}.metric", f"unknown metric {e.metric!r} (declared: "
                                      f"{', '.join(sorted(model.metrics))})")
            if metric.kind != "recorded":
                raise InvalidArgument(f"{f}.metric", f"{e.metric!r} is computed from the graph "
                                      f"(kind {metric.kind}); only recorded metrics take events")
            if not math.isfinite(e.amount) or e.amount < 0:
                raise InvalidArgument(f"{f}.amount", f"must be a finite number >= 0, not "
                                      f"{e.amount!r}")
            if len(e.dimension) > 256 or not e.dimension.isprintable() or SEP_CHAR in e.dimension:
                raise InvalidArgument(f"{f}.dimension", "at most 256 printable characters")
            if metric.aggregate == "distinct" and not e.dimension:
                raise InvalidArgument(f"{f}.dimension", f"{e.metric!r} counts distinct "
                                      "dimensions; give one")
            when = e.event_time if e.event_time is not None else now
            if when > now + FUTURE_SKEW_SECONDS or when < now - self.usage_window:
                raise InvalidArgument(f"{f}.event_time", "must be within the dedup window "
                                      f"({self.usage_window // 86400} days) and not in the future")
            ws = self._workspace(model, org, e.workspace_id, f"{f}.workspace_id")
            checked.append(UsageEvent(e.event_id, org, ws.partition(":")[2], metric, e.amount,
                                      e.dimension, when))
        return [await self.usage_store.record(ev, self.usage_window) for ev in checked]

    async def check_limit(self, org_id: str, proposal: Proposal) -> tuple[LimitDecision, str,
                                                                         int]:
        model = self._usage_model()
        org = self._organization(model, org_id)
        period = time.strftime("%Y-%m", time.gmtime())
        if isinstance(proposal, AddMember | ConnectAccount | RecordAmount):
            ws = self._workspace(model, org, proposal.workspace, "change.workspace_id")
            proposal = dataclasses.replace(proposal, workspace=ws)
        if isinstance(proposal, RecordAmount):
            metric = model.metrics.get(proposal.metric)
            if metric is None or metric.kind != "recorded":
                raise InvalidArgument("record.metric", f"{proposal.metric!r} is not a recorded "
                                      "metric")
            if not math.isfinite(proposal.amount) or proposal.amount < 0:
                raise InvalidArgument("record.amount", "must be a finite number >= 0")
        if isinstance(proposal, AddMember) and not proposal.identity.strip():
            raise InvalidArgument("add_member.email", "is required")
        if isinstance(proposal, ConnectAccount) and not proposal.source_type:
            raise InvalidArgument("connect_account.source_type", "is required")
        revision = self.index.revision
        view = await self._view(model, org, period)
        plan = view.plan.name if view.plan else ""
        return check_limit(view, proposal), plan, revision

    # -- consistency --------------------------------------------------------

    def fresh_enough(self, consistency: Consistency) -> bool:
        """Whether the index already answers ``consistency`` without waiting or asking."""
        if consistency.mode == "minimize_latency":
            return True
        if consistency.mode == "fully_consistent":
            return False
        return self.index.revision >= consistency.revision

    async def ensure(self, consistency: Consistency, timeout: float | None) -> None:
        """Bring the index to the freshness asked for, within ``timeout`` seconds.

        Without a timeout (the call has no deadline) it waits at most
        ``freshness_wait``, so a revision the index never reaches fails
        instead of holding the call forever.
        """
        if consistency.mode == "minimize_latency":
            return
        if timeout is None:
            timeout = self.freshness_wait
        if consistency.mode == "fully_consistent":
            target = await self.store.head_revision()
        else:
            target = consistency.revision
        if not await self.wait_for(target, timeout):
            raise Unavailable(
                f"index is at revision {self.index.revision}, not yet at {target}; "
                "retry, or ask with a longer deadline"
            )

    # -- decisions ----------------------------------------------------------

    def check(self, req: CheckInput) -> CheckOutput:
        """One decision; safe to call from any thread."""
        with self.index_lock:
            return self._check(req, "")

    def _check(self, req: CheckInput, prefix: str) -> CheckOutput:
        policy = self._policy
        index = self.index
        subject, resource = engine.validate_request(
            policy, req.subject_type, req.subject_id, req.action, req.resource_type,
            req.resource_id, prefix,
        )
        if req.explain:
            exp = engine.explain(policy, index, subject, req.action, req.resource_type,
                                 resource, req.context)
            return CheckOutput(exp.allowed, index.revision, policy.version, exp)
        allowed = engine.check(policy, index, subject, req.action, req.resource_type, resource,
                               req.context)
        return CheckOutput(allowed, index.revision, policy.version)

    def list_accessible(self, req: ListInput, deadline: float | None) -> ListOutput:
        """One page of ListAccessible, from one index revision."""
        policy, index = self._policy, self.index
        subject, _ = engine.validate_request(
            policy, req.subject_type, req.subject_id, req.action, req.resource_type, "x")
        within = None
        if req.within_type or req.within_id:
            validate_type(req.within_type, "within.type")
            validate_id(req.within_id, "within.id")
            lineage = policy.types[req.resource_type].lineage
            if req.within_type not in lineage:
                raise InvalidArgument("within.type", f"{req.within_type!r} is not "
                                      f"{req.resource_type!r} or one of its ancestors "
                                      f"({' -> '.join(lineage)})")
            within = object_key(req.within_type, req.within_id)
        if req.page_size > MAX_LIST_PAGE:
            raise InvalidArgument("page_size", f"at most {MAX_LIST_PAGE}")
        page = list_accessible(policy, index, subject, req.action, req.resource_type,
                               within=within, after=req.after, limit=req.page_size or 1000,
                               deadline=deadline, context=req.context)
        return ListOutput(page.ids, page.after, page.complete, index.revision, policy.version)

    def check_many(self, reqs: Sequence[CheckInput]) -> BulkOutput:
        """Decide each request against one policy and one revision, in order.

        Safe to call from any thread; holds the index lock for the whole batch.
        """
        out: list[CheckOutput | GatehouseError] = []
        check = self._check
        with self.index_lock:
            for i, req in enumerate(reqs):
                try:
                    out.append(check(req, f"items[{i}]."))
                except GatehouseError as exc:
                    out.append(exc)
            return BulkOutput(out, self.index.revision, self._policy.version)

    # -- policy reload ------------------------------------------------------

    def _signature(self) -> tuple[tuple[str, int, int], ...]:
        assert self.policy_dir is not None
        try:
            return tuple(
                (p.name, p.stat().st_mtime_ns, p.stat().st_size)
                for p in policy_files(self.policy_dir)
            )
        except OSError:
            return ()

    async def watch_policy(self, interval: float = 1.0) -> None:
        """Poll the policy folder; swap in a new policy when it compiles.

        A broken edit is logged with every problem and the last good policy
        keeps serving.
        """
        if self.policy_dir is None:
            return
        seen = self._signature()
        while True:
            await asyncio.sleep(interval)
            sig = self._signature()
            if sig == seen:
                continue
            seen = sig
            new = await asyncio.to_thread(self._compile)
            if new is not None:
                self._swap(new)

    def reload_policy(self) -> bool:
        """Recompile the policy folder now. True if the new policy is serving."""
        new = self._compile()
        if new is None:
            return False
        self._swap(new)
        return True

    def _compile(self) -> CompiledPolicy | None:
        assert self.policy_dir is not None
        try:
            return load_policy(self.policy_dir)
        except PolicyError as exc:
            log.error("policy reload rejected; still serving %s", self._policy.version,
                      extra={"problems": [str(p) for p in exc.problems]})
            return None

    def _swap(self, new: CompiledPolicy) -> None:
        if new.version != self._policy.version:
            log.info("policy reloaded", extra={"old_version": self._policy.version,
                                               "policy_version": new.version})
        with self.index_lock:  # a CheckBulk on the poll thread sees one policy throughout
            self._policy = new
