"""Values of the relationship graph.

Objects are ``type:id``; relationships are written in Zanzibar notation,
``resource_type:resource_id#relation@subject_type:subject_id``. Inside the
process an object is carried as its canonical string key ``"type:id"``: keys
are hashed once, interned, and compared by identity on the hot path.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gatehouse.errors import InvalidArgument

TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-=+/|]{0,255}$")
RELATION_RE = TYPE_RE

AttributeValue = bool | int | float | str | list[str]


def validate_type(value: str, field_name: str) -> str:
    if not value:
        raise InvalidArgument(field_name, "is required")
    if not TYPE_RE.fullmatch(value):
        raise InvalidArgument(
            field_name, f"{value!r} is not a type name (lowercase letters, digits, '_')"
        )
    return value


def validate_id(value: str, field_name: str) -> str:
    if not value:
        raise InvalidArgument(field_name, "is required")
    if not ID_RE.fullmatch(value):
        raise InvalidArgument(
            field_name,
            f"{value!r} is not a valid id (1-256 of letters, digits and _ . - = + / |;"
            " it may not start with punctuation)",
        )
    return value


def object_key(type_: str, id_: str) -> str:
    """The canonical interned key of an object."""
    return sys.intern(f"{type_}:{id_}")


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    type: str
    id: str

    @property
    def key(self) -> str:
        return object_key(self.type, self.id)

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"

    @classmethod
    def parse(cls, text: str, field_name: str = "object") -> ObjectRef:
        type_, sep, id_ = text.partition(":")
        if not sep:
            raise InvalidArgument(field_name, f"{text!r} is not of the form type:id")
        return cls(validate_type(type_, field_name + ".type"), validate_id(id_, field_name + ".id"))


@dataclass(frozen=True, slots=True, order=True)
class Relationship:
    """``resource#relation@subject``."""

    resource: ObjectRef
    relation: str
    subject: ObjectRef

    def __str__(self) -> str:
        return f"{self.resource}#{self.relation}@{self.subject}"

    @classmethod
    def parse(cls, text: str, field_name: str = "relationship") -> Relationship:
        text = text.strip()
        left, at, subject = text.partition("@")
        resource, hash_, relation = left.partition("#")
        if not at or not hash_:
            raise InvalidArgument(
                field_name, f"{text!r} is not of the form type:id#relation@type:id"
            )
        if not RELATION_RE.fullmatch(relation):
            raise InvalidArgument(field_name, f"{relation!r} is not a relation name")
        return cls(
            ObjectRef.parse(resource, field_name + ".resource"),
            relation,
            ObjectRef.parse(subject, field_name + ".subject"),
        )


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """An object with its attributes."""

    ref: ObjectRef
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every object and relationship of the graph at one revision.

    Relationships come either as values (``relationships``) or, from stores
    that read them in bulk, as ``(resource key, relation, subject key)``
    triples (``edges``), which avoids building a million small objects.
    """

    revision: int
    objects: tuple[ObjectRecord, ...]
    relationships: tuple[Relationship, ...] = ()
    # Identifies the store's data set; a change means the data was lost or
    # replaced and anything derived from it must be rebuilt.
    epoch: str = ""
    edges: tuple[tuple[str, str, str], ...] = ()

    def iter_edges(self) -> Iterator[tuple[str, str, str]]:
        for rel in self.relationships:
            yield rel.resource.key, rel.relation, rel.subject.key
        yield from self.edges

    def all_relationships(self) -> list[Relationship]:
        out = list(self.relationships)
        for res, relation, subj in self.edges:
            out.append(Relationship(ObjectRef(*res.split(":", 1)), relation,
                                    ObjectRef(*subj.split(":", 1))))
        return sorted(out)
