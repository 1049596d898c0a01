"""The rules every graph store enforces on every write, compiled from the policy:
tenant scopes, the relations each type may hold, and the constraint values
(their compiler is :mod:`gatehouse.policy.constraints`).

A store knows nothing else about the policy: for each type, how an object of
it finds its tenant scope and which relations it may hold; and the policy's
constraints. The graph layer imports these; this module imports nothing
from the graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gatehouse.policy.model import TypeDef

@dataclass(frozen=True, slots=True)
class Exclusive:
    """No subject holds relations from both sides within one tenant scope."""

    name: str
    left: frozenset[str]  # "type.relation"
    right: frozenset[str]


@dataclass(frozen=True, slots=True)
class Unique:
    """At most one object of ``type`` per tenant scope holds ``relation``."""

    name: str
    type: str
    relation: str


@dataclass(frozen=True, slots=True)
class MaxSubjects:
    """At most ``limit`` subjects per object of ``type`` hold ``relation``."""

    name: str
    type: str
    relation: str
    limit: int


@dataclass(frozen=True, slots=True)
class PerSubject:
    """Within one tenant scope a subject holds ``relation`` on at most ``limit`` objects
    of ``type``."""

    name: str
    type: str
    relation: str
    limit: int


@dataclass(frozen=True, slots=True)
class Requires:
    """A subject holding any of ``relations`` in a tenant scope holds one of ``needs``
    on the tenant root (``needs`` are relations of the root type)."""

    name: str
    relations: frozenset[str]  # "type.relation"
    needs: frozenset[str]  # "root_type.relation"


@dataclass(frozen=True, slots=True)
class MinSubjects:
    """An object of ``type`` that has at least ``count`` subjects on ``relation`` keeps
    that many, unless the batch deletes the object itself."""

    name: str
    type: str
    relation: str
    count: int


@dataclass(frozen=True, slots=True)
class MinChildren:
    """A tenant that holds at least ``count`` objects of ``type`` (placed by their
    parent edge) keeps that many."""

    name: str
    type: str
    count: int


Constraint = Exclusive | Unique | MaxSubjects | PerSubject | Requires | MinSubjects | MinChildren


@dataclass(frozen=True, slots=True)
class AttributeRule:
    """What a store enforces about one attribute of a type on every write."""

    attribute: str
    # Once an object has a value for it, a put may not change or drop it.
    immutable: bool = False
    # No two objects of the type in one tenant scope hold the same (string) value.
    unique: bool = False


# How an object's tenant scope is found, by its type:
ROOT = "root"  # the object is a tenant root (organization): its own scope
CHILD = "child"  # the object lives in its parent's scope (parent must be written first)
GLOBAL = "global"  # no tenant (users): the global scope


@dataclass(frozen=True, slots=True)
class WriteRules:
    """What every store enforces on every write, compiled from the policy."""

    scope_kind: Mapping[str, str]
    constraints: tuple[Constraint, ...] = ()
    # type -> every relation an object of that type may hold as a resource. A
    # store counts an object's remaining relationships through these when the
    # object is deleted (see docs/storage.md, "Deleting an object").
    relations: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: MappingProxyType({}))
    # type -> its attributes that are immutable or unique; only types with such
    # rules appear, so a put of any other type skips these checks.
    attribute_rules: Mapping[str, tuple[AttributeRule, ...]] = field(
        default_factory=lambda: MappingProxyType({}))


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
    """The store-facing rules of a policy's types and constraints."""
    relations = {name: frozenset(tdef.relations) for name, tdef in types.items()}
    attribute_rules: dict[str, tuple[AttributeRule, ...]] = {}
    for name, tdef in types.items():
        found = tuple(AttributeRule(a.name, a.immutable, a.unique_within is not None)
                      for _, a in sorted(tdef.attributes.items())
                      if a.immutable or a.unique_within is not None)
        if found:
            attribute_rules[name] = found
    return WriteRules(MappingProxyType(scope_kinds(types)), constraints,
                      MappingProxyType(relations), MappingProxyType(attribute_rules))
