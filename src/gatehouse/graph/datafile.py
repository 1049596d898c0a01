"""Bootstrap data files: objects and relationships to load into a store.

::

    objects:
      user:alice: {email: alice@acme.com}
      connection:c1: {shared: true, source_type: asana}
    relationships:
      - workspace:ws1#parent@organization:acme
      - organization:acme#owner@user:alice

Every line is checked against the policy before anything is loaded; any
problem rejects the whole file, with the line of each problem.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from gatehouse.errors import DataFileError, InvalidArgument, Problem, shown
from gatehouse.graph.changes import Operation, PutObject, TouchRelationship
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.graph.schema import object_problems, relationship_problem
from gatehouse.limits import LIMITS
from gatehouse.policy.model import PARENT, CompiledPolicy
from gatehouse.sourcemap import SourceMap, load

KEYS = {"objects", "relationships"}


def parse_data(
    value: Any, smap: SourceMap, policy: CompiledPolicy, base: tuple[str | int, ...] = ()
) -> tuple[list[Operation], list[Problem]]:
    """Turn a parsed data mapping into write operations, or problems."""
    problems: list[Problem] = []
    ops: list[Operation] = []
    if value is None:
        return ops, problems
    if not isinstance(value, dict):
        return ops, [smap.problem(base, "data must be a mapping with objects and relationships")]
    for key in sorted(set(value) - KEYS):
        problems.append(smap.problem((*base, key), f"unknown key {shown(key)} (known: objects, "
                                     "relationships)", at_key=True))
    objects = value.get("objects") or {}
    if not isinstance(objects, dict):
        problems.append(smap.problem((*base, "objects"), "objects must map type:id to attributes"))
        objects = {}
    for text, attrs in objects.items():
        path = (*base, "objects", text)
        try:
            ref = ObjectRef.parse(text, "object")
        except InvalidArgument as exc:
            problems.append(smap.problem(path, exc.reason, at_key=True))
            continue
        msgs = object_problems(policy, ref, attrs)
        problems.extend(smap.problem(path, m, at_key=True) for m in msgs)
        if not msgs:
            ops.append(PutObject(ref, dict(attrs or {})))
    rels = value.get("relationships") or []
    if not isinstance(rels, list):
        problems.append(smap.problem((*base, "relationships"),
                                     "relationships must be a list of type:id#relation@type:id"))
        rels = []
    parents: dict[ObjectRef, tuple[ObjectRef, int]] = {}
    seen: set[Relationship] = set()
    for i, text in enumerate(rels):
        path = (*base, "relationships", i)
        if not isinstance(text, str):
            problems.append(smap.problem(path, "write a relationship as type:id#relation@type:id"))
            continue
        try:
            rel = Relationship.parse(text)
        except InvalidArgument as exc:
            problems.append(smap.problem(path, exc.reason))
            continue
        msg = relationship_problem(policy, rel)
        if msg:
            problems.append(smap.problem(path, msg))
            continue
        if rel in seen:
            continue
        seen.add(rel)
        if rel.relation == PARENT:
            if rel.resource in parents:
                other, line = parents[rel.resource]
                problems.append(smap.problem(path, f"{rel.resource} already has parent {other} "
                                             f"(line {line}); an object has one parent"))
                continue
            parents[rel.resource] = (rel.subject, smap.position(path)[0])
        ops.append(TouchRelationship(rel))
    return ops, problems


def load_data_text(text: str, file: str, policy: CompiledPolicy) -> list[Operation]:
    value, smap, problems = load(text, file)
    if not problems:
        ops, problems = parse_data(value, smap, policy)
    if problems:
        raise DataFileError(problems)
    return ops


def read_data_text(path: Path) -> str:
    """The text of a data file, refused unread when it is not a regular file (a device
    or FIFO would block or never end) or past ``LIMITS.data_file_bytes``."""
    cap = LIMITS.data_file_bytes

    def cannot(why: str) -> DataFileError:
        return DataFileError([Problem(str(path), 0, 0, "", f"cannot read: {why}")])

    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise cannot("not a regular file")
        with path.open("rb") as f:
            raw = f.read(cap + 1)  # at most one byte past the cap, even if it grew
    except OSError as exc:
        raise cannot(str(exc)) from None
    if len(raw) > cap:
        raise cannot(f"larger than {cap:,} bytes (the limit of one data file)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise cannot(f"not UTF-8 text (byte {exc.start})") from None


def load_data_file(path: str | Path, policy: CompiledPolicy) -> list[Operation]:
    """Read and check a data file. Raises DataFileError; never half-loads."""
    p = Path(path)
    return load_data_text(read_data_text(p), str(p), policy)
