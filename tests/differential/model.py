"""Random small policies and graphs, and a deliberately naive reference evaluator.

The reference is a direct, slow reading of docs/policy-language.md written
without the engine's code: it walks parent edges to find ancestors, scans
every relationship for roles, and evaluates conditions with three values
(true / false / unknown) as the docs state. Where the engine and this module
disagree, one of them is wrong; the docs decide which.

The policy skeleton is fixed (``user`` → subjects; ``org`` the tenant root;
``ws`` below it; ``doc`` below ``ws``); everything else is drawn: roles per
type, whether ``doc`` is owned, attribute defaults, and the rules (effects,
actions or ``*``, roles on the type or an ancestor, conditions built from
``owner``, comparisons on resource, subject and context values, lists, and
``all`` / ``any`` / ``not``). Graphs hold parent edges, role and ownership
edges, plain relations (which never grant) and typed attributes (each
possibly missing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml
from hypothesis import strategies as st

USERS = ("user:u0", "user:u1", "user:u2", "user:u3")
STRANGER = "user:u9"  # holds nothing
ORGS = ("org:o0", "org:o1")
WORKSPACES = ("ws:w0", "ws:w1", "ws:w2")
DOCS = ("doc:d0", "doc:d1", "doc:d2", "doc:d3", "doc:d4")
ACTIONS = {"org": ("view", "manage"), "ws": ("view", "edit"),
           "doc": ("read", "write", "delete")}
ROLE_POOL = {"org": ("owner", "member"), "ws": ("admin", "editor", "guest"),
             "doc": ("viewer", "commenter")}
PARENT = {"ws": "org", "doc": "ws"}
LINEAGE = {"org": ("org",), "ws": ("ws", "org"), "doc": ("doc", "ws", "org")}
CONTEXT_KEYS = ("c_str", "c_num", "c_flag", "c_list")
ACCOUNT_KINDS = ("tenant", "connection", "url")
PLAIN = {"ws": ("watcher", "user"), "org": ("featured", "ws")}
RECORDED = ("count", "sum", "max", "distinct", "latest")
MISSING = object()

# Attribute declarations per type: name -> attribute type.
ATTRS: dict[str, dict[str, str]] = {
    "user": {"email": "string", "level": "int"},
    "org": {"plan": "string", "tier": "int"},
    "ws": {"locked": "bool", "tier": "int"},
    "doc": {"shared": "bool", "level": "int", "tag": "string", "tags": "list",
            "score": "number", "source_type": "string", "credential_id": "string",
            "tenants": "list"},
}


@dataclass
class PolicyCase:
    """A generated policy: its YAML text and what the reference needs to read it."""

    roles: dict[str, tuple[str, ...]]
    owned: bool
    defaults: dict[tuple[str, str], Any]  # (type, attribute) -> declared default
    rules: dict[str, list[dict[str, Any]]]  # type -> rule mappings, as written
    metrics: dict[str, Any] = field(default_factory=dict)
    plans: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        types: dict[str, Any] = {}
        for t in ("user", "org", "ws", "doc"):
            body: dict[str, Any] = ({"subject": True} if t == "user"
                                    else {"actions": list(ACTIONS[t])})
            if t in PARENT:
                body["parent"] = PARENT[t]
            if self.roles.get(t):
                body["roles"] = list(self.roles[t])
            if t == "doc" and self.owned:
                body["owned"] = True
            if t in PLAIN:  # plain relations: in the graph, never a grant
                body["relations"] = {PLAIN[t][0]: PLAIN[t][1]}
            attrs: dict[str, Any] = {}
            for name, kind in ATTRS[t].items():
                if (t, name) in self.defaults:
                    attrs[name] = {"type": kind, "default": self.defaults[(t, name)]}
                else:
                    attrs[name] = kind
            body["attributes"] = attrs
            types[t] = body
        doc: dict[str, Any] = {"name": "generated", "types": types,
                               "permissions": {t: r for t, r in self.rules.items() if r}}
        if self.metrics:
            doc["metrics"] = self.metrics
        if self.plans:
            doc["plans"] = self.plans
        return doc

    def yaml(self) -> str:
        return yaml.safe_dump(self.document(), sort_keys=False, allow_unicode=True)

    def actions_of(self, rtype: str, rule: dict[str, Any]) -> set[str]:
        acts = set()
        for a in rule["actions"]:
            acts.update(ACTIONS[rtype] if a == "*" else (a,))
        return acts


@dataclass
class GraphCase:
    """Relationships as ``(resource, relation, subject)`` and attributes per object."""

    rels: set[tuple[str, str, str]]
    attrs: dict[str, dict[str, Any]]

    def parent(self, key: str) -> str | None:
        found = [s for (r, rel, s) in self.rels if r == key and rel == "parent"]
        return found[0] if found else None

    def exists(self, key: str) -> bool:
        return key in self.attrs or any(key in (r, s) for r, _, s in self.rels)


# -- generation -------------------------------------------------------------------------

def _type_of(key: str) -> str:
    return key.split(":", 1)[0]


STRINGS = st.sampled_from(["a", "b", "B", "ab", "", "é"])
INTS = st.integers(-3, 3)
NUMBERS = st.one_of(INTS, st.sampled_from([0.5, -1.5, 2.0]))
# Attribute values may also be far from any literal.
STORED_NUMBERS = st.one_of(NUMBERS, st.just(1e300))


def _value_of(kind: str, stored: bool = False) -> st.SearchStrategy[Any]:
    if kind == "bool":
        return st.booleans()
    if kind == "int":
        return INTS
    if kind == "number":
        return STORED_NUMBERS if stored else NUMBERS
    if kind == "string":
        return STRINGS
    return st.lists(st.sampled_from(["a", "b", "c"]), max_size=3)


ANY_LITERAL = st.one_of(st.booleans(), INTS, STRINGS,
                        st.lists(st.one_of(STRINGS, INTS), max_size=3))


def _render_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if value.is_integer() is False else f"{value:.1f}"
    if isinstance(value, str):
        return "'" + value + "'"
    return "[" + ", ".join(_render_literal(v) for v in value) + "]"


@st.composite
def _comparison(draw: st.DrawFn, rtype: str) -> str:
    scope = draw(st.sampled_from(["resource", "subject", "context"]))
    if scope == "resource":
        name = draw(st.sampled_from(sorted(ATTRS[rtype])))
        kind = ATTRS[rtype][name]
    elif scope == "subject":
        name = draw(st.sampled_from(sorted(ATTRS["user"])))
        kind = ATTRS["user"][name]
    else:
        name = draw(st.sampled_from(CONTEXT_KEYS))
        kind = {"c_str": "string", "c_num": "number", "c_flag": "bool",
                "c_list": "list"}[name]
    operand = f"{scope}.{name}"
    op = draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in", "not in"]))
    if op in ("in", "not in") and kind == "list" and draw(st.booleans()):
        # literal on the left, the list attribute on the right
        return f"{_render_literal(draw(STRINGS))} {op} {operand}"
    if op in ("in", "not in"):
        literal = draw(st.one_of(st.lists(_value_of(kind if kind != "list" else "string"),
                                          max_size=3), ANY_LITERAL))
    else:
        literal = draw(st.one_of(_value_of(kind), ANY_LITERAL))
    if draw(st.integers(0, 5)) == 0 and op not in ("in", "not in"):
        return f"{_render_literal(literal)} {op} {operand}"
    return f"{operand} {op} {_render_literal(literal)}"


def _condition(rtype: str, owned: bool, depth: int = 2) -> st.SearchStrategy[Any]:
    atoms: list[st.SearchStrategy[Any]] = [_comparison(rtype)]
    if owned and rtype == "doc":
        atoms.append(st.sampled_from(["owner", "not owner"]))
    atom = st.one_of(*atoms)
    if depth == 0:
        return atom
    inner = _condition(rtype, owned, depth - 1)
    return st.one_of(
        atom, atom,
        st.lists(inner, min_size=1, max_size=3),
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"all": xs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"any": xs}),
        inner.map(lambda x: {"not": x}),
    )


@st.composite
def _rule(draw: st.DrawFn, rtype: str, roles: dict[str, tuple[str, ...]],
          owned: bool) -> dict[str, Any] | None:
    held = [f"{t}.{r}" for t in LINEAGE[rtype] for r in roles[t]]
    deny = draw(st.integers(0, 3)) == 0
    if not held and not deny:
        return None
    rule: dict[str, Any] = {}
    if deny:
        rule["effect"] = "deny"
    if draw(st.integers(0, 3)) == 0:
        rule["actions"] = ["*"]
    else:
        rule["actions"] = draw(st.lists(st.sampled_from(ACTIONS[rtype]), min_size=1,
                                        max_size=len(ACTIONS[rtype]), unique=True))
    if held and (not deny or draw(st.booleans())):
        rule["roles"] = draw(st.lists(st.sampled_from(held), min_size=1, max_size=3,
                                      unique=True))
    if draw(st.integers(0, 2)) > 0 or (deny and "roles" not in rule and draw(st.booleans())):
        rule["when"] = draw(_condition(rtype, owned))
    return rule


@st.composite
def policies(draw: st.DrawFn, with_usage: bool = False) -> PolicyCase:
    roles = {t: tuple(draw(st.lists(st.sampled_from(ROLE_POOL[t]), max_size=len(ROLE_POOL[t]),
                                    unique=True)))
             for t in ("org", "ws", "doc")}
    owned = draw(st.booleans())
    defaults: dict[tuple[str, str], Any] = {}
    for t in ("user", "org", "ws", "doc"):
        for name, kind in ATTRS[t].items():
            if draw(st.integers(0, 3)) == 0:
                value = draw(_value_of(kind))
                defaults[(t, name)] = value
    rules: dict[str, list[dict[str, Any]]] = {}
    for t in ("org", "ws", "doc"):
        drawn = draw(st.lists(_rule(t, roles, owned), max_size=4))
        rules[t] = [r for r in drawn if r is not None]
    case = PolicyCase(roles, owned, defaults, rules)
    if with_usage:
        relations = [f"{t}.{r}" for t in ("ws", "org") for r in roles[t]]
        metrics: dict[str, Any] = {"workspaces": {"count": "ws"}, "docs": {"count": "doc"},
                                   "tags": {"distinct": "tag", "of": "doc"}}
        metrics["accounts"] = {"accounts": "doc",
                               "source_types": {"tenant": ["ga"], "connection": ["asana"],
                                                "url": ["csv"]},
                               "default": draw(st.sampled_from(ACCOUNT_KINDS))}
        for aggregate in RECORDED:
            metrics[f"r_{aggregate}"] = {"recorded": aggregate}
        if relations:
            metrics["people"] = {"members": "email",
                                 "relations": draw(st.lists(st.sampled_from(relations),
                                                            min_size=1, unique=True))}
        case.metrics = metrics
        names = sorted(metrics)
        limits = {n: draw(st.integers(0, 4)) for n in names if draw(st.booleans())}
        case.plans = {"free": {"fallback": True, "limits": limits},
                      "big": {"limits": {n: draw(st.integers(0, 9)) for n in names
                                         if draw(st.booleans())}}}
    return case


@st.composite
def graphs(draw: st.DrawFn, policy: PolicyCase) -> GraphCase:
    rels: set[tuple[str, str, str]] = set()
    attrs: dict[str, dict[str, Any]] = {}
    orgs = ORGS
    workspaces = WORKSPACES[:draw(st.integers(1, len(WORKSPACES)))]
    docs = DOCS[:draw(st.integers(0, len(DOCS)))]
    for w in workspaces:
        rels.add((w, "parent", draw(st.sampled_from(orgs))))
    for d in docs:
        rels.add((d, "parent", draw(st.sampled_from(workspaces))))
        if policy.owned and draw(st.integers(0, 3)) > 0:
            rels.add((d, "owner", draw(st.sampled_from(USERS))))
    for obj in (*orgs, *workspaces, *docs):
        t = _type_of(obj)
        for role in policy.roles[t]:
            for user in draw(st.lists(st.sampled_from(USERS), max_size=2, unique=True)):
                rels.add((obj, role, user))
    for w in workspaces:
        for user in draw(st.lists(st.sampled_from(USERS), max_size=2, unique=True)):
            rels.add((w, "watcher", user))
    for org in orgs:  # a relationship stays within one tenant
        mine = [w for w in workspaces if (w, "parent", org) in rels]
        if mine:
            for w in draw(st.lists(st.sampled_from(mine), max_size=2, unique=True)):
                rels.add((org, "featured", w))
    for obj in (*USERS, *orgs, *workspaces, *docs):
        t = _type_of(obj)
        chosen = {}
        for name, kind in ATTRS[t].items():
            if draw(st.booleans()):
                chosen[name] = draw(_value_of(kind, stored=True))
        if t == "user" and "email" in chosen:
            chosen["email"] = draw(st.sampled_from(["a@x", "A@x", " a@x ", "b@x", "", "user:u0"]))
        if t == "doc" and "source_type" in chosen:
            chosen["source_type"] = draw(st.sampled_from(["ga", "asana", "csv", "other", ""]))
        if t == "doc" and "credential_id" in chosen:
            chosen["credential_id"] = draw(st.sampled_from(["k1", "k2", ""]))
        if t == "org" and "plan" in chosen:
            chosen["plan"] = draw(st.sampled_from(["free", "big", "gold"]))
        if chosen or (t == "org" and draw(st.booleans())):
            attrs[obj] = chosen
    return GraphCase(rels, attrs)


def contexts(nan: bool) -> st.SearchStrategy[dict[str, Any]]:
    values = st.one_of(st.booleans(), INTS, STRINGS,
                       st.lists(st.sampled_from(["a", "b"]), max_size=2),
                       st.sampled_from([0.5, -2.0]),
                       *([st.just(math.nan)] if nan else []))
    return st.dictionaries(st.sampled_from(CONTEXT_KEYS), values, max_size=4)


# -- the reference evaluator ----------------------------------------------------------

def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    return "other"


def _parse_literal(text: str) -> Any:
    text = text.strip()
    if text.startswith("["):
        body = text[1:-1].strip()
        if not body:
            return []
        return [_parse_literal(p) for p in body.split(",")]
    if text.startswith("'"):
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    return float(text) if "." in text or "e" in text else int(text)


OPERATORS = (" not in ", " in ", " == ", " != ", " <= ", " >= ", " < ", " > ")


class Reference:
    """Decides Check by reading the docs literally, against a GraphCase."""

    def __init__(self, policy: PolicyCase, graph: GraphCase) -> None:
        self.policy = policy
        self.graph = graph

    def ancestors(self, resource: str) -> dict[str, str]:
        """type -> object, for the resource and each object up its parent edges."""
        out = {_type_of(resource): resource}
        cur = resource
        for _ in range(10):
            parent = self.graph.parent(cur)
            if parent is None:
                break
            out[_type_of(parent)] = parent
            cur = parent
        return out

    def attribute(self, key: str, name: str) -> Any:
        t = _type_of(key)
        values = self.graph.attrs.get(key, {})
        if name in values:
            return values[name]
        if (t, name) in self.policy.defaults:
            return self.policy.defaults[(t, name)]
        return MISSING

    def operand(self, text: str, subject: str, resource: str, ctx: dict[str, Any]) -> Any:
        scope, dot, name = text.partition(".")
        if dot and scope == "resource":
            return self.attribute(resource, name)
        if dot and scope == "subject":
            return self.attribute(subject, name)
        if dot and scope == "context":
            return ctx.get(name, MISSING)
        return _parse_literal(text)

    def condition(self, spec: Any, subject: str, resource: str,
                  ctx: dict[str, Any]) -> bool | None:
        """True, False or None (unknown)."""
        if isinstance(spec, list):
            return self.condition({"all": spec}, subject, resource, ctx)
        if isinstance(spec, dict):
            (key, value), = spec.items()
            if key == "not":
                inner = self.condition(value, subject, resource, ctx)
                return None if inner is None else not inner
            results = [self.condition(v, subject, resource, ctx) for v in value]
            if key == "all":
                if False in results:
                    return False
                return None if None in results else True
            if True in results:
                return True
            return None if None in results else False
        text = spec.strip()
        if text == "owner":
            return (resource, "owner", subject) in self.graph.rels
        if text == "not owner":
            return (resource, "owner", subject) not in self.graph.rels
        for op in OPERATORS:
            if op in text:
                left, right = text.split(op, 1)
                break
        else:
            raise AssertionError(f"cannot read {text!r}")
        a = self.operand(left, subject, resource, ctx)
        b = self.operand(right, subject, resource, ctx)
        return compare(a, op.strip(), b)

    def rule_applies(self, rtype: str, rule: dict[str, Any], subject: str, resource: str,
                     ctx: dict[str, Any]) -> bool:
        chain = self.ancestors(resource)
        if "roles" in rule:
            holds = False
            for ref in rule["roles"]:
                t, role = ref.split(".")
                obj = chain.get(t)
                if obj is not None and (obj, role, subject) in self.graph.rels:
                    holds = True
            if not holds:
                return False
        if "when" in rule:
            return self.condition(rule["when"], subject, resource, ctx) is True
        return True

    def allowed(self, subject: str, action: str, resource: str,
                ctx: dict[str, Any] | None = None) -> bool:
        rtype = _type_of(resource)
        ctx = ctx or {}
        if not self.graph.exists(resource):
            return False
        rules = [r for r in self.policy.rules.get(rtype, [])
                 if action in self.policy.actions_of(rtype, r)]
        for rule in rules:
            if rule.get("effect") == "deny" and self.rule_applies(rtype, rule, subject,
                                                                   resource, ctx):
                return False
        return any(rule.get("effect", "allow") == "allow"
                   and self.rule_applies(rtype, rule, subject, resource, ctx)
                   for rule in rules)


def compare(a: Any, op: str, b: Any) -> bool | None:
    """One comparison as the docs state it: missing or incomparable values are unknown;
    order is defined between numbers and between strings; NaN compares with nothing."""
    if a is MISSING or b is MISSING:
        return None
    if isinstance(a, float) and math.isnan(a):
        return None
    if op in ("in", "not in"):
        if not isinstance(b, list):
            return None
        found = any(_kind(a) == _kind(x) and a == x for x in b)
        return found if op == "in" else not found
    if isinstance(b, float) and math.isnan(b):
        return None
    if _kind(a) != _kind(b):
        return None
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if _kind(a) not in ("number", "string"):
        return None
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
