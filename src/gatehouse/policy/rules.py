"""Compile the write rules every store enforces: tenant scopes and constraints."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from gatehouse.policy.model import CHILD, GLOBAL, ROOT, Constraint, TypeDef, WriteRules


def scope_kinds(types: Mapping[str, TypeDef]) -> dict[str, str]:
    """A type with a parent lives in its parent's scope; a parentless type that is
    some type's parent is a tenant root; anything else (users) is global."""
    parents = {t.parent for t in types.values() if t.parent}
    kinds: dict[str, str] = {}
    for name, tdef in types.items():
        if tdef.parent:
            kinds[name] = CHILD
        elif name in parents:
            kinds[name] = ROOT
        else:
            kinds[name] = GLOBAL
    return kinds


def write_rules(types: Mapping[str, TypeDef], constraints: tuple[Constraint, ...] = ()
                ) -> WriteRules:
    return WriteRules(MappingProxyType(scope_kinds(types)), constraints)
