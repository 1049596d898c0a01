"""Values of the relationship graph.

Objects are ``type:id``; relationships are written in Zanzibar notation,
``resource_type:resource_id#relation@subject_type:subject_id``. Inside the
process an object is carried as its canonical string key ``"type:id"``: keys
are hashed once, interned, and compared by identity on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gatehouse.errors import InvalidArgument, quote
from gatehouse.names import RELATION_RE, object_key, split_key, validate_id, validate_type


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    """An object, ``type:id``; its :attr:`key` is the form the index and stores use."""

    type: str
    id: str
    key: str = field(init=False, repr=False, compare=False)
    """``type:id``, interned; computed once (stores, the index and the write path read it
    several times per operation)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", object_key(self.type, self.id))

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"

    @classmethod
    def from_key(cls, key: str) -> ObjectRef:
        """The reference of a key read back from a store or the index (not validated)."""
        return cls(*split_key(key))

    @classmethod
    def parse(cls, text: str, field_name: str = "object") -> ObjectRef:
        if ":" not in text:
            raise InvalidArgument(field_name, f"{quote(text)} is not of the form type:id")
        type_, id_ = split_key(text)
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
                field_name, f"{quote(text)} is not of the form type:id#relation@type:id"
            )
        if not RELATION_RE.fullmatch(relation):
            raise InvalidArgument(field_name, f"{quote(relation)} is not a relation name")
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
            out.append(Relationship(ObjectRef(*split_key(res)), relation,
                                    ObjectRef(*split_key(subj))))
        return sorted(out)
