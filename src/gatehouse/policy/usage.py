"""Compile the ``plans:`` and ``metrics:`` sections (billing as data).

::

    metrics:
      workspaces:   {count: workspace}
      users:
        members: email                # distinct subject emails ...
        relations: [workspace.admin, workspace.user, workspace.guest, organization.owner]
      accounts:
        accounts: connection          # per source type, see below
        source_types:
          tenant: [google_ads, facebook_ads]      # each selected tenant counts
          connection: [asana, hubspot]            # each distinct credential counts
          url: [airtable, csv]                    # each connection counts
        default: connection
      destination_types: {distinct: destination_type, of: data_flow}
      llm_credits:  {recorded: sum, period: month, unit: credits}
    plans:
      free:
        fallback: true                # the most restrictive; used when a plan is unknown
        limits: {workspaces: 1, users: 3}
      pro:
        limits: {workspaces: null}    # null or absent: unlimited
        features: [multiple_workspaces]

The organization (tenant root type) carries its plan in the ``plan``
attribute; workspaces are the tenant root's child type.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from gatehouse.policy.model import (
    ACCOUNT_KINDS,
    AGGREGATES,
    METRIC_KINDS,
    Metric,
    Plan,
    TypeDef,
    UsageModel,
)
from gatehouse.policy.sections import (
    LISTED_NAMES,
    ReportProblem,
    is_name,
    is_number,
    listed,
    named_definitions,
    shown,
    unlisted,
)
from gatehouse.sourcemap import MAX_EXACT_INT, DocPath

NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
PLAN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
COMMON_KEYS = {"description", "unit"}
KIND_KEYS = {
    "count": {"count"},
    "members": {"members", "relations"},
    "accounts": {"accounts", "source_types", "default", "source_attribute",
                 "credential_attribute", "tenants_attribute"},
    "distinct": {"distinct", "of"},
    "recorded": {"recorded", "period"},
}
PLAN_KEYS = {"description", "limits", "features", "fallback"}
PERIODS = ("month",)


def _tenant_types(types: Mapping[str, TypeDef], roots: set[str]) -> tuple[str, str] | None:
    """(tenant root, workspace type): the root's one child type, or — when the root
    also has record types below it (invitations, domain rules) — its one child type
    that declares roles."""
    if len(roots) != 1:
        return None
    root = next(iter(roots))
    children = sorted(n for n, t in types.items() if t.parent == root)
    if len(children) > 1:
        children = [n for n in children if types[n].roles]
    if len(children) != 1:
        return None
    return root, children[0]


def compile_usage(types: Mapping[str, TypeDef], roots: set[str], raw_metrics: Any,
                  raw_plans: Any, report: ReportProblem) -> UsageModel:
    if raw_metrics is None and raw_plans is None:
        return UsageModel()
    tenant = _tenant_types(types, roots)
    if tenant is None:
        report(("metrics" if raw_metrics is not None else "plans",),
               "usage needs one tenant root type (e.g. organization) with exactly one child "
               "type that has roles (e.g. workspace)", True)
        return UsageModel()
    org_type, ws_type = tenant
    metrics = _metrics(types, org_type, ws_type, raw_metrics, report)
    plans, fallback = _plans(metrics, raw_plans, report)
    return UsageModel(MappingProxyType(metrics), MappingProxyType(plans), fallback,
                      "plan", org_type, ws_type)


def _metrics(types: Mapping[str, TypeDef], org_type: str, ws_type: str, raw: Any,
             report: ReportProblem) -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    if raw is None:
        return out
    entries = named_definitions(
        raw, "metrics", "metric", NAME_RE,
        lambda name: f"metric {shown(name)} must be a mapping with one of: "
                     f"{', '.join(METRIC_KINDS)}",
        report)
    for name, base, body in entries:
        kinds = [k for k in METRIC_KINDS if k in body]
        if len(kinds) != 1:
            report(base, f"metric {shown(name)} needs exactly one of: {', '.join(METRIC_KINDS)}",
                   True)
            continue
        kind = kinds[0]
        allowed = COMMON_KEYS | KIND_KEYS[kind]
        bad = sorted(set(body) - allowed)
        for key in bad:
            report((*base, key), f"unknown key {shown(key)} for a {kind} metric (known: "
                   f"{', '.join(sorted(allowed))})", True)
        if bad:
            continue
        desc = str(body.get("description", ""))
        unit = str(body.get("unit", ""))
        value = body[kind]
        kpath: DocPath = (*base, kind)
        if kind == "count":
            if not is_name(value, types):
                report(kpath, f"unknown type {shown(value)} (declared: {listed(types)})",
                       False)
                continue
            out[name] = Metric(name, kind, desc, object_type=value, unit=unit)
        elif kind == "members":
            rels = body.get("relations")
            if not isinstance(rels, list) or not rels:
                report((*base, "relations") if "relations" in body else base,
                       "members needs relations: [workspace.role, organization.role, ...]",
                       "relations" not in body)
                continue
            refs: list[tuple[str, str]] = []
            ok = True
            for i, ref in enumerate(rels):
                t, _, r = (ref if isinstance(ref, str) else "").partition(".")
                if t not in (org_type, ws_type) or r not in types[t].relations:
                    count = len(types[ws_type].relations) + len(types[org_type].relations)
                    known = unlisted(count) if count > LISTED_NAMES else ", ".join(
                        f"{x}.{y}" for x in (ws_type, org_type)
                        for y in sorted(types[x].relations) if y != "parent")
                    report((*base, "relations", i), f"unknown relation {shown(ref)} (known: "
                           f"{known})", False)
                    ok = False
                else:
                    refs.append((t, r))
            attr_ok = isinstance(value, str) and any(
                value in types[s].attributes for s in types if types[s].subject)
            if not attr_ok:
                report(kpath, f"{shown(value)} is not an attribute of any subject type", False)
                ok = False
            if ok:
                out[name] = Metric(name, kind, desc, attribute=value, relations=tuple(refs),
                                   unit=unit)
        elif kind == "accounts":
            tdef = types.get(value) if isinstance(value, str) else None
            if tdef is None:
                report(kpath, f"unknown type {shown(value)} (declared: {listed(types)})",
                       False)
                continue
            src = body.get("source_types") or {}
            mapping: dict[str, str] = {}
            ok = True
            if not isinstance(src, dict):
                report((*base, "source_types"), "source_types maps tenant / connection / url "
                       "to lists of source types", False)
                continue
            for kname, sources in src.items():
                if kname not in ACCOUNT_KINDS:
                    report((*base, "source_types", kname), f"unknown kind {shown(kname)} (known: "
                           f"{', '.join(ACCOUNT_KINDS)})", True)
                    ok = False
                    continue
                if not isinstance(sources, list) or not all(isinstance(x, str) for x in sources):
                    report((*base, "source_types", kname), "give a list of source types", False)
                    ok = False
                    continue
                for st in sources:
                    if st in mapping:
                        report((*base, "source_types", kname), f"source type {shown(st)} is listed "
                               f"under both {mapping[st]} and {kname}", False)
                        ok = False
                    mapping[st] = kname
            default = body.get("default", "connection")
            if not is_name(default, ACCOUNT_KINDS):
                report((*base, "default"), f"default must be one of {', '.join(ACCOUNT_KINDS)}",
                       False)
                ok = False
            attrs = {}
            for key, fallback in (("source_attribute", "source_type"),
                                  ("credential_attribute", "credential_id"),
                                  ("tenants_attribute", "tenants")):
                attr = body.get(key, fallback)
                if not is_name(attr, tdef.attributes):
                    report((*base, key) if key in body else kpath,
                           f"type {shown(value)} has no attribute {shown(attr)} (needed for "
                           f"{key})", False)
                    ok = False
                attrs[key] = attr
            if ok:
                out[name] = Metric(name, kind, desc, object_type=value,
                                   source_attribute=attrs["source_attribute"],
                                   credential_attribute=attrs["credential_attribute"],
                                   tenants_attribute=attrs["tenants_attribute"],
                                   source_kinds=MappingProxyType(mapping), default_kind=default,
                                   unit=unit)
        elif kind == "distinct":
            of = body.get("of")
            tdef = types.get(of) if isinstance(of, str) else None
            if tdef is None:
                report((*base, "of") if "of" in body else base,
                       "distinct needs of: <type> whose attribute is counted", "of" not in body)
                continue
            if not is_name(value, tdef.attributes):
                report(kpath, f"type {shown(of)} has no attribute {shown(value)}", False)
                continue
            out[name] = Metric(name, kind, desc, object_type=str(of), attribute=value, unit=unit)
        else:
            if not is_name(value, AGGREGATES):
                report(kpath, f"recorded takes an aggregation: {', '.join(AGGREGATES)}", False)
                continue
            period = body.get("period") or ""
            if period != "" and not is_name(period, PERIODS):
                report((*base, "period"), f"period must be {' or '.join(PERIODS)}", False)
                continue
            out[name] = Metric(name, kind, desc, aggregate=value, period=period, unit=unit)
    return out


def _plans(metrics: Mapping[str, Metric], raw: Any, report: ReportProblem
           ) -> tuple[dict[str, Plan], str | None]:
    plans: dict[str, Plan] = {}
    fallback: str | None = None
    if raw is None:
        return plans, None
    entries = named_definitions(
        raw or None, "plans", "plan", PLAN_NAME_RE,  # an empty `plans:` is reported too
        lambda name: "a plan is a mapping with limits and features", report,
        section_error="plans must map plan names to their limits and features",
        empty_body_ok=True)
    for name, base, body in entries:
        for key in sorted(set(body) - PLAN_KEYS):
            report((*base, key),
                   f"unknown key {shown(key)} (known: {', '.join(sorted(PLAN_KEYS))})", True)
        limits: dict[str, float] = {}
        raw_limits = body.get("limits") or {}
        if not isinstance(raw_limits, dict):
            report((*base, "limits"), "limits map metric names to numbers", False)
            raw_limits = {}
        for metric, limit in raw_limits.items():
            if metric not in metrics:
                report((*base, "limits", metric), f"unknown metric {shown(metric)} (declared: "
                       f"{listed(metrics)})", True)
                continue
            if limit is None:
                continue
            if not is_number(limit) or limit < 0:
                report((*base, "limits", metric), f"a limit is a number from 0 to "
                       f"{MAX_EXACT_INT}, or null for unlimited, not {shown(limit)}", False)
                continue
            limits[metric] = limit
        features = body.get("features") or []
        if not isinstance(features, list) or not all(
                isinstance(f, str) and NAME_RE.fullmatch(f) for f in features):
            report((*base, "features"), "features is a list of names", False)
            features = []
        if body.get("fallback") is True:
            if fallback is not None:
                report((*base, "fallback"), f"only one plan may be the fallback; {shown(fallback)} "
                       "already is", False)
            else:
                fallback = name
        plans[name] = Plan(name, MappingProxyType(limits), frozenset(features),
                           str(body.get("description", "")))
    if plans and fallback is None:
        report(("plans",), "mark the most restrictive plan `fallback: true`; it applies when an "
               "organization's plan is missing or unknown", True)
    return plans, fallback
