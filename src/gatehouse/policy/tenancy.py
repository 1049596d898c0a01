"""Compile the ``tenancy:`` section: what the lifecycle operations need, as data.

::

    tenancy:
      organization: organization       # the tenant root type
      workspace: workspace             # its workspace type
      owner_role: owner                # org role of an organization's creator; one always remains
      primary_workspace: My workspace  # the workspace CreateOrganization makes with the org
      creator_role: ""                 # workspace role CreateWorkspace's actor gets ("": none)
      guards:                          # operation -> the action it needs, as type.action
        create_workspace: organization.create_workspace
        ...
        move_resource: move            # an action of the moved resource's own type
      features: {create_workspace: multiple_workspaces}
      invitations: {type: invitation, ttl_days: 7, max_ttl_days: 30,
                    roles: {organization: [owner], workspace: [admin, user, guest]}}
      removal: {receivers: [organization.owner, workspace.admin], keep: [ai_chat]}
      access_links: {type: access_link, creates: connection, ttl_days: 7}
      domains: {type: email_domain, public: [gmail.com, ...]}

See docs/tenancy.md for what each operation does with them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from gatehouse.policy.model import (
    AccessLinkRules,
    DomainRules,
    Guard,
    InvitationRules,
    RemovalRules,
    TenancyModel,
    TypeDef,
)
from gatehouse.policy.sections import ReportProblem, is_name, listed, shown
from gatehouse.sourcemap import DocPath

DAY = 86_400
MAX_TTL_DAYS = 365

GUARDED = ("create_workspace", "rename_workspace", "delete_workspace",
           "manage_organization_members", "manage_workspace_members", "create_access_link",
           "add_domain", "move_into", "move_resource")
"""Operations a ``guards:`` entry may name; all but ``move_resource`` are ``type.action``
(``move_into`` is checked on the workspace a resource moves to)."""
REQUIRED_GUARDS = ("create_workspace", "rename_workspace", "delete_workspace",
                   "manage_organization_members", "manage_workspace_members")
FEATURED = ("create_workspace", "add_domain", "create_access_link")

# The attributes each record type must declare (name -> accepted attribute types).
INVITATION_ATTRIBUTES = {"email": "string", "role": "string", "status": "string",
                         "scope": "string", "expires_at": "int", "secret_sha256": "string",
                         "invited_by": "string"}
ACCESS_LINK_ATTRIBUTES = {"source_type": "string", "status": "string", "expires_at": "int",
                          "secret_sha256": "string", "created_by": "string",
                          "connection_id": "string"}
DOMAIN_ATTRIBUTES = {"mode": "string", "workspace_id": "string", "role": "string"}

KEYS = {"organization", "workspace", "owner_role", "primary_workspace", "creator_role",
        "guards", "features", "invitations", "removal", "access_links", "domains"}
INVITATION_KEYS = {"type", "ttl_days", "max_ttl_days", "roles"}
REMOVAL_KEYS = {"receivers", "keep"}
LINK_KEYS = {"type", "creates", "ttl_days"}
DOMAIN_KEYS = {"type", "public", "organization_role"}
DOMAIN_RE = re.compile(r"(?=.{3,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}",
                       re.ASCII)


class _Compiler:
    def __init__(self, types: Mapping[str, TypeDef], report: ReportProblem) -> None:
        self.types = types
        self.report = report
        self.ok = True

    def err(self, path: DocPath, msg: str, at_key: bool = False) -> None:
        self.ok = False
        self.report(path, msg, at_key)

    def keys(self, body: dict[str, Any], allowed: set[str], path: DocPath) -> None:
        for key in sorted(set(body) - allowed, key=str):
            self.err((*path, key), f"unknown key {shown(key)} (known: {listed(allowed)})", True)

    def mapping(self, body: Any, path: DocPath, what: str) -> dict[str, Any] | None:
        if body is None:
            return None
        if not isinstance(body, dict):
            self.err(path, f"{what} must be a mapping")
            return None
        return body

    def type_name(self, value: Any, path: DocPath) -> str | None:
        if not is_name(value, self.types):
            self.err(path, f"unknown type {shown(value)} (declared: {listed(self.types)})")
            return None
        return str(value)

    def text(self, value: Any, path: DocPath, *, required: bool = True) -> str:
        if value is None and not required:
            return ""
        if not isinstance(value, str) or (required and not value.strip()):
            self.err(path, f"must be a non-empty string, not {shown(value)}")
            return ""
        return value

    def days(self, value: Any, path: DocPath, default: int) -> int:
        if value is None:
            return default * DAY
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TTL_DAYS:
            self.err(path, f"must be a whole number of days from 1 to {MAX_TTL_DAYS}, not "
                     f"{shown(value)}")
            return default * DAY
        return value * DAY

    def role_ref(self, value: Any, path: DocPath, scopes: tuple[str, ...]) -> str | None:
        """A ``type.role`` whose type is one of ``scopes`` and declares the role."""
        if not isinstance(value, str) or "." not in value:
            self.err(path, f"write a role as type.role, not {shown(value)}")
            return None
        type_, _, role = value.partition(".")
        if type_ not in scopes:
            self.err(path, f"{shown(value)}: roles here are held on {' or '.join(scopes)}")
            return None
        if role not in self.types[type_].roles:
            self.err(path, f"{shown(role)} is not a role of {type_!r} (roles: "
                     f"{listed(self.types[type_].roles)})")
            return None
        return value

    def record_type(self, value: Any, path: DocPath, parent: str,
                    needs: Mapping[str, str]) -> str | None:
        name = self.type_name(value, path)
        if name is None:
            return None
        tdef = self.types[name]
        if tdef.parent != parent:
            self.err(path, f"type {name!r} must have parent {parent!r} (its records live in "
                     "the tenant and go with it)")
            return None
        missing = [f"{a}: {t}" for a, t in needs.items()
                   if a not in tdef.attributes or tdef.attributes[a].type != t]
        if missing:
            self.err(path, f"type {name!r} must declare the attributes {', '.join(missing)}")
            return None
        return name


def compile_tenancy(types: Mapping[str, TypeDef], roots: set[str], raw: Any,
                    report: ReportProblem) -> TenancyModel | None:
    """The tenancy model of a policy, or None when it declares no ``tenancy:`` section
    (or a broken one: every problem is reported)."""
    if raw is None:
        return None
    c = _Compiler(types, report)
    base: DocPath = ("tenancy",)
    body = c.mapping(raw, base, "tenancy")
    if body is None:
        return None
    c.keys(body, KEYS, base)
    org = c.type_name(body.get("organization"), (*base, "organization"))
    ws = c.type_name(body.get("workspace"), (*base, "workspace"))
    if org is not None and org not in roots:
        c.err((*base, "organization"), f"{org!r} is not a tenant root type (one that other "
              f"types name as parent and has none itself; roots: {listed(roots)})")
        org = None
    if ws is not None and org is not None and types[ws].parent != org:
        c.err((*base, "workspace"), f"type {ws!r} must have parent {org!r}")
        ws = None
    if org is None or ws is None:
        return None
    for type_, field, needs in ((org, "organization", ("name",)),
                                (ws, "workspace", ("name", "slug"))):
        attrs = types[type_].attributes
        missing = [a for a in needs if a not in attrs or attrs[a].type != "string"]
        if missing:
            c.err((*base, field), f"type {type_!r} must declare the string attributes "
                  f"{', '.join(missing)} (the operations set them)")
    owner_role = c.text(body.get("owner_role"), (*base, "owner_role"))
    if owner_role and owner_role not in types[org].roles:
        c.err((*base, "owner_role"), f"{shown(owner_role)} is not a role of {org!r} (roles: "
              f"{listed(types[org].roles)})")
    primary = c.text(body.get("primary_workspace"), (*base, "primary_workspace"))
    if len(primary) > 100:
        c.err((*base, "primary_workspace"), "a workspace name has at most 100 characters")
    creator_role = c.text(body.get("creator_role"), (*base, "creator_role"), required=False)
    if creator_role and creator_role not in types[ws].roles:
        c.err((*base, "creator_role"), f"{shown(creator_role)} is not a role of {ws!r} "
              f"(roles: {listed(types[ws].roles)})")
    guards = _guards(c, body.get("guards"), (*base, "guards"), org, ws)
    features = _features(c, body.get("features"), (*base, "features"))
    invitations = _invitations(c, body.get("invitations"), (*base, "invitations"), org, ws)
    removal = _removal(c, body.get("removal"), (*base, "removal"), org, ws)
    links = _links(c, body.get("access_links"), (*base, "access_links"), ws)
    domains = _domains(c, body.get("domains"), (*base, "domains"), org)
    if "move_resource" in guards and "move_into" not in guards:
        c.err((*base, "guards"), "a guard for 'move_into' (the target workspace) is required "
              "with move_resource")
    for op, section in (("create_access_link", links), ("add_domain", domains)):
        if section is not None and op not in guards:
            c.err((*base, "guards"), f"a guard for {op!r} is required with its section")
    if not c.ok:
        return None
    return TenancyModel(org, ws, owner_role, primary, creator_role,
                        MappingProxyType(guards), MappingProxyType(features), invitations,
                        removal, links, domains)


def _guards(c: _Compiler, raw: Any, path: DocPath, org: str, ws: str) -> dict[str, Guard]:
    out: dict[str, Guard] = {}
    body = c.mapping(raw, path, "guards")
    if body is None:
        c.err(path, f"guards are required (at least: {', '.join(REQUIRED_GUARDS)})")
        return out
    c.keys(body, set(GUARDED), path)
    for op in GUARDED:
        value = body.get(op)
        where = (*path, op)
        if value is None:
            if op in REQUIRED_GUARDS:
                c.err(path, f"a guard for {op!r} is required")
            continue
        if op == "move_resource":
            if not isinstance(value, str) or not any(value in t.actions
                                                     for t in c.types.values()):
                c.err(where, f"{shown(value)} is not an action any type declares")
                continue
            out[op] = Guard("", value)
            continue
        if not isinstance(value, str) or "." not in value:
            c.err(where, f"write a guard as type.action, not {shown(value)}")
            continue
        type_, _, action = value.partition(".")
        if type_ not in (org, ws):
            c.err(where, f"{shown(value)}: a guard names an action of {org!r} or {ws!r}")
            continue
        if action not in c.types[type_].actions:
            c.err(where, f"{shown(action)} is not an action of {type_!r} (actions: "
                  f"{listed(c.types[type_].actions)})")
            continue
        if op == "manage_organization_members" and type_ != org:
            c.err(where, f"organization members are managed through an action of {org!r}")
            continue
        out[op] = Guard(type_, action)
    return out


def _features(c: _Compiler, raw: Any, path: DocPath) -> dict[str, str]:
    body = c.mapping(raw, path, "features") or {}
    c.keys(body, set(FEATURED), path)
    out: dict[str, str] = {}
    for op in FEATURED:
        if op in body:
            value = c.text(body[op], (*path, op))
            if value:
                out[op] = value
    return out


def _invitations(c: _Compiler, raw: Any, path: DocPath, org: str,
                 ws: str) -> InvitationRules | None:
    body = c.mapping(raw, path, "invitations")
    if body is None:
        return None
    c.keys(body, INVITATION_KEYS, path)
    type_ = c.record_type(body.get("type"), (*path, "type"), org, INVITATION_ATTRIBUTES)
    ttl = c.days(body.get("ttl_days"), (*path, "ttl_days"), 7)
    max_ttl = c.days(body.get("max_ttl_days"), (*path, "max_ttl_days"), 30)
    if ttl > max_ttl:
        c.err((*path, "ttl_days"), "the default expiry may not exceed max_ttl_days")
    roles: dict[str, frozenset[str]] = {}
    raw_roles = c.mapping(body.get("roles"), (*path, "roles"), "roles")
    if raw_roles is None:
        c.err(path, f"roles are required: for {org!r} and/or {ws!r}, the roles an invitation "
              "may grant")
    else:
        c.keys(raw_roles, {org, ws}, (*path, "roles"))
        for scope in (org, ws):
            names = raw_roles.get(scope)
            if names is None:
                continue
            if not isinstance(names, list) or not names:
                c.err((*path, "roles", scope), "must be a non-empty list of role names")
                continue
            good = set()
            for i, name in enumerate(names):
                if not is_name(name, c.types[scope].roles):
                    c.err((*path, "roles", scope, i), f"{shown(name)} is not a role of "
                          f"{scope!r} (roles: {listed(c.types[scope].roles)})")
                else:
                    good.add(str(name))
            roles[scope] = frozenset(good)
    if type_ is None:
        return None
    return InvitationRules(type_, ttl, max_ttl, MappingProxyType(roles))


def _removal(c: _Compiler, raw: Any, path: DocPath, org: str, ws: str) -> RemovalRules:
    body = c.mapping(raw, path, "removal")
    if body is None:
        return RemovalRules()
    c.keys(body, REMOVAL_KEYS, path)
    receivers = set()
    raw_receivers = body.get("receivers")
    if not isinstance(raw_receivers, list) or not raw_receivers:
        c.err((*path, "receivers"), "must list the roles (type.role) that may receive a "
              "removed member's resources")
    else:
        for i, value in enumerate(raw_receivers):
            ref = c.role_ref(value, (*path, "receivers", i), (org, ws))
            if ref is not None:
                receivers.add(ref)
    keep = set()
    raw_keep = body.get("keep", [])
    if not isinstance(raw_keep, list):
        c.err((*path, "keep"), "must be a list of owned types")
    else:
        for i, value in enumerate(raw_keep):
            name = c.type_name(value, (*path, "keep", i))
            if name is not None and not c.types[name].owned:
                c.err((*path, "keep", i), f"type {name!r} is not owned; only owned types are "
                      "reassigned")
            elif name is not None:
                keep.add(name)
    return RemovalRules(frozenset(receivers), frozenset(keep))


def _links(c: _Compiler, raw: Any, path: DocPath, ws: str) -> AccessLinkRules | None:
    body = c.mapping(raw, path, "access_links")
    if body is None:
        return None
    c.keys(body, LINK_KEYS, path)
    type_ = c.record_type(body.get("type"), (*path, "type"), ws, ACCESS_LINK_ATTRIBUTES)
    creates = c.type_name(body.get("creates"), (*path, "creates"))
    if creates is not None:
        tdef = c.types[creates]
        if tdef.parent != ws or not tdef.owned or "source_type" not in tdef.attributes:
            c.err((*path, "creates"), f"type {creates!r} must be owned, have parent {ws!r} and "
                  "a source_type attribute")
            creates = None
    ttl = c.days(body.get("ttl_days"), (*path, "ttl_days"), 7)
    if type_ is None or creates is None:
        return None
    return AccessLinkRules(type_, creates, ttl)


def _domains(c: _Compiler, raw: Any, path: DocPath, org: str) -> DomainRules | None:
    body = c.mapping(raw, path, "domains")
    if body is None:
        return None
    c.keys(body, DOMAIN_KEYS, path)
    type_ = c.record_type(body.get("type"), (*path, "type"), org, DOMAIN_ATTRIBUTES)
    public = set()
    raw_public = body.get("public")
    if not isinstance(raw_public, list) or not raw_public:
        c.err((*path, "public"), "must list the public email domains (gmail.com, ...) that "
              "can never be claimed")
    else:
        for i, value in enumerate(raw_public):
            if not isinstance(value, str) or not DOMAIN_RE.fullmatch(value):
                c.err((*path, "public", i), f"{shown(value)} is not a domain name")
            else:
                public.add(value)
    org_role = c.text(body.get("organization_role"), (*path, "organization_role"),
                      required=False)
    if org_role and org_role not in c.types[org].roles:
        c.err((*path, "organization_role"), f"{shown(org_role)} is not a role of {org!r}")
    if type_ is None:
        return None
    return DomainRules(type_, frozenset(public), org_role)
