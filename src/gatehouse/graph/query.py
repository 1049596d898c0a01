"""Reading relationships from the index by filter, in a stable order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gatehouse.graph.index import GraphIndex
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.names import object_key, split_key, type_of


@dataclass(frozen=True, slots=True)
class RelationshipFilter:
    """Empty fields match anything; ``resource_type`` is required."""

    resource_type: str
    resource_id: str = ""
    relation: str = ""
    subject_type: str = ""
    subject_id: str = ""

    def matches(self, res: str, relation: str, subj: str) -> bool:
        r_type, r_id = split_key(res)
        s_type, s_id = split_key(subj)
        return (
            r_type == self.resource_type
            and (not self.resource_id or r_id == self.resource_id)
            and (not self.relation or relation == self.relation)
            and (not self.subject_type or s_type == self.subject_type)
            and (not self.subject_id or s_id == self.subject_id)
        )


def _candidates(index: GraphIndex, f: RelationshipFilter) -> Iterator[tuple[str, str, str]]:
    if f.resource_id:
        res = object_key(f.resource_type, f.resource_id)
        for relation, subjects in index.forward.get(res, {}).items():
            for subj in subjects:
                yield res, relation, subj
    elif f.subject_type and f.subject_id:
        subj = object_key(f.subject_type, f.subject_id)
        for res, held in index.held.get(subj, {}).items():
            for relation in held:
                yield res, relation, subj
    else:
        for res, relations in index.forward.items():
            if type_of(res) != f.resource_type:
                continue
            for relation, subjects in relations.items():
                for subj in subjects:
                    yield res, relation, subj


def read_relationships(
    index: GraphIndex, f: RelationshipFilter, after: tuple[str, str, str] | None, limit: int,
    keep: Callable[[str], bool] | None = None,
) -> tuple[list[Relationship], tuple[str, str, str] | None]:
    """One page of matches after ``after`` in (resource, relation, subject) order.

    ``keep``, if given, narrows the matches to relationships whose resource key it
    accepts (a tenant-bound caller's organizations), before the page is cut, so
    a page is as full as an unrestricted one. Returns the page and the key to
    continue after, or None when complete.
    """
    keys = sorted(
        k for k in _candidates(index, f) if f.matches(*k) and (after is None or k > after)
        and (keep is None or keep(k[0]))
    )
    page = keys[:limit]
    rels = [Relationship(ObjectRef.from_key(r), rel, ObjectRef.from_key(s)) for r, rel, s in page]
    more = len(keys) > limit
    return rels, (page[-1] if more and page else None)
