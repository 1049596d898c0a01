"""The condition language of permission rules (``when:``).

A condition is one of::

    owner                               the subject owns the resource
    not owner
    resource.shared == true             compare an attribute with a literal
    context.ip_country in ["DE", "FR"]  request context (CheckRequest.context)
    subject.email != ''                 the subject's own attributes
    {all: [c1, c2]}  {any: [c1, c2]}  {not: c}   (a plain list means all)

Operators: ``== != < <= > >= in``, and ``not in``. Literals: true, false,
numbers, quoted strings and [lists] of them.

Semantics fail closed, with three values: a comparison whose attribute is
missing (and has no declared default) or whose values have incomparable
types is *unknown*, for ``!=`` too (so is any comparison with NaN, and
``<``/``>`` between anything but two numbers or two strings); ``not`` of unknown is unknown; ``all``
and ``any`` follow Kleene logic; and a rule applies only when its condition
is true. So a missing fact never grants anything, even under ``not``. (For
deny rules this means a missing fact does not deny either: declare a
default for attributes that deny rules test.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from gatehouse.errors import quote
from gatehouse.policy.model import OWNER, Attribute, Condition, Facts, TypeDef
from gatehouse.policy.sections import is_number, listed
from gatehouse.sourcemap import MAX_EXACT_INT

_MISSING = object()

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<num>-?[0-9]+(?:\.[0-9]+)?)
    | (?P<op>==|!=|<=|>=|<|>)
    | (?P<punct>[\[\],])
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)
    )""",
    re.VERBOSE,
)

Getter = Callable[[str, str, Facts, Mapping[str, Any]], Any]


class ConditionError(ValueError):
    """A condition that does not compile; the message names what is wrong."""

    def __init__(self, message: str, subpath: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.subpath = subpath


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ConditionError(f"cannot read {quote(text[pos:].strip())} in condition "
                                 f"{quote(text)}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
_ESCAPE = re.compile(r"\\(.)")


def _unescape(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        char = m.group(1)
        if char not in _ESCAPES:
            raise ConditionError(f"unknown escape '\\{char}' in a string "
                                 "(known: \\\\ \\' \\\" \\n \\t \\r)")
        return _ESCAPES[char]

    return _ESCAPE.sub(one, body)


def _literal(tokens: list[tuple[str, str]], i: int) -> tuple[Any, int]:
    kind, value = tokens[i]
    if kind == "str":
        return _unescape(value[1:-1]), i + 1
    if kind == "num":
        # Digits are ASCII only (the pattern says [0-9], not \d, which would read
        # Arabic-Indic or fullwidth digits as numbers too); past 40 digits a number
        # is far out of range, and int() of a long digit string is itself slow.
        number = math.inf if len(value) > 40 else float(value) if "." in value else int(value)
        if not is_number(number):
            raise ConditionError(f"number {quote(value)} is out of range (numbers are at most "
                                 f"{MAX_EXACT_INT} in size)")
        return number, i + 1
    if kind == "word" and value in ("true", "false"):
        return value == "true", i + 1
    if kind == "punct" and value == "[":
        items: list[Any] = []
        i += 1
        while i < len(tokens) and tokens[i] != ("punct", "]"):
            item, i = _literal(tokens, i)
            if isinstance(item, list):
                raise ConditionError("lists may not nest")
            items.append(item)
            if i < len(tokens) and tokens[i] == ("punct", ","):
                i += 1
        if i >= len(tokens):
            raise ConditionError("list is not closed with ']'")
        return items, i + 1
    raise ConditionError(f"expected a value, found {quote(value)}")


class _Compiler:
    def __init__(self, rtype: TypeDef, types: Mapping[str, TypeDef], subject_types: set[str]):
        self.rtype = rtype
        self.types = types
        self.subject_types = subject_types

    def compile(self, spec: Any) -> tuple[Condition, str]:
        if isinstance(spec, str):
            return self._string(spec), spec
        if isinstance(spec, list):
            return self._combine("all", spec, ())
        if isinstance(spec, dict):
            if len(spec) != 1:
                raise ConditionError("a condition mapping has exactly one key: all, any or not")
            (key, value), = spec.items()
            if key in ("all", "any"):
                if not isinstance(value, list) or not value:
                    raise ConditionError(f"'{key}' takes a non-empty list", (key,))
                return self._combine(key, value, (key,))
            if key == "not":
                try:
                    inner, text = self.compile(value)
                except ConditionError as exc:
                    raise ConditionError(str(exc), ("not", *exc.subpath)) from None
                return _negate(inner), f"not ({text})"
            raise ConditionError(f"unknown condition key {quote(key)} (known: all, any, not)",
                                 (key,))
        raise ConditionError("a condition is a string, a list, or {all|any|not: ...}")

    def _combine(
        self, mode: str, items: list[Any], base: tuple[str | int, ...]
    ) -> tuple[Condition, str]:
        parts: list[Condition] = []
        texts: list[str] = []
        for i, item in enumerate(items):
            try:
                cond, text = self.compile(item)
            except ConditionError as exc:
                raise ConditionError(str(exc), (*base, i, *exc.subpath)) from None
            parts.append(cond)
            texts.append(text)
        conds = tuple(parts)
        joiner = " and " if mode == "all" else " or "
        text = joiner.join(f"({t})" if " " in t else t for t in texts)
        return (_all(conds) if mode == "all" else _any(conds)), text

    def _string(self, text: str) -> Condition:
        stripped = text.strip()
        if stripped == OWNER:
            return self._owner()
        if stripped == f"not {OWNER}":
            return _negate(self._owner())
        tokens = _tokens(stripped)
        if not tokens:
            raise ConditionError("empty condition")
        left, i = self._operand(tokens, 0)
        if i >= len(tokens):
            raise ConditionError(f"{quote(stripped)} has no operator (expected ==, !=, <, in, ...)")
        op = tokens[i][1]
        if tokens[i] == ("word", "not") and i + 1 < len(tokens) and tokens[i + 1] == ("word", "in"):
            op, i = "not in", i + 2
        elif tokens[i][0] == "op" or tokens[i] == ("word", "in"):
            i += 1
        else:
            raise ConditionError(f"expected an operator after the left side, found {quote(op)}")
        if i >= len(tokens):
            raise ConditionError(f"{quote(stripped)} has nothing after {quote(op)}")
        right, i = self._operand(tokens, i)
        if i != len(tokens):
            raise ConditionError(f"unexpected {quote(tokens[i][1])} after the condition")
        return _comparison(op, left, right)

    def _owner(self) -> Condition:
        if not self.rtype.owned:
            raise ConditionError(
                f"'owner' needs a type declared 'owned: true'; {quote(self.rtype.name)} is not"
            )
        return lambda s, r, f, c: f.holds(r, OWNER, s)

    def _operand(self, tokens: list[tuple[str, str]], i: int) -> tuple[Getter, int]:
        kind, value = tokens[i]
        if kind == "word" and "." in value:
            scope, name = value.split(".", 1)
            if scope == "resource":
                return self._attribute_getter(self.rtype, name, resource=True), i + 1
            if scope == "subject":
                attr = None
                for st in sorted(self.subject_types):
                    attr = self.types[st].attributes.get(name) or attr
                if attr is None:
                    raise ConditionError(
                        f"no subject type declares attribute {quote(name)}"
                    )
                return self._attr(attr, resource=False), i + 1
            if scope == "context":
                return (lambda s, r, f, c: c.get(name, _MISSING)), i + 1
            raise ConditionError(
                f"unknown operand {quote(value)} "
                "(use resource.<attr>, subject.<attr>, context.<key>)"
            )
        value_, j = _literal(tokens, i)
        return (lambda s, r, f, c: value_), j

    def _attribute_getter(self, tdef: TypeDef, name: str, *, resource: bool) -> Getter:
        attr = tdef.attributes.get(name)
        if attr is None:
            known = listed(tdef.attributes)
            raise ConditionError(
                f"type {quote(tdef.name)} has no attribute {quote(name)} (declared: {known})"
            )
        return self._attr(attr, resource=resource)

    @staticmethod
    def _attr(attr: Attribute, *, resource: bool) -> Getter:
        name = attr.name
        default = attr.default if attr.has_default else _MISSING
        if resource:
            return lambda s, r, f, c: f.attributes(r).get(name, default)
        return lambda s, r, f, c: f.attributes(s).get(name, default)


def _comparable(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return True
    return type(a) is type(b)


def _is_nan(value: Any) -> bool:
    """NaN (which the wire and the policy reader refuse, but a caller in process could
    pass) equals nothing and is ordered against nothing: any comparison with it is
    unknown, so ``!=`` and ``not in`` cannot turn it into a grant."""
    return isinstance(value, float) and math.isnan(value)


def _ordered(value: Any) -> bool:
    return isinstance(value, int | float | str) and not isinstance(value, bool)


def _negate(inner: Condition) -> Condition:
    def negated(s: str, r: str, f: Facts, c: Mapping[str, Any]) -> bool | None:
        value = inner(s, r, f, c)
        return None if value is None else not value

    return negated


def _all(parts: tuple[Condition, ...]) -> Condition:
    def every(s: str, r: str, f: Facts, c: Mapping[str, Any]) -> bool | None:
        unknown = False
        for part in parts:
            value = part(s, r, f, c)
            if value is False:
                return False
            if value is None:
                unknown = True
        return None if unknown else True

    return every


def _any(parts: tuple[Condition, ...]) -> Condition:
    def some(s: str, r: str, f: Facts, c: Mapping[str, Any]) -> bool | None:
        unknown = False
        for part in parts:
            value = part(s, r, f, c)
            if value is True:
                return True
            if value is None:
                unknown = True
        return None if unknown else False

    return some


def _comparison(op: str, left: Getter, right: Getter) -> Condition:
    """A comparison is unknown (None) when a side is missing or the values are not
    comparable; unknown stays unknown under not/all/any and never grants."""

    def compare(s: str, r: str, f: Facts, c: Mapping[str, Any]) -> bool | None:
        a = left(s, r, f, c)
        b = right(s, r, f, c)
        if a is _MISSING or b is _MISSING or _is_nan(a) or _is_nan(b):
            return None
        if op in ("in", "not in"):
            if not isinstance(b, list):
                return None
            found = any(_comparable(a, x) and a == x for x in b)
            return found if op == "in" else not found
        if not _comparable(a, b):
            return None
        if op not in ("==", "!=") and not _ordered(a):
            return None  # order is defined between numbers and between strings only
        try:
            if op == "==":
                return bool(a == b)
            if op == "!=":
                return bool(a != b)
            if op == "<":
                return bool(a < b)
            if op == "<=":
                return bool(a <= b)
            if op == ">":
                return bool(a > b)
            if op == ">=":
                return bool(a >= b)
        except TypeError:
            return None
        return None

    return compare


def compile_condition(
    spec: Any, rtype: TypeDef, types: Mapping[str, TypeDef], subject_types: set[str]
) -> tuple[Condition, str]:
    """Compile ``spec`` for rules on ``rtype``. Raises ConditionError."""
    return _Compiler(rtype, types, subject_types).compile(spec)
