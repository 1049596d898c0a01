"""Policy test suites (``*_test.yaml``): parsed here, run by ``gatehouse.policytest``.

::

    name: coupler role table
    data:                     # a small graph, same form as a data file
      objects: {...}
      relationships: [...]
    # or: data_file: ../../../examples/coupler.data.yaml  (relative to this file)
    tests:
      - name: a user edits but does not delete another user's flow
        subject: user:uma
        resource: data_flow:f_bob
        context: {}           # optional request context
        allow: [view, run, edit]
        deny: [delete]

Each (test, action) pair is one case, reported with the line it was written on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatehouse.errors import Problem
from gatehouse.policy.files import POLICY_STRICTNESS, read_capped
from gatehouse.policy.sections import shown
from gatehouse.sourcemap import DocPath, SourceMap, load

SUITE_KEYS = {"name", "description", "data", "data_file", "tests"}
TEST_KEYS = {"name", "subject", "resource", "context", "allow", "deny"}


@dataclass(frozen=True, slots=True)
class Case:
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


@dataclass(slots=True)
class Suite:
    name: str
    file: str
    data: Any
    smap: SourceMap
    data_base: DocPath
    cases: list[Case]


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
    for key in sorted(set(value) - SUITE_KEYS):
        problems.append(smap.problem((key,), f"unknown key {shown(key)} (known: "
                                     f"{', '.join(sorted(SUITE_KEYS))})", at_key=True))
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
    tests = value.get("tests")
    cases: list[Case] = []
    if not isinstance(tests, list) or not tests:
        problems.append(smap.problem(("tests",) if "tests" in value else (),
                                     "a suite needs a non-empty list of tests"))
        tests = []
    for i, test in enumerate(tests):
        tpath: DocPath = ("tests", i)
        if not isinstance(test, dict):
            problems.append(smap.problem(tpath, "a test is a mapping with subject, resource, "
                                         "allow and/or deny"))
            continue
        for key in sorted(set(test) - TEST_KEYS):
            problems.append(smap.problem((*tpath, key), f"unknown key {shown(key)} (known: "
                                         f"{', '.join(sorted(TEST_KEYS))})", at_key=True))
        tname = str(test.get("name") or f"test {i + 1}")
        subject, resource = test.get("subject"), test.get("resource")
        ok = True
        for key, val in (("subject", subject), ("resource", resource)):
            if not isinstance(val, str) or ":" not in val:
                problems.append(smap.problem((*tpath, key), f"{key} must be type:id"))
                ok = False
        context = test.get("context") or {}
        if not isinstance(context, dict):
            problems.append(smap.problem((*tpath, "context"), "context must be a mapping"))
            ok = False
        if "allow" not in test and "deny" not in test:
            problems.append(smap.problem(tpath, "a test needs allow and/or deny action lists"))
            ok = False
        line = smap.position(tpath)[0]
        allow, deny = test.get("allow", []), test.get("deny", [])
        if isinstance(allow, list) and isinstance(deny, list):
            both = sorted({a for a in allow if isinstance(a, str)}
                          & {a for a in deny if isinstance(a, str)})
            if both:
                problems.append(smap.problem((*tpath, "deny"), f"{shown(both[0])} is expected "
                                             "to be both allowed and denied"))
                ok = False
        for verdict in ("allow", "deny"):
            actions = test.get(verdict, [])
            if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
                problems.append(smap.problem((*tpath, verdict), f"{verdict} must be a list of "
                                             "action names"))
                ok = False
                continue
            if not ok:
                continue
            for action in actions:
                cases.append(Case(name, tname, str(path), line, str(subject), str(resource),
                                  action, verdict == "allow", dict(context)))
    if problems:
        return None, problems
    return Suite(name, str(path), data, smap_data, base, cases), []
