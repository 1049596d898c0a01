"""Compile the ``constraints:`` section: invariants every write must keep.

::

    constraints:
      staff_or_client:
        description: staff and clients never mix on one account
        exclusive:
          - [organization.owner, organization.admin, organization.member]
          - [workspace.client]
      one_ai_workspace:
        max: {relation: organization.ai_workspace, limit: 1}
      one_default_workspace:
        unique: workspace.default

``exclusive``: no subject holds a relation from both lists within one tenant
(organization). ``unique``: at most one object of the type per tenant holds
the relation. ``max``: at most ``limit`` subjects per object hold it. The
scope is always the tenant; ``scope:`` may name the tenant root type to say
so explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gatehouse.policy.rules import Constraint, Exclusive, MaxSubjects, Unique
from gatehouse.policy.sections import (
    LISTED_NAMES,
    ReportProblem,
    is_name,
    listed,
    named_definitions,
    shown,
)
from gatehouse.sourcemap import MAX_EXACT_INT, DocPath

if TYPE_CHECKING:
    from gatehouse.policy.model import TypeDef

NAME_RE = re.compile(r"[a-z][a-z0-9_\-]{0,63}")
KINDS = ("exclusive", "unique", "max")
KEYS = {"description", "scope", *KINDS}




def _relation_ref(types: Mapping[str, TypeDef], value: Any, path: DocPath,
                  report: ReportProblem) -> tuple[str, str] | None:
    if not isinstance(value, str) or "." not in value:
        report(path, f"write a relation as type.relation, not {shown(value)}", False)
        return None
    type_, _, relation = value.partition(".")
    tdef = types.get(type_)
    if tdef is None:
        report(path, f"unknown type {shown(type_)} (declared: {listed(types)})", False)
        return None
    if relation not in tdef.relations:
        known = listed(tdef.relations) if len(tdef.relations) > LISTED_NAMES else ", ".join(
            f"{type_}.{r}" for r in sorted(tdef.relations)) or "none"
        report(path, f"{shown(type_)} has no relation {shown(relation)} (known: {known})", False)
        return None
    return type_, relation


def compile_constraints(types: Mapping[str, TypeDef], raw: Any, roots: set[str],
                        report: ReportProblem) -> tuple[Constraint, ...]:
    """Compile the merged ``constraints`` mapping; problems go to ``report``."""
    out: list[Constraint] = []
    if raw is None:
        return ()
    entries = named_definitions(
        raw, "constraints", "constraint", NAME_RE,
        lambda name: f"constraint {shown(name)} must be a mapping with one of: {', '.join(KINDS)}",
        report)
    for name, base, body in entries:
        for key in sorted(set(body) - KEYS):
            report((*base, key), f"unknown key {shown(key)} (known: {', '.join(sorted(KEYS))})",
                   True)
        kinds = [k for k in KINDS if k in body]
        if len(kinds) != 1:
            report(base, f"constraint {shown(name)} needs exactly one of: {', '.join(KINDS)}", True)
            continue
        scope = body.get("scope")
        if scope is not None and not is_name(scope, roots):
            report((*base, "scope"), f"constraints are scoped to the tenant; scope must be "
                   f"{' or '.join(sorted(roots)) or 'a tenant root type'}, not {shown(scope)}",
                   False)
            continue
        kind = kinds[0]
        value = body[kind]
        kpath: DocPath = (*base, kind)
        if kind == "exclusive":
            if (not isinstance(value, list) or len(value) != 2
                    or not all(isinstance(side, list) and side for side in value)):
                report(kpath, "exclusive takes two non-empty lists of type.relation", False)
                continue
            sides: list[frozenset[str]] = []
            ok = True
            for i, side in enumerate(value):
                refs = set()
                for j, item in enumerate(side):
                    found = _relation_ref(types, item, (*kpath, i, j), report)
                    if found is None:
                        ok = False
                    else:
                        refs.add(f"{found[0]}.{found[1]}")
                sides.append(frozenset(refs))
            if ok and sides[0] & sides[1]:
                report(kpath, f"{sorted(sides[0] & sides[1])[0]} is on both sides", False)
                ok = False
            if ok:
                out.append(Exclusive(name, sides[0], sides[1]))
        elif kind == "unique":
            found = _relation_ref(types, value, kpath, report)
            if found is not None:
                out.append(Unique(name, found[0], found[1]))
        else:
            if not isinstance(value, dict) or set(value) - {"relation", "limit"}:
                report(kpath, "max takes {relation: type.relation, limit: N}", False)
                continue
            found = _relation_ref(types, value.get("relation"), (*kpath, "relation"), report)
            limit = value.get("limit")
            if (not isinstance(limit, int) or isinstance(limit, bool)
                    or not 1 <= limit <= MAX_EXACT_INT):
                report((*kpath, "limit"), f"limit must be a whole number from 1 to "
                       f"{MAX_EXACT_INT}, not {shown(limit)}", False)
                continue
            if found is not None:
                out.append(MaxSubjects(name, found[0], found[1], limit))
    return tuple(out)
