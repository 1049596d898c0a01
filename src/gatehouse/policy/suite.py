"""Policy test suites (``*_test.yaml``): parsed here, run by ``gatehouse.policytest``.

::

    name: coupler role table
    data:                     # a small graph, same form as a data file
      objects: {...}
      relationships: [...]
    # or: data_file: ../../../examples/coupler.data.yaml  (relative to this file)
    tests:                    # Check: allow / deny
      - name: a user edits but does not delete another user's flow
        subject: user:uma
        resource: data_flow:f_bob
        context: {}           # optional request context
        allow: [view, run, edit]
        deny: [delete]
    usage:                    # ComputeUsage values
      - name: the seed's billing example
        organization: acme
        workspace: marketing  # optional: that workspace's values
        events: [{workspace: marketing, metric: llm_credits, amount: 5}]
        metrics: {users: 3, accounts: 3}
        plan: pro             # optional: the plan the organization resolves to
        fallback: false       # optional: whether that is the fallback plan
        over: []              # optional: exactly the metrics over their limit
    limits:                   # CheckLimit
      - name: the free plan keeps one workspace
        organization: acme
        change: {create_workspace: {}}
        allowed: false
        reason: "workspaces: 2 would exceed the limit of 1"
    writes:                   # GraphService writes under the policy's constraints
      - name: a second AI workspace is refused
        write:
          - organization:acme#ai_workspace@workspace:finance
          - {delete: organization:acme#owner@user:olivia}
          - {put: workspace:w9, attributes: {name: X, slug: x9}}
          - {delete_object: workspace:w9}
        refused: one_ai_workspace    # or: allowed: true
        message: "would have 2 subjects"
    operations:               # TenancyService operations, decided and committed
      - name: a workspace admin cannot create workspaces
        op: create_workspace
        actor: user:adam
        args: {organization_id: acme, name: Sales}
        expect: {code: PERMISSION_DENIED, message: create_workspace}
      - name: an invitation, accepted
        steps:
          - {op: invite_member, actor: user:olivia, save: inv,
             args: {scope: workspace:marketing, email: new@acme.example, role: user}}
          - {op: accept_invitation, args: {token: $inv.token, subject: user:newbie}}
        then:
          - {subject: user:newbie, resource: workspace:marketing, allow: [view]}
          - {present: [workspace:marketing#user@user:newbie]}

Every (test, action) pair of ``tests`` is one case; every entry of the other
lists is one case. Each is reported with the line it was written on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatehouse.errors import Problem
from gatehouse.policy.files import POLICY_STRICTNESS, read_capped
from gatehouse.policy.sections import shown
from gatehouse.sourcemap import DocPath, SourceMap, load

KINDS = ("tests", "usage", "limits", "writes", "operations")
SUITE_KEYS = {"name", "description", "data", "data_file", *KINDS}
TEST_KEYS = {"name", "subject", "resource", "context", "allow", "deny"}
USAGE_KEYS = {"name", "organization", "workspace", "events", "metrics", "plan", "fallback",
              "over"}
EVENT_KEYS = {"id", "workspace", "metric", "amount", "dimension"}
LIMIT_KEYS = {"name", "organization", "events", "change", "allowed", "reason"}
WRITE_KEYS = {"name", "write", "allowed", "refused", "message", "then"}
OPERATION_KEYS = {"name", "op", "actor", "args", "expect", "result", "save", "advance_days",
                  "then", "steps"}
STEP_KEYS = OPERATION_KEYS - {"name", "steps"}
THEN_KEYS = {"subject", "resource", "context", "allow", "deny", "present", "absent"}

CHANGES: Mapping[str, Mapping[str, str]] = {
    "create_workspace": {},
    "add_member": {"workspace": "str", "email": "str"},
    "connect_account": {"workspace": "str", "source_type": "str", "credential_id": "str",
                        "tenants": "strs"},
    "record": {"workspace": "str", "metric": "str", "amount": "number", "dimension": "str"},
}

# The gRPC status names a step may expect (DESIGN §10), and ``ok``.
CODES = ("INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
         "FAILED_PRECONDITION", "ABORTED")


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One tenancy operation a suite can run: its arguments (name -> kind) and whether
    it acts on behalf of an ``actor``."""

    args: Mapping[str, str]
    actor: bool = True


# Argument kinds: str, int, ref ("type:id"), map (a mapping of attributes).
OPERATIONS: Mapping[str, OpSpec] = {
    "create_organization": OpSpec({"organization_id": "str", "name": "str", "plan": "str"}),
    "create_workspace": OpSpec({"organization_id": "str", "name": "str", "slug": "str"}),
    "check_slug": OpSpec({"organization_id": "str", "slug": "str"}, actor=False),
    "rename_workspace": OpSpec({"workspace_id": "str", "name": "str"}),
    "delete_workspace": OpSpec({"workspace_id": "str", "confirm_name": "str"}),
    "invite_member": OpSpec({"scope": "ref", "email": "str", "role": "str",
                             "ttl_seconds": "int"}),
    "accept_invitation": OpSpec({"token": "str", "subject": "ref"}, actor=False),
    "revoke_invitation": OpSpec({"invitation_id": "str"}),
    "resend_invitation": OpSpec({"invitation_id": "str"}),
    "list_invitations": OpSpec({"scope": "ref"}),
    "set_role": OpSpec({"scope": "ref", "subject": "ref", "role": "str"}),
    "remove_member": OpSpec({"scope": "ref", "member": "ref", "reassign_to": "ref"}),
    "create_access_link": OpSpec({"workspace_id": "str", "source_type": "str"}),
    "list_access_links": OpSpec({"workspace_id": "str"}),
    "redeem_access_link": OpSpec({"token": "str", "connection_id": "str", "attributes": "map"},
                                 actor=False),
    "delete_access_link": OpSpec({"link_id": "str"}),
    "add_domain": OpSpec({"organization_id": "str", "domain": "str", "mode": "str",
                          "workspace_id": "str", "role": "str"}),
    "resolve_signup": OpSpec({"email": "str"}, actor=False),
    "join_by_domain": OpSpec({"subject": "ref"}, actor=False),
    "move_resource": OpSpec({"resource": "ref", "to_workspace_id": "str"}),
}

SAVE_RE = re.compile(r"[a-z_][a-z0-9_]*", re.ASCII)
REFERENCE_RE = re.compile(r"\$([a-z_][a-z0-9_]*)\.([a-z_][a-z0-9_]*)", re.ASCII)


def _known(names: Any) -> str:
    return ", ".join(sorted(names))


@dataclass(frozen=True, slots=True)
class Case:
    """A Check case: one action of one ``tests`` entry."""

    suite: str
    test: str
    file: str
    line: int
    subject: str
    resource: str
    action: str
    expect_allow: bool
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        verdict = "allow" if self.expect_allow else "deny"
        return f"{Path(self.file).name}:{self.line} {self.test} [{self.action}: {verdict}]"

    @property
    def kind(self) -> str:
        return "check"


@dataclass(frozen=True, slots=True)
class After:
    """What must hold once a case's writes are done: Check decisions for one subject and
    resource, and relationships (``r:1#rel@s:2``) or objects (``t:id``) present or absent."""

    line: int
    subject: str = ""
    resource: str = ""
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    context: Mapping[str, Any] = field(default_factory=dict)
    present: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    """A usage event recorded before a usage or limits case is decided."""

    id: str
    workspace: str
    metric: str
    amount: float
    dimension: str = ""


@dataclass(frozen=True, slots=True)
class UsageCase:
    suite: str
    test: str
    file: str
    line: int
    organization: str
    workspace: str
    events: tuple[Event, ...]
    metrics: Mapping[str, float]
    plan: str | None = None
    fallback: bool | None = None
    over: tuple[str, ...] | None = None

    @property
    def id(self) -> str:
        return f"{Path(self.file).name}:{self.line} {self.test} [usage]"

    @property
    def kind(self) -> str:
        return "usage"


@dataclass(frozen=True, slots=True)
class LimitCase:
    suite: str
    test: str
    file: str
    line: int
    organization: str
    events: tuple[Event, ...]
    change: str
    values: Mapping[str, Any]
    allowed: bool
    reason: str = ""

    @property
    def id(self) -> str:
        verdict = "allowed" if self.allowed else "refused"
        return f"{Path(self.file).name}:{self.line} {self.test} [{self.change}: {verdict}]"

    @property
    def kind(self) -> str:
        return "limits"


@dataclass(frozen=True, slots=True)
class WriteLine:
    """One operation of a ``writes`` case: touch, delete, put or delete_object."""

    line: int
    op: str
    target: str
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WriteCase:
    suite: str
    test: str
    file: str
    line: int
    write: tuple[WriteLine, ...]
    refused: str
    message: str = ""
    then: tuple[After, ...] = ()

    @property
    def id(self) -> str:
        verdict = f"refused {self.refused}" if self.refused else "allowed"
        return f"{Path(self.file).name}:{self.line} {self.test} [write: {verdict}]"

    @property
    def kind(self) -> str:
        return "writes"


@dataclass(frozen=True, slots=True)
class Step:
    """One tenancy operation and what it must answer."""

    line: int
    op: str
    actor: str
    args: Mapping[str, Any]
    code: str = ""
    """The expected refusal's status name; empty: the operation succeeds."""
    message: str = ""
    result: Mapping[str, Any] = field(default_factory=dict)
    save: str = ""
    advance_days: float = 0.0
    then: tuple[After, ...] = ()


@dataclass(frozen=True, slots=True)
class OperationCase:
    suite: str
    test: str
    file: str
    line: int
    steps: tuple[Step, ...]
    then: tuple[After, ...] = ()

    @property
    def id(self) -> str:
        last = self.steps[-1]
        ops = ", ".join(s.op for s in self.steps)
        return f"{Path(self.file).name}:{self.line} {self.test} [{ops}: {last.code or 'ok'}]"

    @property
    def kind(self) -> str:
        return "operations"


AnyCase = Case | UsageCase | LimitCase | WriteCase | OperationCase


@dataclass(slots=True)
class Suite:
    name: str
    file: str
    data: Any
    smap: SourceMap
    data_base: DocPath
    cases: list[AnyCase]


def find_suites(directory: str | Path) -> list[Path]:
    """Every ``*_test.yaml`` below a policy folder."""
    root = Path(directory)
    return sorted(p for p in root.rglob("*_test.y*ml") if p.is_file())


def parse_suite(path: Path) -> tuple[Suite | None, list[Problem]]:
    text, problem = read_capped(path)
    if text is None:
        return None, [problem] if problem is not None else []
    value, smap, problems = load(text, str(path), POLICY_STRICTNESS)
    if problems:
        return None, problems
    if not isinstance(value, dict):
        return None, [smap.problem((), "a test suite is a mapping with data and tests")]
    for key in sorted(set(value) - SUITE_KEYS, key=str):
        problems.append(smap.problem((key,), f"unknown key {shown(key)} (known: "
                                     f"{_known(SUITE_KEYS)})", at_key=True))
    name = str(value.get("name") or path.stem)
    data: Any = value.get("data")
    base: DocPath
    smap_data, base = smap, ("data",)
    if "data_file" in value:
        if "data" in value:
            problems.append(smap.problem(("data_file",), "give data or data_file, not both"))
        ref = path.parent / str(value["data_file"])
        dtext, problem = read_capped(ref)
        if problem is not None:
            problems.append(smap.problem(("data_file",), f"{ref}: {problem.message}"))
        data, smap_data, dprobs = load(dtext or "", str(ref), POLICY_STRICTNESS)
        problems.extend(dprobs)
        base = ()
    reader = _Reader(smap, problems, name, str(path))
    cases: list[AnyCase] = []
    present = [k for k in KINDS if k in value]
    if not present:
        problems.append(smap.problem((), "a suite needs at least one non-empty list of cases: "
                                     + ", ".join(KINDS)))
    for kind in present:
        entries = value[kind]
        if not isinstance(entries, list) or not entries:
            problems.append(smap.problem((kind,), f"{kind} must be a non-empty list of cases"))
            continue
        for i, entry in enumerate(entries):
            cases.extend(reader.entry(kind, (kind, i), entry))
    if problems:
        return None, problems
    return Suite(name, str(path), data, smap_data, base, cases), []


class _Reader:
    """Turns the entries of one suite into cases, collecting positioned problems."""

    def __init__(self, smap: SourceMap, problems: list[Problem], suite: str, file: str) -> None:
        self.smap = smap
        self.problems = problems
        self.suite = suite
        self.file = file

    # -- helpers --------------------------------------------------------------------

    def problem(self, path: DocPath, message: str, *, at_key: bool = False) -> None:
        self.problems.append(self.smap.problem(path, message, at_key=at_key))

    def line(self, path: DocPath) -> int:
        return self.smap.position(path)[0]

    def mapping(self, path: DocPath, value: Any, keys: set[str], what: str) -> bool:
        """Whether ``value`` is a mapping; each key outside ``keys`` is a problem."""
        if not isinstance(value, dict):
            self.problem(path, f"{what} is a mapping (keys: {_known(keys)})")
            return False
        for key in sorted(set(value) - keys, key=str):
            self.problem((*path, key), f"unknown key {shown(key)} (known: {_known(keys)})",
                         at_key=True)
        return True

    def text(self, path: DocPath, value: Any, key: str, *, required: bool = False) -> str:
        if key not in value:
            if required:
                self.problem(path, f"{key} is required")
            return ""
        got = value[key]
        if not isinstance(got, str) or (required and not got):
            self.problem((*path, key), f"{key} must be a{' non-empty' if required else ''} "
                         f"string, not {shown(got)}")
            return ""
        return got

    def key_text(self, path: DocPath, value: Any, key: str, *, required: bool = False) -> str:
        """A ``type:id`` string."""
        got = self.text(path, value, key, required=required)
        if got and ":" not in got:
            self.problem((*path, key), f"{key} must be type:id, not {shown(got)}")
            return ""
        return got

    def number(self, path: DocPath, value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(path, f"must be a number, not {shown(value)}")
            return None
        return float(value)

    def strings(self, path: DocPath, value: Any, what: str) -> tuple[str, ...] | None:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(path, f"{what} must be a list of strings")
            return None
        return tuple(value)

    def name(self, value: dict[str, Any], path: DocPath, default: str) -> str:
        got = value.get("name")
        return got if isinstance(got, str) and got else default

    # -- one entry of a list ------------------------------------------------------

    def entry(self, kind: str, path: DocPath, value: Any) -> list[AnyCase]:
        if kind == "tests":
            return list(self.check(path, value))
        if kind == "usage":
            u = self.usage(path, value)
            return [u] if u is not None else []
        if kind == "limits":
            lim = self.limit(path, value)
            return [lim] if lim is not None else []
        if kind == "writes":
            w = self.writes(path, value)
            return [w] if w is not None else []
        op = self.operation(path, value)
        return [op] if op is not None else []

    def check(self, tpath: DocPath, test: Any) -> list[Case]:
        if not isinstance(test, dict):
            self.problem(tpath, "a test is a mapping with subject, resource, allow and/or deny")
            return []
        for key in sorted(set(test) - TEST_KEYS, key=str):
            self.problem((*tpath, key), f"unknown key {shown(key)} (known: "
                         f"{_known(TEST_KEYS)})", at_key=True)
        index = tpath[-1]
        tname = self.name(test, tpath, f"test {index + 1 if isinstance(index, int) else 1}")
        after = self.decisions(tpath, test, required=True)
        if after is None:
            return []
        line = self.line(tpath)
        return ([Case(self.suite, tname, self.file, line, after.subject, after.resource, a,
                      True, dict(after.context)) for a in after.allow]
                + [Case(self.suite, tname, self.file, line, after.subject, after.resource, a,
                        False, dict(after.context)) for a in after.deny])

    def decisions(self, tpath: DocPath, test: dict[str, Any], *,
                  required: bool) -> After | None:
        """subject, resource, context, allow and deny of a test or a ``then`` entry."""
        ok = True
        subject, resource = test.get("subject"), test.get("resource")
        for key, val in (("subject", subject), ("resource", resource)):
            if not isinstance(val, str) or ":" not in val:
                self.problem((*tpath, key), f"{key} must be type:id")
                ok = False
        context = test.get("context") or {}
        if not isinstance(context, dict):
            self.problem((*tpath, "context"), "context must be a mapping")
            ok = False
        if required and "allow" not in test and "deny" not in test:
            self.problem(tpath, "a test needs allow and/or deny action lists")
            ok = False
        allow, deny = test.get("allow", []), test.get("deny", [])
        if isinstance(allow, list) and isinstance(deny, list):
            both = sorted({a for a in allow if isinstance(a, str)}
                          & {a for a in deny if isinstance(a, str)})
            if both:
                self.problem((*tpath, "deny"), f"{shown(both[0])} is expected to be both "
                             "allowed and denied")
                ok = False
        for verdict, actions in (("allow", allow), ("deny", deny)):
            if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
                self.problem((*tpath, verdict), f"{verdict} must be a list of action names")
                ok = False
        if not ok:
            return None
        return After(self.line(tpath), str(subject), str(resource), tuple(allow), tuple(deny),
                     dict(context))

    def then(self, path: DocPath, value: Any) -> tuple[After, ...]:
        if not isinstance(value, list):
            self.problem(path, "then must be a list of checks ({subject, resource, allow, "
                         "deny}) and/or {present, absent} lists")
            return ()
        out: list[After] = []
        for i, item in enumerate(value):
            ipath = (*path, i)
            if not self.mapping(ipath, item, THEN_KEYS, "a then entry"):
                continue
            decided = After(self.line(ipath))
            if "subject" in item or "resource" in item:
                if "allow" not in item and "deny" not in item:
                    self.problem(ipath, "a check needs allow and/or deny action lists")
                    continue
                got = self.decisions(ipath, item, required=True)
                if got is None:
                    continue
                decided = got
            elif "allow" in item or "deny" in item or "context" in item:
                self.problem(ipath, "allow and deny need a subject and a resource")
                continue
            lists: dict[str, tuple[str, ...]] = {}
            for key in ("present", "absent"):
                if key in item:
                    got_list = self.strings((*ipath, key), item[key],
                                            f"{key} (relationships or type:id objects)")
                    if got_list is None:
                        continue
                    for j, text in enumerate(got_list):
                        if ":" not in text:
                            self.problem((*ipath, key, j), f"{shown(text)} is neither "
                                         "type:id#relation@type:id nor type:id")
                    lists[key] = got_list
            if not (decided.subject or lists):
                self.problem(ipath, "a then entry needs a check (subject, resource, allow, "
                             "deny) or present/absent lists")
                continue
            out.append(After(decided.line, decided.subject, decided.resource, decided.allow,
                             decided.deny, decided.context, lists.get("present", ()),
                             lists.get("absent", ())))
        return tuple(out)

    def events(self, path: DocPath, value: Any) -> tuple[Event, ...]:
        if not isinstance(value, list):
            self.problem(path, "events must be a list of {workspace, metric, amount}")
            return ()
        out = []
        for i, item in enumerate(value):
            ipath = (*path, i)
            if not self.mapping(ipath, item, EVENT_KEYS, "an event"):
                continue
            ws = self.text(ipath, item, "workspace", required=True)
            metric = self.text(ipath, item, "metric", required=True)
            amount = (self.number((*ipath, "amount"), item["amount"]) if "amount" in item
                      else 1.0)
            dimension = self.text(ipath, item, "dimension")
            event_id = self.text(ipath, item, "id") or f"suite-event-{i}"
            if ws and metric and amount is not None:
                out.append(Event(event_id, ws, metric, amount, dimension))
        return tuple(out)

    def usage(self, path: DocPath, value: Any) -> UsageCase | None:
        if not self.mapping(path, value, USAGE_KEYS, "a usage case"):
            return None
        before = len(self.problems)
        org = self.text(path, value, "organization", required=True)
        ws = self.text(path, value, "workspace")
        events = self.events((*path, "events"), value["events"]) if "events" in value else ()
        metrics: dict[str, float] = {}
        raw = value.get("metrics")
        if not isinstance(raw, dict) or not raw:
            self.problem((*path, "metrics") if "metrics" in value else path,
                         "metrics must map metric names to expected values")
        else:
            for name, expected in raw.items():
                got = self.number((*path, "metrics", name), expected)
                if got is not None:
                    metrics[str(name)] = got
        plan = None
        if "plan" in value:
            plan = self.text(path, value, "plan", required=True) or None
        fallback = value.get("fallback")
        if fallback is not None and not isinstance(fallback, bool):
            self.problem((*path, "fallback"), "fallback must be true or false")
        over = None
        if "over" in value:
            over = self.strings((*path, "over"), value["over"], "over (metric names)")
        if len(self.problems) > before:
            return None
        return UsageCase(self.suite, self.name(value, path, "usage"), self.file,
                         self.line(path), org, ws, events, metrics, plan, fallback, over)

    def limit(self, path: DocPath, value: Any) -> LimitCase | None:
        if not self.mapping(path, value, LIMIT_KEYS, "a limits case"):
            return None
        before = len(self.problems)
        org = self.text(path, value, "organization", required=True)
        events = self.events((*path, "events"), value["events"]) if "events" in value else ()
        change, values = "", {}
        raw = value.get("change")
        cpath = (*path, "change")
        if not isinstance(raw, dict) or len(raw) != 1:
            self.problem(cpath if "change" in value else path,
                         f"change must be one of {_known(CHANGES)} with its values")
        else:
            change, args = next(iter(raw.items()))
            spec = CHANGES.get(change)
            if spec is None:
                self.problem((*cpath, change), f"unknown change {shown(change)} (known: "
                             f"{_known(CHANGES)})", at_key=True)
            elif self.mapping((*cpath, change), args if args is not None else {}, set(spec),
                              f"change {change}"):
                values = self.values((*cpath, change), args or {}, spec)
        allowed = value.get("allowed")
        if not isinstance(allowed, bool):
            self.problem((*path, "allowed") if "allowed" in value else path,
                         "allowed (true or false) is required")
        reason = self.text(path, value, "reason")
        if len(self.problems) > before:
            return None
        return LimitCase(self.suite, self.name(value, path, "limit"), self.file,
                         self.line(path), org, events, str(change), values, bool(allowed),
                         reason)

    def values(self, path: DocPath, args: dict[str, Any], spec: Mapping[str, str]
               ) -> dict[str, Any]:
        """Arguments by kind: str, strs, number, int, ref (type:id) or map."""
        out: dict[str, Any] = {}
        for key, kind in spec.items():
            if key not in args:
                continue
            got, apath = args[key], (*path, key)
            if kind in ("str", "ref"):
                if not isinstance(got, str):
                    self.problem(apath, f"{key} must be a string, not {shown(got)}")
                    continue
                if kind == "ref" and got and ":" not in got:
                    self.problem(apath, f"{key} must be type:id, not {shown(got)}")
                    continue
            elif kind == "strs":
                if self.strings(apath, got, key) is None:
                    continue
                got = tuple(got)
            elif kind == "number":
                if self.number(apath, got) is None:
                    continue
                got = float(got)
            elif kind == "int":
                if isinstance(got, bool) or not isinstance(got, int):
                    self.problem(apath, f"{key} must be a whole number, not {shown(got)}")
                    continue
            elif not isinstance(got, dict):
                self.problem(apath, f"{key} must be a mapping")
                continue
            out[key] = got
        return out

    def writes(self, path: DocPath, value: Any) -> WriteCase | None:
        if not self.mapping(path, value, WRITE_KEYS, "a writes case"):
            return None
        before = len(self.problems)
        lines: list[WriteLine] = []
        raw = value.get("write")
        if not isinstance(raw, list) or not raw:
            self.problem((*path, "write") if "write" in value else path,
                         "write must be a non-empty list of relationships (touched), "
                         "{delete: relationship}, {put: type:id, attributes: {...}} or "
                         "{delete_object: type:id}")
            raw = []
        for i, item in enumerate(raw):
            got = self.write_line((*path, "write", i), item)
            if got is not None:
                lines.append(got)
        refused = self.text(path, value, "refused")
        allowed = value.get("allowed")
        if "allowed" in value and allowed is not True:
            self.problem((*path, "allowed"), "allowed is true; a refusal is written refused: "
                         "<constraint or rule>")
        if bool(refused) == bool(allowed):
            self.problem(path, "a writes case says refused: <constraint or rule> or "
                         "allowed: true")
        message = self.text(path, value, "message")
        then = self.then((*path, "then"), value["then"]) if "then" in value else ()
        if len(self.problems) > before:
            return None
        return WriteCase(self.suite, self.name(value, path, "write"), self.file,
                         self.line(path), tuple(lines), refused, message, then)

    def write_line(self, path: DocPath, item: Any) -> WriteLine | None:
        line = self.line(path)
        if isinstance(item, str):
            return WriteLine(line, "touch", item) if self.relationship(path, item) else None
        keys = {"touch", "delete", "put", "delete_object", "attributes"}
        if not self.mapping(path, item, keys, "a write"):
            return None
        ops = [k for k in ("touch", "delete", "put", "delete_object") if k in item]
        if len(ops) != 1:
            self.problem(path, "a write names one of touch, delete, put, delete_object")
            return None
        op = ops[0]
        target = item[op]
        if not isinstance(target, str):
            self.problem((*path, op), f"{op} takes a string, not {shown(target)}")
            return None
        if "attributes" in item and op != "put":
            self.problem((*path, "attributes"), "attributes belong to put")
            return None
        if op in ("touch", "delete"):
            return WriteLine(line, op, target) if self.relationship((*path, op), target) \
                else None
        if ":" not in target or "#" in target:
            self.problem((*path, op), f"{op} takes an object, type:id, not {shown(target)}")
            return None
        attrs = item.get("attributes") or {}
        if not isinstance(attrs, dict):
            self.problem((*path, "attributes"), "attributes must be a mapping")
            return None
        return WriteLine(line, op, target, dict(attrs))

    def relationship(self, path: DocPath, text: str) -> bool:
        left, at, subject = text.partition("@")
        if not at or "#" not in left or ":" not in subject:
            self.problem(path, f"{shown(text)} is not of the form type:id#relation@type:id")
            return False
        return True

    def operation(self, path: DocPath, value: Any) -> OperationCase | None:
        if not self.mapping(path, value, OPERATION_KEYS, "an operations case"):
            return None
        before = len(self.problems)
        steps: list[tuple[DocPath, Step]] = []
        then: tuple[After, ...] = ()
        if "steps" in value:
            inline = sorted(set(value) & (STEP_KEYS - {"then"}))
            if inline:
                self.problem((*path, inline[0]), "give the operation inline or as steps, "
                             "not both", at_key=True)
            raw = value["steps"]
            if not isinstance(raw, list) or not raw:
                self.problem((*path, "steps"), "steps must be a non-empty list of operations")
                raw = []
            for i, item in enumerate(raw):
                spath = (*path, "steps", i)
                if self.mapping(spath, item, STEP_KEYS, "a step"):
                    step = self.step(spath, item)
                    if step is not None:
                        steps.append((spath, step))
            if "then" in value:
                then = self.then((*path, "then"), value["then"])
        else:
            step = self.step(path, value)
            if step is not None:
                steps.append((path, step))
        saved: set[str] = set()
        for spath, step in steps:
            for name in sorted(self.references(step.args) - saved):
                self.problem((*spath, "args"), f"${name} names no earlier step (give that "
                             f"step save: {name})")
            if step.save:
                saved.add(step.save)
        if len(self.problems) > before or not steps:
            return None
        return OperationCase(self.suite, self.name(value, path, "operation"), self.file,
                             self.line(path), tuple(s for _, s in steps), then)

    def references(self, args: Mapping[str, Any]) -> set[str]:
        names: set[str] = set()
        for val in args.values():
            if isinstance(val, str):
                names.update(m.group(1) for m in REFERENCE_RE.finditer(val))
        return names

    def step(self, path: DocPath, value: dict[str, Any]) -> Step | None:
        before = len(self.problems)
        op = self.text(path, value, "op", required=True)
        spec = OPERATIONS.get(op)
        if op and spec is None:
            self.problem((*path, "op"), f"unknown operation {shown(op)} (known: "
                         f"{_known(OPERATIONS)})")
        actor = self.key_text(path, value, "actor")
        if spec is not None and spec.actor and "actor" not in value:
            self.problem(path, f"{op} needs an actor (type:id)")
        if spec is not None and not spec.actor and "actor" in value:
            self.problem((*path, "actor"), f"{op} takes no actor", at_key=True)
        args: dict[str, Any] = {}
        raw = value.get("args", {})
        if spec is not None and self.mapping((*path, "args"), raw if raw is not None else {},
                                             set(spec.args), f"args of {op}"):
            args = self.values((*path, "args"), raw or {}, spec.args)
        code, message = "", ""
        expect = value.get("expect", "ok")
        epath = (*path, "expect")
        if isinstance(expect, dict):
            if self.mapping(epath, expect, {"code", "message"}, "expect"):
                code = self.text(epath, expect, "code", required=True)
                if code and code not in CODES:
                    self.problem((*epath, "code"), f"unknown code {shown(code)} (known: "
                                 f"{', '.join(CODES)})")
                message = self.text(epath, expect, "message")
        elif expect != "ok":
            self.problem(epath, "expect is ok or {code: <status>, message: <substring>}")
        result = value.get("result", {})
        if not isinstance(result, dict):
            self.problem((*path, "result"), "result must map answer fields to values")
            result = {}
        elif result and code:
            self.problem((*path, "result"), "a refused operation has no result")
        save = self.text(path, value, "save")
        if save and not SAVE_RE.fullmatch(save):
            self.problem((*path, "save"), "save names the step: lowercase letters, digits, _")
        advance = 0.0
        if "advance_days" in value:
            got = self.number((*path, "advance_days"), value["advance_days"])
            if got is not None and got < 0:
                self.problem((*path, "advance_days"), "the clock only moves forward")
            advance = got or 0.0
        then = self.then((*path, "then"), value["then"]) if "then" in value else ()
        if len(self.problems) > before:
            return None
        return Step(self.line(path), op, actor, args, code, message, dict(result), save,
                    advance, then)
