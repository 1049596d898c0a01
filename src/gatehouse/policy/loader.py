"""Load a policy set folder: parse every file, validate, compile.

A policy set is the ``*.yaml`` files at the top of a folder (test suites,
``*_test.yaml``, are not part of it). Sections (``types``, ``permissions``)
may be split across files. Every problem found is collected and reported
together with ``file:line:column path: message``; a set with any problem
does not compile, so a broken edit can never replace a good policy.
"""

from __future__ import annotations

import hashlib
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gatehouse.errors import PolicyError, Problem, quote
from gatehouse.limits import LIMITS
from gatehouse.names import TYPE_RE
from gatehouse.policy.conditions import ConditionError, compile_condition
from gatehouse.policy.constraints import compile_constraints
from gatehouse.policy.files import POLICY_STRICTNESS, read_capped, size_problems
from gatehouse.policy.files import policy_files as policy_files
from gatehouse.policy.model import (
    ATTRIBUTE_TYPES,
    OWNER,
    PARENT,
    ActionTable,
    Attribute,
    CompiledPolicy,
    Effect,
    RoleRef,
    Rule,
    TypeDef,
    UsageModel,
)
from gatehouse.policy.rules import ROOT, Constraint, scope_kinds, write_rules
from gatehouse.policy.sections import LISTED_NAMES, is_name, is_number, listed, shown, unlisted
from gatehouse.policy.tenancy import compile_tenancy
from gatehouse.policy.usage import compile_usage
from gatehouse.sourcemap import DocPath, SourceMap, load, render_path

TOP_KEYS = {"name", "description", "types", "permissions", "constraints", "metrics", "plans",
            "tenancy"}
TYPE_KEYS = {"description", "parent", "subject", "owned", "roles", "actions", "attributes",
             "relations"}
RULE_KEYS = {"description", "effect", "actions", "roles", "when"}
ATTRIBUTE_RULE_KEYS = ("min_length", "max_length", "pattern", "immutable", "unique_within")
ATTRIBUTE_KEYS = {"type", "default", "description", *ATTRIBUTE_RULE_KEYS}
MAX_ATTRIBUTE_LENGTH = 10_000
MAX_PATTERN_CHARS = 200
WILDCARD = "*"


@dataclass(slots=True)
class _Doc:
    name: str
    data: dict[str, Any]
    smap: SourceMap


@dataclass(slots=True)
class _TypeSrc:
    name: str
    body: dict[str, Any]
    doc: _Doc
    path: DocPath


class _Compiler:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        # (doc, attribute path, attribute, value) of each unique_within, checked
        # once lineages are known.
        self.unique_within: list[tuple[_Doc, DocPath, str, Any]] = []

    def err(
        self, doc: _Doc, path: DocPath, msg: str, *, at_key: bool = False
    ) -> None:
        self.problems.append(doc.smap.problem(path, msg, at_key=at_key))

    # -- types --------------------------------------------------------------

    def _names(self, doc: _Doc, path: DocPath, value: Any, what: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.err(doc, path, f"{what} must be a list of names")
            return []
        if len(value) > LIMITS.policy_names_per_type:
            self.err(doc, path, f"{len(value)} {what}, more than "
                     f"{LIMITS.policy_names_per_type} (the limit of one type)")
            return []
        out: dict[str, None] = {}
        for i, item in enumerate(value):
            if not isinstance(item, str) or not TYPE_RE.fullmatch(item):
                self.err(doc, (*path, i), f"{shown(item)} is not a valid {what[:-1]} name "
                         "(lowercase letters, digits, '_')")
            elif item in out:
                self.err(doc, (*path, i), f"{what[:-1]} {shown(item)} is listed twice")
            else:
                out[item] = None
        return list(out)

    def _attributes(self, src: _TypeSrc) -> dict[str, Attribute]:
        doc, base = src.doc, (*src.path, "attributes")
        raw = src.body.get("attributes")
        out: dict[str, Attribute] = {}
        if raw is None:
            return out
        if not isinstance(raw, dict):
            self.err(doc, base, "attributes must map names to types")
            return out
        for name, spec in raw.items():
            path = (*base, name)
            if not TYPE_RE.fullmatch(name):
                self.err(doc, path, f"{shown(name)} is not a valid attribute name", at_key=True)
                continue
            default, has_default = None, False
            rules: dict[str, Any] = {}
            if isinstance(spec, dict):
                unknown = set(spec) - ATTRIBUTE_KEYS
                for key in sorted(unknown):
                    self.err(doc, (*path, key), f"unknown key {shown(key)} (known: "
                             f"{', '.join(sorted(ATTRIBUTE_KEYS))})", at_key=True)
                if "default" in spec:
                    default, has_default = spec["default"], True
                type_name = spec.get("type")
                rules = {k: spec[k] for k in ATTRIBUTE_RULE_KEYS if k in spec}
            else:
                type_name = spec
            # A broken attribute is still declared, so that conditions using it
            # are not also reported as naming an undeclared attribute.
            if type_name not in ATTRIBUTE_TYPES:
                self.err(doc, path, f"unknown attribute type {shown(type_name)} "
                         f"(known: {', '.join(ATTRIBUTE_TYPES)})")
                out[name] = Attribute(name, "")
                continue
            attr = self._attribute_rules(doc, path, Attribute(name, type_name), rules)
            if has_default:
                with_default = replace(attr, default=default, has_default=True)
                why = None
                if not attr.accepts(default) or (
                        type_name in ("int", "number") and not is_number(default)):
                    why = f"is not a {type_name}"
                elif isinstance(default, str):
                    why = attr.rule_problem(default)
                if why is None:
                    attr = with_default
                else:
                    self.err(doc, (*path, "default"), f"default {shown(default)} {why}")
            out[name] = attr
        return out

    def _attribute_rules(self, doc: _Doc, path: DocPath, attr: Attribute,
                         rules: dict[str, Any]) -> Attribute:
        """``attr`` with the rules of its spec that are well formed (the rest reported)."""
        values: dict[str, Any] = {}
        for key in ("min_length", "max_length", "pattern", "unique_within"):
            if key in rules and attr.type != "string":
                self.err(doc, (*path, key), f"{key} applies to string attributes, not "
                         f"{attr.type}")
                rules.pop(key)
        for key in ("min_length", "max_length"):
            if key not in rules:
                continue
            value = rules[key]
            if (not isinstance(value, int) or isinstance(value, bool)
                    or not 0 <= value <= MAX_ATTRIBUTE_LENGTH):
                self.err(doc, (*path, key), f"{key} must be a whole number from 0 to "
                         f"{MAX_ATTRIBUTE_LENGTH}, not {shown(value)}")
            else:
                values[key] = value
        if values.get("min_length", 0) > values.get("max_length", MAX_ATTRIBUTE_LENGTH):
            self.err(doc, (*path, "min_length"), f"min_length {values['min_length']} is more "
                     f"than max_length {values['max_length']}")
            values.pop("min_length")
        if "pattern" in rules:
            pattern = rules["pattern"]
            if not isinstance(pattern, str):
                self.err(doc, (*path, "pattern"), f"pattern must be a regular expression "
                         f"(a string), not {shown(pattern)}")
            elif len(pattern) > MAX_PATTERN_CHARS:
                self.err(doc, (*path, "pattern"), f"pattern is {len(pattern)} characters, more "
                         f"than {MAX_PATTERN_CHARS}")
            else:
                try:
                    # The re module warns about syntax it may read differently one
                    # day ("possible set difference"); the pattern compiles today,
                    # and a policy load prints no warnings of its own.
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", FutureWarning)
                        values["pattern"] = re.compile(pattern, re.ASCII)
                except (re.error, OverflowError, RecursionError, ValueError) as exc:
                    why = str(exc) if isinstance(exc, re.error) else type(exc).__name__
                    self.err(doc, (*path, "pattern"), f"pattern {shown(pattern)} is not a valid "
                             f"regular expression ({why})")
        if "immutable" in rules:
            if isinstance(rules["immutable"], bool):
                values["immutable"] = rules["immutable"]
            else:
                self.err(doc, (*path, "immutable"), "immutable must be true or false")
        if "unique_within" in rules:
            # Checked against the type's ancestors once every type is known.
            self.unique_within.append((doc, path, attr.name, rules["unique_within"]))
        return replace(attr, **values)

    def compile_types(self, sources: dict[str, _TypeSrc]) -> dict[str, TypeDef]:
        # First pass: shapes.
        shaped: dict[str, dict[str, Any]] = {}
        for name, src in sources.items():
            doc, path, body = src.doc, src.path, src.body
            for key in sorted(set(body) - TYPE_KEYS):
                self.err(doc, (*path, key), f"unknown key {shown(key)} in type {shown(name)} "
                         f"(known: {listed(TYPE_KEYS)})", at_key=True)
            info: dict[str, Any] = {
                "parent": body.get("parent"),
                "subject": body.get("subject", False),
                "owned": body.get("owned", False),
                "roles": self._names(doc, (*path, "roles"), body.get("roles"), "roles"),
                "actions": self._names(doc, (*path, "actions"), body.get("actions"), "actions"),
                "attributes": self._attributes(src),
            }
            for flag in ("subject", "owned"):
                if not isinstance(info[flag], bool):
                    self.err(doc, (*path, flag), f"{flag} must be true or false")
                    info[flag] = False
            parent = info["parent"]
            if parent is not None and (not isinstance(parent, str) or parent not in sources):
                self.err(doc, (*path, "parent"),
                         f"unknown parent type {shown(parent)} (declared types: {listed(sources)})")
                info["parent"] = None
            for role in info["roles"]:
                if role == PARENT or (role == OWNER and info["owned"]):
                    self.err(doc, (*path, "roles"), f"role {shown(role)} clashes with the built-in "
                             f"'{role}' relation of {'owned ' if role == OWNER else ''}types")
            shaped[name] = info
        subject_types = {n for n, i in shaped.items() if i["subject"]}
        if sources and not subject_types:
            first = next(iter(sources.values()))
            self.err(first.doc, ("types",), "no type is declared 'subject: true' "
                     "(the type of the people or services that act, e.g. user)", at_key=True)
        # Cycles in parents, and chains too long: each decision walks a resource's
        # ancestors, so their number is bounded.
        too_deep: list[str] = []
        for name, src in sources.items():
            chain = [name]
            seen = {name}
            cur = shaped[name]["parent"]
            while cur is not None:
                if cur in seen:
                    # Reported once, on the first type of the cycle; a type that
                    # merely descends from a cycle is not part of it.
                    if cur == name:
                        text = " -> ".join([*chain, cur])
                        self.err(src.doc, (*src.path, "parent"),
                                 f"parent types form a cycle: {text}")
                        shaped[name]["parent"] = None
                    break
                if len(chain) == LIMITS.policy_parent_depth:
                    too_deep.append(name)
                    break
                chain.append(cur)
                seen.add(cur)
                cur = shaped[cur]["parent"]
        for name in too_deep:
            src = sources[name]
            self.err(src.doc, (*src.path, "parent"), f"{shown(name)} has more than "
                     f"{LIMITS.policy_parent_depth - 1} ancestor types (the limit of a parent "
                     "chain)")
            shaped[name]["parent"] = None
        # Second pass: relations and lineage.
        types: dict[str, TypeDef] = {}
        subjects = frozenset(subject_types)
        for name, src in sources.items():
            info = shaped[name]
            relations: dict[str, frozenset[str]] = {}
            if info["parent"]:
                relations[PARENT] = frozenset({info["parent"]})
            if info["owned"]:
                relations[OWNER] = subjects
            for role in info["roles"]:
                relations[role] = subjects
            raw = src.body.get("relations")
            if raw is not None and not isinstance(raw, dict):
                self.err(src.doc, (*src.path, "relations"),
                         "relations must map names to a type or a list of types")
            elif raw:
                for rel, targets in raw.items():
                    rpath = (*src.path, "relations", rel)
                    if not TYPE_RE.fullmatch(rel):
                        self.err(src.doc, rpath, f"{shown(rel)} is not a valid relation name",
                                 at_key=True)
                        continue
                    if rel in relations or rel in (OWNER, PARENT):
                        self.err(src.doc, rpath, f"relation {shown(rel)} is already defined on "
                                 f"{shown(name)} (as parent, owner or a role)", at_key=True)
                        continue
                    names = [targets] if isinstance(targets, str) else targets
                    if not isinstance(names, list) or not names:
                        self.err(src.doc, rpath, "give the subject type, or a list of types")
                        continue
                    bad = [t for t in names if not isinstance(t, str) or t not in sources]
                    if bad:
                        self.err(src.doc, rpath, f"unknown type {shown(bad[0])} "
                                 f"(declared types: {listed(sources)})")
                        continue
                    relations[rel] = frozenset(names)
            lineage = [name]
            cur = info["parent"]
            while cur is not None and cur not in lineage:
                lineage.append(cur)
                cur = shaped[cur]["parent"]
            types[name] = TypeDef(
                name=name,
                parent=info["parent"],
                subject=info["subject"],
                owned=info["owned"],
                roles=frozenset(info["roles"]),
                actions=tuple(info["actions"]),
                attributes=MappingProxyType(info["attributes"]),
                relations=MappingProxyType(relations),
                lineage=tuple(lineage),
            )
        self._check_unique_within(types)
        return types

    def _check_unique_within(self, types: dict[str, TypeDef]) -> None:
        """Keep each ``unique_within`` that names the tenant root above its type."""
        for doc, path, attr_name, value in self.unique_within:
            tname = str(path[1])
            tdef = types.get(tname)
            if tdef is None:
                continue
            ancestors = tdef.lineage[1:]
            if not ancestors:
                self.err(doc, (*path, "unique_within"), f"{shown(tname)} has no ancestor "
                         "types; unique_within names the tenant root type above it")
            elif not is_name(value, ancestors):
                self.err(doc, (*path, "unique_within"), f"unique_within must name an ancestor "
                         f"type of {shown(tname)} ({', '.join(ancestors)}), not {shown(value)}")
            elif value != ancestors[-1]:
                self.err(doc, (*path, "unique_within"), f"unique_within must be the tenant root "
                         f"type {shown(ancestors[-1])}: the store keeps values unique per "
                         f"tenant, not per {shown(value)}")
            else:
                attrs = dict(tdef.attributes)
                attrs[attr_name] = replace(attrs[attr_name], unique_within=value)
                types[tname] = replace(tdef, attributes=MappingProxyType(attrs))

    # -- permissions --------------------------------------------------------

    def compile_rules(
        self, types: dict[str, TypeDef], sections: list[tuple[_Doc, str, Any]]
    ) -> dict[str, list[Rule]]:
        rules: dict[str, list[Rule]] = {name: [] for name in types}
        subject_types = {n for n, t in types.items() if t.subject}
        count = 0
        for doc, tname, body in sections:
            base: DocPath = ("permissions", tname)
            tdef = types.get(tname)
            if tdef is None:
                self.err(doc, base, f"permissions for unknown type {shown(tname)} "
                         f"(declared types: {listed(types)})", at_key=True)
                continue
            if not isinstance(body, list):
                self.err(doc, base, "permissions of a type are a list of rules")
                continue
            for i, raw in enumerate(body):
                count += 1
                if count > LIMITS.policy_rules:
                    self.err(doc, (*base, i), f"more than {LIMITS.policy_rules} permission "
                             "rules (the limit of one policy set)")
                    return rules
                rule = self._rule(doc, (*base, i), tdef, types, subject_types, raw)
                if rule is not None:
                    rules[tname].append(rule)
        return rules

    def _rule(
        self,
        doc: _Doc,
        path: DocPath,
        tdef: TypeDef,
        types: Mapping[str, TypeDef],
        subject_types: set[str],
        raw: Any,
    ) -> Rule | None:
        if not isinstance(raw, dict):
            self.err(doc, path, "a rule is a mapping with actions, roles and optionally when")
            return None
        ok = True
        for key in sorted(set(raw) - RULE_KEYS):
            self.err(doc, (*path, key), f"unknown key {shown(key)} (known: {listed(RULE_KEYS)})",
                     at_key=True)
            ok = False
        effect_raw = raw.get("effect", "allow")
        if effect_raw not in ("allow", "deny"):
            self.err(doc, (*path, "effect"),
                     f"effect must be allow or deny, not {shown(effect_raw)}")
            return None
        effect = Effect(effect_raw)
        # actions
        actions: set[str] = set()
        raw_actions = raw.get("actions")
        if not isinstance(raw_actions, list) or not raw_actions:
            self.err(doc, (*path, "actions") if "actions" in raw else path,
                     "a rule needs a non-empty list of actions")
            ok = False
        else:
            for j, action in enumerate(raw_actions):
                if action == WILDCARD:
                    actions.update(tdef.actions)
                elif isinstance(action, str) and action in tdef.actions:
                    actions.add(action)
                else:
                    self.err(doc, (*path, "actions", j), f"unknown action {shown(action)} for "
                             f"{shown(tdef.name)} (known: {listed(tdef.actions)}, or '*')")
                    ok = False
        # roles
        roles: list[RoleRef] = []
        raw_roles = raw.get("roles")
        if raw_roles is None and effect is Effect.ALLOW:
            self.err(doc, path, "an allow rule needs roles: which roles it grants the actions to")
            ok = False
        elif raw_roles is not None and (not isinstance(raw_roles, list) or not raw_roles):
            self.err(doc, (*path, "roles"), "roles must be a non-empty list like "
                     "[workspace.admin]")
            ok = False
        elif raw_roles:
            hint = ""  # built once, and only for a rule with a bad role
            for j, ref in enumerate(raw_roles):
                rtype, dot, rname = (ref if isinstance(ref, str) else "").partition(".")
                if dot and rtype in tdef.lineage and rname in types[rtype].roles:
                    roles.append(RoleRef(sys.intern(rtype), sys.intern(rname)))
                    continue
                if dot and rtype in types and rtype not in tdef.lineage:
                    why = (f"{shown(rtype)} is not {shown(tdef.name)} or one of its ancestors "
                           f"({' -> '.join(tdef.lineage)})")
                else:
                    why = f"unknown role {shown(ref)}"
                if not hint:
                    count = sum(len(types[t].roles) for t in tdef.lineage)
                    hint = unlisted(count) if count > LISTED_NAMES else ", ".join(
                        f"{t}.{r}" for t in tdef.lineage for r in sorted(types[t].roles)
                    ) or "none"
                self.err(doc, (*path, "roles", j), f"{why} (known: {hint})")
                ok = False
        # condition
        condition = None
        text = ""
        if "when" in raw:
            try:
                condition, text = compile_condition(raw["when"], tdef, types, subject_types)
            except ConditionError as exc:
                self.err(doc, (*path, "when", *exc.subpath), str(exc))
                ok = False
        if not ok:
            return None
        line, col = doc.smap.position(path)
        return Rule(
            effect=effect,
            actions=frozenset(actions),
            roles=tuple(roles),
            condition=condition,
            condition_text=text,
            owner_required=_requires_owner(raw.get("when")),
            source=f"{doc.name}:{line}:{col} {render_path(path)}",
        )


def _requires_owner(spec: Any) -> bool:
    if isinstance(spec, str):
        return spec.strip() == OWNER
    if isinstance(spec, list):
        return any(_requires_owner(x) for x in spec)
    if isinstance(spec, dict) and len(spec) == 1 and isinstance(spec.get("all"), list):
        return any(_requires_owner(x) for x in spec["all"])
    return False


def _tables(
    types: Mapping[str, TypeDef], rules: Mapping[str, list[Rule]]
) -> dict[str, Mapping[str, ActionTable]]:
    tables: dict[str, Mapping[str, ActionTable]] = {}
    for tname, tdef in types.items():
        per_action: dict[str, ActionTable] = {}
        for action in tdef.actions:
            applicable = [r for r in rules[tname] if action in r.actions]
            denies = tuple(r for r in applicable if r.effect is Effect.DENY)
            grants = tuple(r for r in applicable if r.effect is Effect.ALLOW)
            direct: dict[str, set[str]] = {}
            for rule in grants:
                if rule.condition is None:
                    for ref in rule.roles:
                        direct.setdefault(ref.type, set()).add(ref.relation)
            per_action[sys.intern(action)] = ActionTable(
                denies=denies,
                direct=tuple((t, frozenset(rels), t == tname) for t, rels in direct.items()),
                conditional=tuple(r for r in grants if r.condition is not None),
                grants=grants,
            )
        tables[sys.intern(tname)] = MappingProxyType(per_action)
    return tables


INTERNAL_ERROR = "internal error in the policy compiler"


def compile_sources(sources: list[tuple[str, str]], name: str) -> CompiledPolicy:
    """Compile ``[(display file name, text), ...]`` into a policy. Raises PolicyError.

    Nothing else escapes: a reloading server keeps its last good policy only
    if a bad edit raises PolicyError. Every input the compiler does not
    understand is meant to be a positioned problem; should one still raise,
    it is reported as an internal error (the fuzz tests look for that text)
    rather than taking the reload down.
    """
    try:
        return _compile(sources, name)
    except PolicyError:
        raise
    except Exception as exc:
        where = sources[0][0] if sources else name
        raise PolicyError([Problem(where, 0, 0, "", f"{INTERNAL_ERROR} ({type(exc).__name__}: "
                                   f"{quote(str(exc))}); the policy is not loaded")]) from exc


def _compile(sources: list[tuple[str, str]], name: str) -> CompiledPolicy:
    comp = _Compiler()
    read_problems: list[Problem] = []
    docs: list[_Doc] = []
    digest = hashlib.sha256()
    for fname, text in sources:
        digest.update(fname.encode() + b"\0" + text.encode() + b"\0")
        value, smap, problems = load(text, fname, POLICY_STRICTNESS)
        read_problems.extend(problems)
        if value is None:
            if not problems:
                comp.problems.append(Problem(fname, 1, 1, "", "file is empty"))
            continue
        if not isinstance(value, dict):
            comp.problems.append(smap.problem((), "a policy file is a mapping with types "
                                              "and permissions"))
            continue
        docs.append(_Doc(fname, value, smap))
    set_name = name
    type_sources: dict[str, _TypeSrc] = {}
    perm_sections: list[tuple[_Doc, str, Any]] = []
    cons_sections: list[tuple[_Doc, Any]] = []
    usage_sections: dict[str, tuple[_Doc, Any]] = {}
    for doc in docs:
        for key in sorted(set(doc.data) - TOP_KEYS):
            comp.err(doc, (key,), f"unknown top-level key {shown(key)} (known: {listed(TOP_KEYS)})",
                     at_key=True)
        if isinstance(doc.data.get("name"), str):
            set_name = doc.data["name"]
        raw_types = doc.data.get("types")
        if raw_types is not None:
            if not isinstance(raw_types, dict):
                comp.err(doc, ("types",), "types must map type names to their definitions")
            else:
                for tname, body in raw_types.items():
                    path: DocPath = ("types", tname)
                    if not TYPE_RE.fullmatch(tname):
                        comp.err(doc, path, f"{shown(tname)} is not a valid type name "
                                 "(lowercase letters, digits, '_')", at_key=True)
                        continue
                    if tname in type_sources:
                        first = type_sources[tname].doc
                        comp.err(doc, path, f"type {shown(tname)} is already declared in "
                                 f"{first.name}:{first.smap.key_position(path)[0]}", at_key=True)
                        continue
                    if body is None:
                        body = {}
                    if not isinstance(body, dict):
                        comp.err(doc, path,
                                 f"type {shown(tname)} must be a mapping (use {{}} for none)")
                        continue
                    type_sources[tname] = _TypeSrc(tname, body, doc, path)
        for section in ("metrics", "plans", "tenancy"):
            if section in doc.data:
                if section in usage_sections:
                    comp.err(doc, (section,), f"{shown(section)} is already defined in "
                             f"{usage_sections[section][0].name}", at_key=True)
                else:
                    usage_sections[section] = (doc, doc.data[section])
        raw_cons = doc.data.get("constraints")
        if raw_cons is not None:
            cons_sections.append((doc, raw_cons))
        raw_perms = doc.data.get("permissions")
        if raw_perms is not None:
            if not isinstance(raw_perms, dict):
                comp.err(doc, ("permissions",), "permissions must map type names to rule lists")
            else:
                perm_sections.extend((doc, t, body) for t, body in raw_perms.items())
    if docs and not type_sources:
        comp.problems.append(Problem(docs[0].name, 1, 1, "types", "the policy declares no types"))
    types = comp.compile_types(type_sources)
    rules = comp.compile_rules(types, perm_sections)
    roots = {n for n, k in scope_kinds(types).items() if k == ROOT}
    constraints: list[Constraint] = []
    seen_constraints: dict[str, str] = {}
    for doc, raw in cons_sections:
        def report_constraint(path: DocPath, msg: str, at_key: bool, doc: _Doc = doc) -> None:
            comp.err(doc, path, msg, at_key=at_key)

        for con in compile_constraints(types, raw, roots, report_constraint):
            if con.name in seen_constraints:
                report_constraint(("constraints", con.name), f"constraint {shown(con.name)} is "
                                  f"already defined in {seen_constraints[con.name]}", True)
                continue
            seen_constraints[con.name] = doc.name
            constraints.append(con)
    usage = UsageModel()
    if usage_sections:
        docs_by_section = {k: v[0] for k, v in usage_sections.items()}

        def report_usage(path: DocPath, msg: str, at_key: bool) -> None:
            doc = docs_by_section.get(str(path[0])) or next(iter(docs_by_section.values()))
            comp.err(doc, path, msg, at_key=at_key)

        usage = compile_usage(types, roots, usage_sections.get("metrics", (None, None))[1],
                              usage_sections.get("plans", (None, None))[1], report_usage)
    tenancy = None
    if "tenancy" in usage_sections:
        tenancy_doc, raw_tenancy = usage_sections["tenancy"]

        def report_tenancy(path: DocPath, msg: str, at_key: bool) -> None:
            comp.err(tenancy_doc, path, msg, at_key=at_key)

        tenancy = compile_tenancy(types, roots, raw_tenancy, report_tenancy)
    if comp.problems or read_problems:
        # A value the YAML reader refused (a NaN, a 1:30) reaches the compiler as
        # None; what the compiler then says at the same place is only an echo.
        refused = {(p.file, p.line, p.column, p.path) for p in read_problems}
        echoes = [p for p in comp.problems if (p.file, p.line, p.column, p.path) in refused]
        raise PolicyError(read_problems + [p for p in comp.problems if p not in echoes])
    return CompiledPolicy(
        name=set_name,
        version="sha256:" + digest.hexdigest()[:16],
        types=MappingProxyType(types),
        subject_types=frozenset(n for n, t in types.items() if t.subject),
        tables=MappingProxyType(_tables(types, rules)),
        write_rules=write_rules(types, tuple(constraints)),
        usage=usage,
        tenancy=tenancy,
        files=tuple(f for f, _ in sources),
    )


def load_policy(directory: str | Path) -> CompiledPolicy:
    """Load and compile the policy set in ``directory``. Raises PolicyError."""
    root = Path(directory)
    try:
        if not root.is_dir():
            raise PolicyError([Problem(str(root), 0, 0, "", "is not a folder")])
        files = policy_files(root)
    except OSError as exc:
        raise PolicyError([Problem(str(root), 0, 0, "", f"cannot read: {exc}")]) from None
    if not files:
        raise PolicyError([Problem(str(root), 0, 0, "", "holds no policy files (*.yaml)")])
    problems = size_problems(root, files, "policy files")
    if problems:
        raise PolicyError(problems)
    sources: list[tuple[str, str]] = []
    for path in files:
        text, problem = read_capped(path)
        if problem is not None:
            problems.append(problem)
        elif text is not None:
            sources.append((str(path), text))
    if problems:
        raise PolicyError(problems)
    return compile_sources(sources, root.name)
