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

      client_in_one_workspace:
        per_subject: {relation: workspace.client, limit: 1}
      members_are_org_members:
        requires: {relations: [workspace.admin, workspace.member],
                   needs: [organization.admin, organization.member]}
      an_owner_remains:
        minimum: {relation: organization.owner, count: 1}
      a_workspace_remains:
        minimum: {children: workspace, count: 1}

``exclusive``: no subject holds a relation from both lists within one tenant
(organization). ``unique``: at most one object of the type per tenant holds
the relation. ``max``: at most ``limit`` subjects per object hold it.
``per_subject``: a subject holds the relation on at most ``limit`` objects per
tenant. ``requires``: a subject holding any of ``relations`` in a tenant holds
one of ``needs`` (relations of the tenant root) on its root. ``minimum``: an
object with at least ``count`` subjects on the relation keeps that many (or
a tenant with at least ``count`` objects of the ``children`` type keeps that
many). The scope is always the tenant; ``scope:`` may name the tenant root
type to say so explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gatehouse.policy.rules import (
    Constraint,
    Exclusive,
    MaxSubjects,
    MinChildren,
    MinSubjects,
    PerSubject,
    Requires,
    Unique,
)
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
KINDS = ("exclusive", "unique", "max", "per_subject", "requires", "minimum")
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
        elif kind in ("max", "per_subject"):
            if not isinstance(value, dict) or set(value) - {"relation", "limit"}:
                report(kpath, f"{kind} takes {{relation: type.relation, limit: N}}", False)
                continue
            found = _relation_ref(types, value.get("relation"), (*kpath, "relation"), report)
            limit = _count(value, "limit", kpath, report)
            if found is None or limit is None:
                continue
            if kind == "max":
                out.append(MaxSubjects(name, found[0], found[1], limit))
            elif _in_tenant(types, found[0], (*kpath, "relation"), report):
                out.append(PerSubject(name, found[0], found[1], limit))
        elif kind == "requires":
            con = _requires(types, name, value, kpath, report)
            if con is not None:
                out.append(con)
        else:
            con2 = _minimum(types, name, value, kpath, report)
            if con2 is not None:
                out.append(con2)
    return tuple(out)


def _count(value: dict[str, Any], key: str, kpath: DocPath, report: ReportProblem) -> int | None:
    number = value.get(key)
    if (not isinstance(number, int) or isinstance(number, bool)
            or not 1 <= number <= MAX_EXACT_INT):
        report((*kpath, key), f"{key} must be a whole number from 1 to "
               f"{MAX_EXACT_INT}, not {shown(number)}", False)
        return None
    return number


def _root_of(types: Mapping[str, TypeDef], type_: str) -> str | None:
    """The tenant root type above ``type_`` (itself if it is one), or None."""
    lineage = types[type_].lineage
    root = lineage[-1]
    if len(lineage) > 1 or any(t.parent == root for t in types.values()):
        return root
    return None


def _in_tenant(types: Mapping[str, TypeDef], type_: str, path: DocPath,
               report: ReportProblem) -> bool:
    if _root_of(types, type_) is None:
        report(path, f"{shown(type_)} is in no tenant (it is no tenant root and has no "
               "parent); the constraint counts within a tenant", False)
        return False
    return True


def _relation_list(types: Mapping[str, TypeDef], value: Any, path: DocPath,
                   report: ReportProblem) -> list[tuple[str, str]] | None:
    if not isinstance(value, list) or not value:
        report(path, "give a non-empty list of type.relation", False)
        return None
    found: list[tuple[str, str]] = []
    ok = True
    for i, item in enumerate(value):
        ref = _relation_ref(types, item, (*path, i), report)
        if ref is None:
            ok = False
        else:
            found.append(ref)
    return found if ok else None


def _requires(types: Mapping[str, TypeDef], name: str, value: Any, kpath: DocPath,
              report: ReportProblem) -> Requires | None:
    if not isinstance(value, dict) or set(value) != {"relations", "needs"}:
        report(kpath, "requires takes {relations: [type.relation, ...], needs: "
               "[root_type.relation, ...]}", False)
        return None
    relations = _relation_list(types, value["relations"], (*kpath, "relations"), report)
    needs = _relation_list(types, value["needs"], (*kpath, "needs"), report)
    if relations is None or needs is None:
        return None
    roots = set()
    for i, (type_, _) in enumerate(relations):
        if not _in_tenant(types, type_, (*kpath, "relations", i), report):
            return None
        roots.add(_root_of(types, type_))
    for i, (type_, relation) in enumerate(needs):
        if type_ not in roots or len(roots) != 1:
            report((*kpath, "needs", i), f"needs are relations of the tenant root type "
                   f"{' or '.join(sorted(str(r) for r in roots))} (the ancestor every "
                   f"relation is held under), not {shown(f'{type_}.{relation}')}", False)
            return None
    rel_set = frozenset(f"{t}.{r}" for t, r in relations)
    need_set = frozenset(f"{t}.{r}" for t, r in needs)
    if rel_set & need_set:
        report(kpath, f"{sorted(rel_set & need_set)[0]} is both a relation and a need", False)
        return None
    return Requires(name, rel_set, need_set)


def _minimum(types: Mapping[str, TypeDef], name: str, value: Any, kpath: DocPath,
             report: ReportProblem) -> MinSubjects | MinChildren | None:
    if (not isinstance(value, dict) or "count" not in value
            or len({"relation", "children"} & set(value)) != 1
            or set(value) - {"relation", "children", "count"}):
        report(kpath, "minimum takes {relation: type.relation, count: N} or "
               "{children: type, count: N}", False)
        return None
    count = _count(value, "count", kpath, report)
    if "relation" in value:
        found = _relation_ref(types, value["relation"], (*kpath, "relation"), report)
        if found is None or count is None:
            return None
        return MinSubjects(name, found[0], found[1], count)
    child = value["children"]
    cpath = (*kpath, "children")
    if not isinstance(child, str) or child not in types:
        report(cpath, f"unknown type {shown(child)} (declared: {listed(types)})", False)
        return None
    if types[child].parent is None:
        report(cpath, f"{shown(child)} has no parent type; children counts objects placed "
               "under a tenant by their parent", False)
        return None
    if count is None:
        return None
    return MinChildren(name, child, count)
