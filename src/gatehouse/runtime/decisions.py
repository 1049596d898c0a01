"""Decisions: Check, CheckBulk and ListAccessible against one view.

Safe to call from any thread: ``check`` and ``check_many`` take the view
under the follower's lock (the transport answers them on its poll thread),
so one call sees one policy and one revision throughout.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from gatehouse import engine
from gatehouse.auth import tenants
from gatehouse.engine.listing import list_accessible
from gatehouse.errors import GatehouseError, Internal, InvalidArgument, quote
from gatehouse.graph.index import GraphIndex
from gatehouse.limits import LIMITS
from gatehouse.names import object_key, validate_id, validate_type
from gatehouse.policy.model import CompiledPolicy
from gatehouse.runtime.follower import IndexFollower

log = logging.getLogger("gatehouse.decisions")


class CheckInput(NamedTuple):
    """One check request (a tuple: cheap to build thousands of times per bulk call)."""

    subject_type: str
    subject_id: str
    action: str
    resource_type: str
    resource_id: str
    context: Mapping[str, Any] | None = None
    explain: bool = False


@dataclass(frozen=True, slots=True)
class CheckOutput:
    allowed: bool
    revision: int
    policy_version: str
    explanation: engine.Explanation | None = None


class BulkOutput(NamedTuple):
    results: list[CheckOutput | GatehouseError]
    revision: int
    policy_version: str


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


class Decisions:
    """Answers decisions from the follower's current view."""

    def __init__(self, follower: IndexFollower) -> None:
        self.follower = follower

    def check(self, req: CheckInput,
              organizations: frozenset[str] | None = None) -> CheckOutput:
        """One decision; for a caller bound to ``organizations``, only about a subject
        and a resource inside them (else OutsideTenants)."""
        follower = self.follower
        lock = follower.lock
        if not lock.acquire(blocking=False):
            busy = follower.busy_rows
            # A tenant-bound caller's check reads the subject's relationships
            # everywhere: it waits for the lock.
            if (busy is not None and organizations is None
                    and _reads_none_of(follower.index, req, busy)):
                return _check(follower.policy, follower.index, req, "")
            lock.acquire()
        try:
            policy, index = follower.policy, follower.index
            guard = (None if organizations is None
                     else tenants.TenantGuard(organizations, policy, index))
            return _check(policy, index, req, "", guard)
        finally:
            lock.release()

    def check_many(self, reqs: Sequence[CheckInput | GatehouseError],
                   organizations: frozenset[str] | None = None) -> BulkOutput:
        """Decide each request against one policy and one revision, in order.

        An item that already failed to convert is passed through as its error,
        so one bad item never fails the others; so is an item naming something
        outside a tenant-bound caller's ``organizations``.
        """
        out: list[CheckOutput | GatehouseError] = []
        follower = self.follower
        lock = follower.lock
        locked = lock.acquire(blocking=False)
        if not locked and organizations is not None:
            lock.acquire()
            locked = True
        if not locked:
            busy = follower.busy_rows
            index = follower.index
            if busy is None or not all(isinstance(r, GatehouseError)
                                       or _reads_none_of(index, r, busy) for r in reqs):
                lock.acquire()
                locked = True
        try:
            policy, index = follower.policy, follower.index
            guard = tenants.guard(organizations, policy, index)
            for i, req in enumerate(reqs):
                if isinstance(req, GatehouseError):
                    out.append(req)
                    continue
                try:
                    out.append(_check(policy, index, req, f"items[{i}].", guard))
                except GatehouseError as exc:
                    out.append(exc)
                except Exception:
                    # A bug or a broken part for this item alone: it is an error (never
                    # an allow) and the other items are still answered.
                    log.exception("check of one bulk item failed", extra={"item": i})
                    out.append(Internal(f"items[{i}]"))
            return BulkOutput(out, index.revision, policy.version)
        finally:
            if locked:
                lock.release()

    def list_accessible(self, req: ListInput, deadline: float | None,
                        organizations: frozenset[str] | None = None) -> ListOutput:
        """One page of ListAccessible, from one view (called on the loop thread).

        For a caller bound to ``organizations`` the subject and ``within`` must be
        inside them, and only resources inside them are examined: the page and
        its cursor never hold another organization's ids.
        """
        view = self.follower.view()
        policy, index = view.policy, view.index
        subject, _ = engine.validate_request(
            policy, req.subject_type, req.subject_id, req.action, req.resource_type, "x",
            resource_type_field="resource_type")
        guard = tenants.guard(organizations, policy, index)
        if guard is not None:
            guard.require(subject, "subject")
        within = None
        if req.within_type or req.within_id:
            validate_type(req.within_type, "within.type")
            validate_id(req.within_id, "within.id")
            lineage = policy.types[req.resource_type].lineage
            if req.within_type not in lineage:
                raise InvalidArgument("within.type", f"{quote(req.within_type)} is not "
                                      f"{req.resource_type!r} or one of its ancestors "
                                      f"({' -> '.join(lineage)})")
            within = object_key(req.within_type, req.within_id)
            if guard is not None:
                guard.require(within, "within")
        if req.page_size < 0 or req.page_size > LIMITS.list_page_max:
            raise InvalidArgument("page_size", f"at most {LIMITS.list_page_max}")
        # Below an inside `within` everything is inside; else keep the caller's own.
        keep = guard.visible if guard is not None and within is None else None
        page = list_accessible(policy, index, subject, req.action, req.resource_type,
                               within=within, after=req.after,
                               limit=req.page_size or LIMITS.list_page_default,
                               deadline=deadline, context=req.context, keep=keep)
        return ListOutput(page.ids, page.after, page.complete, index.revision, policy.version)


def _reads_none_of(index: GraphIndex, req: CheckInput, rows: frozenset[str]) -> bool:
    """Whether deciding ``req`` reads only rows outside ``rows``: the resource, its
    ancestors and the subject (whose attributes conditions may read)."""
    resource = f"{req.resource_type}:{req.resource_id}"
    if resource in rows or f"{req.subject_type}:{req.subject_id}" in rows:
        return False
    up = index.up.get(resource)
    return up is None or rows.isdisjoint(up.values())


def _check(policy: CompiledPolicy, index: Any, req: CheckInput, prefix: str,
           guard: tenants.TenantGuard | None = None) -> CheckOutput:
    subject, resource = engine.validate_request(
        policy, req.subject_type, req.subject_id, req.action, req.resource_type,
        req.resource_id, prefix,
    )
    if guard is not None:
        guard.require_check(subject, resource, prefix)
    if req.explain:
        exp = engine.explain(policy, index, subject, req.action, req.resource_type,
                             resource, req.context)
        return CheckOutput(exp.allowed, index.revision, policy.version, exp)
    allowed = engine.check(policy, index, subject, req.action, req.resource_type, resource,
                           req.context)
    return CheckOutput(allowed, index.revision, policy.version)
