"""Run policy test suites: the engine behind ``gatehouse policy test`` and pytest.

A suite's graph is loaded once into its own index for Check cases: every
case is decided twice — by ``check`` and by ``explain`` — and both must
agree with the expectation. Usage, limits, writes and operations cases each
get a fresh memory store holding the suite's graph (written under the
policy's constraints) and a :class:`~gatehouse.runtime.Runtime` over it, so
they run through the same code as the server: ``ComputeUsage``,
``CheckLimit``, GraphService writes and the tenancy operations' decide-commit
loop. One loader, shared by the CLI and the project's own tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatehouse import engine
from gatehouse.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    GatehouseError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PolicyError,
    Problem,
    ResourceExhausted,
    Unavailable,
)
from gatehouse.graph.changes import (
    Change,
    DeleteObject,
    DeleteRelationship,
    Operation,
    PutObject,
    TouchRelationship,
)
from gatehouse.graph.datafile import parse_data
from gatehouse.graph.index import GraphIndex
from gatehouse.graph.memory import MemoryGraphStore
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.limits import LIMITS
from gatehouse.names import split_key
from gatehouse.policy.files import size_problems
from gatehouse.policy.loader import load_policy
from gatehouse.policy.model import CompiledPolicy
from gatehouse.policy.suite import (
    KINDS,
    REFERENCE_RE,
    After,
    AnyCase,
    Case,
    Event,
    LimitCase,
    OperationCase,
    Step,
    Suite,
    UsageCase,
    WriteCase,
    find_suites,
    parse_suite,
)
from gatehouse.runtime import FULLY_CONSISTENT, EventInput, Runtime, TenancyOperations
from gatehouse.tenancy import Commit, Context, domains, invitations, links, members, moves
from gatehouse.tenancy import workspaces as ws_ops
from gatehouse.usage.limits import (
    AddMember,
    ConnectAccount,
    CreateWorkspace,
    Proposal,
    RecordAmount,
)

DAY = 86400

# The gRPC status each domain error is answered with (as gatehouse.api.errors maps them).
_CODES: tuple[tuple[type[GatehouseError], str], ...] = (
    (InvalidArgument, "INVALID_ARGUMENT"),
    (NotFound, "NOT_FOUND"),
    (AlreadyExists, "ALREADY_EXISTS"),
    (PermissionDenied, "PERMISSION_DENIED"),
    (FailedPrecondition, "FAILED_PRECONDITION"),
    (Aborted, "ABORTED"),
    (Unavailable, "UNAVAILABLE"),
    (ResourceExhausted, "RESOURCE_EXHAUSTED"),
)


def status_name(exc: GatehouseError) -> str:
    for cls, name in _CODES:
        if isinstance(exc, cls):
            return name
    return "UNKNOWN"


@dataclass(frozen=True, slots=True)
class Outcome:
    case: AnyCase
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class SuiteGraph:
    """A suite's graph: the write that loads it into a store, and its index."""

    ops: tuple[Operation, ...]
    index: GraphIndex


class _CaseFailed(Exception):
    """Ends a case early with what went wrong."""


def suite_graph(policy: CompiledPolicy, suite: Suite) -> tuple[SuiteGraph | None, list[Problem]]:
    ops, problems = parse_data(suite.data, suite.smap, policy, suite.data_base)
    if problems:
        return None, problems
    index = GraphIndex()
    index.apply([Change(1, tuple(ops))])
    return SuiteGraph(tuple(ops), index), []


def suite_index(policy: CompiledPolicy, suite: Suite) -> tuple[GraphIndex | None, list[Problem]]:
    graph, problems = suite_graph(policy, suite)
    return (graph.index if graph is not None else None), problems


# -- Check ------------------------------------------------------------------------------


def _decide(policy: CompiledPolicy, index: GraphIndex, subject_key: str, action: str,
            resource_key: str, context: Mapping[str, Any]) -> tuple[bool, str]:
    """(allowed, summary); raises _CaseFailed if check and explain disagree or the request
    is invalid."""
    s_type, s_id = split_key(subject_key)
    r_type, r_id = split_key(resource_key)
    try:
        subject, resource = engine.validate_request(policy, s_type, s_id, action, r_type, r_id)
    except GatehouseError as exc:
        raise _CaseFailed(f"invalid case: {exc}") from None
    got = engine.check(policy, index, subject, action, r_type, resource, dict(context))
    exp = engine.explain(policy, index, subject, action, r_type, resource, dict(context))
    if exp.allowed != got:
        raise _CaseFailed(f"check says {got} but explain says {exp.allowed}")
    trace = "\n      ".join(exp.trace)
    return got, f"{exp.summary}\n      {trace}"


def run_check(policy: CompiledPolicy, index: GraphIndex, case: Case) -> Outcome:
    try:
        got, why = _decide(policy, index, case.subject, case.action, case.resource,
                           case.context)
    except _CaseFailed as exc:
        return Outcome(case, False, str(exc))
    if got != case.expect_allow:
        want = "allow" if case.expect_allow else "deny"
        have = "allow" if got else "deny"
        return Outcome(case, False, f"expected {want}, got {have}: {why}")
    return Outcome(case, True, why.partition("\n")[0])


# -- a fresh runtime per case --------------------------------------------------------------


@asynccontextmanager
async def _fresh_runtime(policy: CompiledPolicy, graph: SuiteGraph) -> AsyncIterator[Runtime]:
    store = MemoryGraphStore()
    if graph.ops:
        try:
            await store.write(graph.ops, (), policy.write_rules)
        except GatehouseError as exc:
            raise _CaseFailed(f"the store refuses the suite's graph: {exc}") from None
    runtime = await Runtime.start(policy, store)
    try:
        yield runtime
    finally:
        await runtime.close()


async def _settled(runtime: Runtime) -> tuple[CompiledPolicy, GraphIndex]:
    """The policy and an index that has caught up with every write so far."""
    await runtime.follower.ensure(FULLY_CONSISTENT, LIMITS.freshness_wait_seconds)
    view = runtime.follower.view()
    return view.policy, view.index


def _substitute(text: str, saved: Mapping[str, Mapping[str, Any]]) -> str:
    """``$name.field`` replaced by the field of the answer the step ``name`` saved."""
    def one(m: Any) -> str:
        name, fld = m.group(1), m.group(2)
        if name not in saved:
            raise _CaseFailed(f"${name}.{fld}: no earlier step saved {name!r}")
        if fld not in saved[name]:
            raise _CaseFailed(f"${name}.{fld}: the answer saved as {name!r} has no {fld!r} "
                              f"(fields: {', '.join(sorted(saved[name]))})")
        return str(saved[name][fld])
    return REFERENCE_RE.sub(one, text)


async def _check_after(runtime: Runtime, then: Sequence[After],
                       saved: Mapping[str, Mapping[str, Any]]) -> None:
    if not then:
        return
    policy, index = await _settled(runtime)
    for after in then:
        where = f"then (line {after.line})"
        if after.subject:
            subject = _substitute(after.subject, saved)
            resource = _substitute(after.resource, saved)
            for actions, want in ((after.allow, True), (after.deny, False)):
                for action in actions:
                    try:
                        got, why = _decide(policy, index, subject, action, resource,
                                           after.context)
                    except _CaseFailed as exc:
                        raise _CaseFailed(f"{where}: {exc}") from None
                    if got != want:
                        raise _CaseFailed(
                            f"{where}: expected {'allow' if want else 'deny'} of {action} "
                            f"for {subject} on {resource}, got {'allow' if got else 'deny'}: "
                            f"{why}")
        for texts, want in ((after.present, True), (after.absent, False)):
            for raw in texts:
                text = _substitute(raw, saved)
                if _exists(index, text) != want:
                    raise _CaseFailed(f"{where}: expected {text} to be "
                                      f"{'present' if want else 'absent'}")


def _exists(index: GraphIndex, text: str) -> bool:
    if "#" in text:
        left, _, subject = text.partition("@")
        resource, _, relation = left.partition("#")
        return index.holds(resource.strip(), relation, subject.strip())
    key = text.strip()
    return key in index.attrs or index.exists(key)


async def _record(runtime: Runtime, org: str, events: Sequence[Event]) -> None:
    for e in events:
        try:
            await runtime.usage.record_usage(org, [EventInput(e.id, e.workspace, e.metric,
                                                              e.amount, e.dimension)])
        except GatehouseError as exc:
            raise _CaseFailed(f"recording event {e.id}: {exc}") from None


# -- usage and limits ----------------------------------------------------------------------


async def _run_usage(runtime: Runtime, case: UsageCase) -> str:
    await _record(runtime, case.organization, case.events)
    await _settled(runtime)
    try:
        report = await runtime.usage.compute_usage(case.organization, case.workspace)
    except GatehouseError as exc:
        raise _CaseFailed(f"ComputeUsage refused: {status_name(exc)} {exc}") from None
    values = {m.metric.name: m for m in report.metrics}
    wrong = []
    for name, expected in case.metrics.items():
        got = values.get(name)
        if got is None:
            wrong.append(f"{name}: no such metric (declared: {', '.join(sorted(values))})")
        elif got.value != expected:
            wrong.append(f"{name}: expected {expected:g}, got {got.value:g}")
    plan = report.plan.name if report.plan else ""
    if case.plan is not None and plan != case.plan:
        wrong.append(f"plan: expected {case.plan!r}, got {plan!r}")
    if case.fallback is not None and report.plan_is_fallback != case.fallback:
        wrong.append(f"fallback: expected {case.fallback}, got {report.plan_is_fallback}")
    if case.over is not None:
        over = sorted(n for n, m in values.items() if m.over)
        if over != sorted(case.over):
            wrong.append(f"over: expected {sorted(case.over)}, got {over}")
    if wrong:
        raise _CaseFailed("; ".join(wrong))
    where = f"workspace {case.workspace}" if case.workspace else "organization"
    return f"{where} of {case.organization} on plan {plan!r}"


def _proposal(case: LimitCase) -> Proposal:
    v = case.values
    if case.change == "add_member":
        return AddMember(str(v.get("workspace", "")), str(v.get("email", "")))
    if case.change == "connect_account":
        return ConnectAccount(str(v.get("workspace", "")), str(v.get("source_type", "")),
                              str(v.get("credential_id", "")), tuple(v.get("tenants", ())))
    if case.change == "record":
        return RecordAmount(str(v.get("metric", "")), str(v.get("workspace", "")),
                            float(v.get("amount", 0.0)), str(v.get("dimension", "")))
    return CreateWorkspace()


async def _run_limit(runtime: Runtime, case: LimitCase) -> str:
    await _record(runtime, case.organization, case.events)
    await _settled(runtime)
    try:
        decision, _plan, _rev = await runtime.usage.check_limit(case.organization,
                                                               _proposal(case))
    except GatehouseError as exc:
        raise _CaseFailed(f"CheckLimit refused: {status_name(exc)} {exc}") from None
    if decision.allowed != case.allowed:
        want = "allowed" if case.allowed else "refused"
        raise _CaseFailed(f"expected {want}, got {'allowed' if decision.allowed else 'refused'}"
                          f": {decision.reason}")
    if case.reason not in decision.reason:
        raise _CaseFailed(f"expected a reason holding {case.reason!r}, got {decision.reason!r}")
    return decision.reason


# -- writes --------------------------------------------------------------------------------


def _write_ops(runtime: Runtime, case: WriteCase) -> list[Operation]:
    """The case's operations, checked against the policy's types as GraphService does."""
    ops: list[Operation] = []
    for i, line in enumerate(case.write):
        fld = f"write[{i}]"
        if line.op in ("touch", "delete"):
            rel = Relationship.parse(line.target, fld)
            if line.op == "touch":
                runtime.graph.validate_relationship(rel, fld)
                ops.append(TouchRelationship(rel))
            else:
                ops.append(DeleteRelationship(rel))
        elif line.op == "put":
            ref = ObjectRef.parse(line.target, fld)
            attrs = runtime.graph.validate_object(ref, line.attributes, fld)
            ops.append(PutObject(ref, attrs))
        else:
            ops.append(DeleteObject(ObjectRef.parse(line.target, fld)))
    return ops


async def _run_write(runtime: Runtime, case: WriteCase) -> str:
    try:
        revision = await runtime.graph.write(_write_ops(runtime, case))
    except GatehouseError as exc:
        rule = (exc.rule if isinstance(exc, FailedPrecondition)
                else "invalid" if isinstance(exc, InvalidArgument) else status_name(exc))
        if not case.refused:
            raise _CaseFailed(f"expected the write to be allowed, refused: "
                              f"{status_name(exc)} {exc}") from None
        if rule != case.refused:
            raise _CaseFailed(f"expected a refusal by {case.refused!r}, refused by {rule!r}: "
                              f"{exc}") from None
        if case.message not in str(exc):
            raise _CaseFailed(f"expected a message holding {case.message!r}, got "
                              f"{str(exc)!r}") from None
        return str(exc)
    if case.refused:
        raise _CaseFailed(f"expected a refusal by {case.refused!r}; the write was allowed "
                          f"(revision {revision})")
    await _check_after(runtime, case.then, {})
    return f"allowed at revision {revision}"


# -- tenancy operations --------------------------------------------------------------------


def _ref(text: Any) -> ObjectRef:
    """``type:id`` as the request reference an operation takes (not validated here: the
    operation validates it, as it does a request's)."""
    type_, _, id_ = str(text or "").partition(":")
    return ObjectRef(type_, id_)


def _answer(op: str, value: Any, now: float) -> dict[str, Any]:
    """An operation's answer as named fields (what ``result`` and ``save`` see)."""
    if isinstance(value, tuple):  # check_slug
        return {"available": value[0], "reason": value[1]}
    if isinstance(value, int):
        return {"revision": value}
    if isinstance(value, list):
        key = {"list_invitations": "invitations", "list_access_links": "links"}.get(
            op, "matches")
        return {key: [dataclasses.asdict(v) for v in value]}
    if isinstance(value, domains.Joined):
        return {**dataclasses.asdict(value.match), "revision": value.revision}
    fields: dict[str, Any] = dataclasses.asdict(value)
    if isinstance(value, invitations.Issued):
        link = op == "create_access_link"
        fields["link_id" if link else "invitation_id"] = value.record_id
        fields["expires_in_seconds"] = value.expires_at - int(now)
    return fields


def _matches(expected: Any, actual: Any, partial: bool = False) -> bool:
    """Whether ``actual`` holds ``expected``. An answer, and each mapping in a list, is
    matched by the keys given (``partial``); other mappings exactly (``reassigned`` counts
    every type); lists item by item; everything else by equality."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or (not partial and set(actual) != set(expected)):
            return False
        return all(k in actual and _matches(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(actual) == len(expected)
                and all(_matches(e, a, partial=True)
                        for e, a in zip(expected, actual, strict=True)))
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    return bool(expected == actual)


async def _perform(runtime: Runtime, ops: TenancyOperations, step: Step,
                   args: Mapping[str, Any]) -> Any:
    """Run one step through the tenancy runner, as TenancyService would."""
    a = args
    actor = _ref(step.actor)

    def s(name: str) -> str:
        return str(a.get(name, ""))

    def decide(fn: Callable[[Context], Commit[Any]]) -> Any:
        return ops.run(fn)

    op = step.op
    if op == "create_organization":
        return await decide(lambda ctx: ws_ops.create_organization(
            ctx, actor, s("organization_id"), s("name"), s("plan")))
    if op == "create_workspace":
        return await decide(lambda ctx: ws_ops.create_workspace(
            ctx, actor, s("organization_id"), s("name"), s("slug")))
    if op == "check_slug":
        return await ops.read(lambda ctx: ws_ops.check_slug(ctx, s("organization_id"),
                                                            s("slug")))
    if op == "rename_workspace":
        return await decide(lambda ctx: ws_ops.rename_workspace(ctx, actor, s("workspace_id"),
                                                                s("name")))
    if op == "delete_workspace":
        return await decide(lambda ctx: ws_ops.delete_workspace(
            ctx, actor, s("workspace_id"), s("confirm_name")))
    if op == "invite_member":
        return await decide(lambda ctx: invitations.invite_member(
            ctx, actor, _ref(a.get("scope")), s("email"), s("role"),
            int(a.get("ttl_seconds", 0))))
    if op == "accept_invitation":
        return await decide(lambda ctx: invitations.accept_invitation(
            ctx, s("token"), _ref(a.get("subject"))))
    if op == "revoke_invitation":
        return await decide(lambda ctx: invitations.revoke_invitation(ctx, actor,
                                                                      s("invitation_id")))
    if op == "resend_invitation":
        return await decide(lambda ctx: invitations.resend_invitation(ctx, actor,
                                                                      s("invitation_id")))
    if op == "list_invitations":
        return await ops.read(lambda ctx: invitations.list_invitations(
            ctx, actor, _ref(a.get("scope"))))
    if op == "set_role":
        return await decide(lambda ctx: members.set_role(
            ctx, actor, _ref(a.get("scope")), _ref(a.get("subject")), s("role")))
    if op == "remove_member":
        return await decide(lambda ctx: members.remove_member(
            ctx, actor, _ref(a.get("scope")), _ref(a.get("member")),
            _ref(a.get("reassign_to"))))
    if op == "create_access_link":
        return await decide(lambda ctx: links.create_access_link(
            ctx, actor, s("workspace_id"), s("source_type")))
    if op == "list_access_links":
        return await ops.read(lambda ctx: links.list_access_links(ctx, actor,
                                                                  s("workspace_id")))
    if op == "redeem_access_link":
        attrs = dict(a.get("attributes") or {})

        def redeem(ctx: Context) -> Commit[links.Redeemed]:
            rules = ctx.rules.access_links
            if rules is not None:
                # As RedeemAccessLink does: the attributes must fit the created type,
                # and source_type comes from the link.
                if "source_type" in attrs:
                    raise InvalidArgument("attributes.source_type", "comes from the link")
                runtime.graph.validate_object(ObjectRef(rules.creates, "x"), attrs, "")
            return links.redeem_access_link(ctx, s("token"), s("connection_id"), attrs)
        return await decide(redeem)
    if op == "delete_access_link":
        return await decide(lambda ctx: links.delete_access_link(ctx, actor, s("link_id")))
    if op == "add_domain":
        return await decide(lambda ctx: domains.add_domain(
            ctx, actor, s("organization_id"), s("domain"), s("mode"), s("workspace_id"),
            s("role")))
    if op == "resolve_signup":
        return await ops.read(lambda ctx: domains.resolve_signup(ctx, s("email")))
    if op == "join_by_domain":
        return await decide(lambda ctx: domains.join_by_domain(ctx, _ref(a.get("subject"))))
    if op == "move_resource":
        return await decide(lambda ctx: moves.move_resource(
            ctx, actor, _ref(a.get("resource")), s("to_workspace_id")))
    raise _CaseFailed(f"unknown operation {op!r}")


async def _run_operations(runtime: Runtime, case: OperationCase) -> str:
    base = time.time()
    offset = [0.0]

    def clock() -> float:
        return base + offset[0]

    ops = TenancyOperations(runtime.follower, runtime.usage, clock)
    saved: dict[str, dict[str, Any]] = {}
    answers = []
    for step in case.steps:
        where = f"line {step.line} {step.op}"
        offset[0] += step.advance_days * DAY
        try:
            args = {k: _substitute(v, saved) if isinstance(v, str) else v
                    for k, v in step.args.items()}
            actor_text = _substitute(step.actor, saved)
            value = await _perform(runtime, ops, dataclasses.replace(step, actor=actor_text),
                                   args)
        except _CaseFailed as exc:
            raise _CaseFailed(f"{where}: {exc}") from None
        except GatehouseError as exc:
            code = status_name(exc)
            if not step.code:
                raise _CaseFailed(f"{where}: expected ok, got {code}: {exc}") from None
            if code != step.code or step.message not in str(exc):
                want = f"{step.code}" + (f" holding {step.message!r}" if step.message else "")
                raise _CaseFailed(f"{where}: expected {want}, got {code}: {exc}") from None
            answers.append(f"{step.op}: {code}")
        else:
            fields = _answer(step.op, value, clock())
            shown = {k: v for k, v in fields.items() if k != "token"}
            if step.code:
                raise _CaseFailed(f"{where}: expected {step.code}, got ok: {shown}")
            if not _matches(step.result, fields, partial=True):
                raise _CaseFailed(f"{where}: expected a result holding {step.result}, got "
                                  f"{shown}")
            if step.save:
                saved[step.save] = fields
            answers.append(f"{step.op}: ok")
        try:
            await _check_after(runtime, step.then, saved)
        except _CaseFailed as exc:
            raise _CaseFailed(f"{where}: {exc}") from None
    await _check_after(runtime, case.then, saved)
    return "; ".join(answers)


# -- running ----------------------------------------------------------------------------


async def arun_case(policy: CompiledPolicy, graph: SuiteGraph, case: AnyCase) -> Outcome:
    """Decide one case of any kind."""
    if isinstance(case, Case):
        return run_check(policy, graph.index, case)
    try:
        async with _fresh_runtime(policy, graph) as runtime:
            if isinstance(case, UsageCase):
                detail = await _run_usage(runtime, case)
            elif isinstance(case, LimitCase):
                detail = await _run_limit(runtime, case)
            elif isinstance(case, WriteCase):
                detail = await _run_write(runtime, case)
            else:
                detail = await _run_operations(runtime, case)
    except _CaseFailed as exc:
        return Outcome(case, False, str(exc))
    except Exception as exc:  # a runner reports a crash as a failed case
        return Outcome(case, False, f"raised {type(exc).__name__}: {exc}")
    return Outcome(case, True, detail)


def run_case(policy: CompiledPolicy, graph: SuiteGraph, case: AnyCase) -> Outcome:
    """Decide one case; runtime cases get their own event loop."""
    if isinstance(case, Case):
        return run_check(policy, graph.index, case)
    return asyncio.run(arun_case(policy, graph, case))


@dataclass(slots=True)
class SuiteResults:
    """What ``gatehouse policy test`` prints: problems found, then every case's outcome."""

    policy: CompiledPolicy | None
    problems: list[Problem]
    outcomes: list[Outcome]

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.outcomes) and all(o.passed for o in self.outcomes)

    def counts(self) -> dict[str, int]:
        """Cases per kind (check, usage, limits, writes, operations), kinds present only."""
        out: dict[str, int] = {}
        for kind in ("check", *KINDS[1:]):
            n = sum(1 for o in self.outcomes if o.case.kind == kind)
            if n:
                out[kind] = n
        return out


def collect(directory: str | Path) -> tuple[CompiledPolicy, list[tuple[AnyCase, SuiteGraph]],
                                             list[Problem]]:
    """Load a policy folder and its suites. Raises PolicyError if the policy is bad."""
    policy = load_policy(directory)
    cases: list[tuple[AnyCase, SuiteGraph]] = []
    suites = find_suites(directory)
    problems = size_problems(Path(directory), suites, "test suites")
    if problems:
        return policy, cases, problems
    for path in suites:
        suite, probs = parse_suite(path)
        problems.extend(probs)
        if suite is None:
            continue
        graph, probs = suite_graph(policy, suite)
        problems.extend(probs)
        if graph is not None:
            cases.extend((case, graph) for case in suite.cases)
    return policy, cases, problems


async def _run_all(policy: CompiledPolicy,
                   cases: Sequence[tuple[AnyCase, SuiteGraph]]) -> list[Outcome]:
    return [await arun_case(policy, graph, case) for case, graph in cases]


def run(directory: str | Path) -> SuiteResults:
    try:
        policy, cases, problems = collect(directory)
    except PolicyError as exc:
        return SuiteResults(None, exc.problems, [])
    outcomes = asyncio.run(_run_all(policy, cases))
    if not cases and not problems:
        problems.append(Problem(str(directory), 0, 0, "", "no test suites (*_test.yaml) found"))
    return SuiteResults(policy, problems, outcomes)


__all__ = ["Outcome", "SuiteGraph", "SuiteResults", "arun_case", "collect",
           "run", "run_case", "run_check", "status_name", "suite_graph", "suite_index"]
