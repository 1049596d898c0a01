"""Write operations and the changes a store reports after applying them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gatehouse.graph.model import ObjectRef, Relationship


@dataclass(frozen=True, slots=True)
class TouchRelationship:
    """Create the relationship, or leave it as it is if it exists."""

    relationship: Relationship


@dataclass(frozen=True, slots=True)
class DeleteRelationship:
    relationship: Relationship


@dataclass(frozen=True, slots=True)
class PutObject:
    """Create the object or replace its attributes."""

    ref: ObjectRef
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeleteObject:
    ref: ObjectRef


Operation = TouchRelationship | DeleteRelationship | PutObject | DeleteObject


@dataclass(frozen=True, slots=True)
class Change:
    """The operations one committed write applied, at its revision."""

    revision: int
    ops: tuple[Operation, ...]
    # When the store committed it (Unix seconds), where the store records it.
    committed_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Precondition:
    """A relationship that must (or must not) exist when a write commits."""

    relationship: Relationship
    must_exist: bool


@dataclass(frozen=True, slots=True)
class TenantUnchanged:
    """Commit only if no write touched the tenant after ``revision``.

    ``tenant`` is the key of the tenant's root object (``organization:acme``).
    An operation that decided from the graph at ``revision`` commits with this
    precondition, so what it decided still holds when the write lands; if the
    tenant changed meanwhile the write is refused (Aborted) and the operation
    decides again.
    """

    tenant: str
    revision: int


WritePrecondition = Precondition | TenantUnchanged
