"""The compiled policy: immutable tables the engine reads on every decision."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

PARENT = "parent"
OWNER = "owner"


class Facts(Protocol):
    """What a condition may read about the graph (the index implements it)."""

    def attributes(self, key: str) -> Mapping[str, Any]: ...

    def holds(self, obj: str, relation: str, subject: str) -> bool: ...


# A compiled condition: (subject key, resource key, facts, request context) -> bool.
Condition = Callable[[str, str, Facts, Mapping[str, Any]], bool]


class Effect(Enum):
    ALLOW = "allow"
    DENY = "deny"


ATTRIBUTE_TYPES = ("bool", "int", "number", "string", "list")


@dataclass(frozen=True, slots=True)
class Attribute:
    name: str
    type: str
    default: Any = None
    has_default: bool = False

    def accepts(self, value: Any) -> bool:
        if self.type == "bool":
            return isinstance(value, bool)
        if self.type == "int":
            return isinstance(value, int) and not isinstance(value, bool)
        if self.type == "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        if self.type == "string":
            return isinstance(value, str)
        if self.type == "list":
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        return False


@dataclass(frozen=True, slots=True)
class TypeDef:
    """One declared object type."""

    name: str
    parent: str | None
    subject: bool
    owned: bool
    roles: frozenset[str]
    actions: tuple[str, ...]
    attributes: Mapping[str, Attribute]
    # Every relation an object of this type may have, with its allowed subject
    # types: parent, owner (if owned), each role, each declared relation.
    relations: Mapping[str, frozenset[str]]
    # This type and its ancestors' types, nearest first.
    lineage: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoleRef:
    """A role held on the resource itself or on one of its ancestors."""

    type: str
    relation: str

    def __str__(self) -> str:
        return f"{self.type}.{self.relation}"


@dataclass(frozen=True, slots=True)
class Rule:
    effect: Effect
    actions: frozenset[str]
    # Empty only for deny rules that apply to any subject.
    roles: tuple[RoleRef, ...]
    condition: Condition | None
    condition_text: str
    # "policy.yaml:31:7 permissions.data_flow[1]" — where the rule was written.
    source: str


@dataclass(frozen=True, slots=True)
class ActionTable:
    """Everything needed to decide one (resource type, action) pair."""

    denies: tuple[Rule, ...]
    # Unconditional grants merged by ancestor type: ((type, relations), ...).
    direct: tuple[tuple[str, frozenset[str]], ...]
    conditional: tuple[Rule, ...]
    # All allow rules in source order, for explanations.
    grants: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str
    version: str
    types: Mapping[str, TypeDef]
    subject_types: frozenset[str]
    tables: Mapping[str, Mapping[str, ActionTable]]
    files: tuple[str, ...]
