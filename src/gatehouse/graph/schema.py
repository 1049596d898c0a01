"""Check objects and relationships against the types a policy declares.

Used for every write path (data files, test suites, GraphService) so the
graph can only ever hold facts the policy can interpret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gatehouse.errors import quote, shown
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.policy.model import CompiledPolicy


def _known(items: Any) -> str:
    return ", ".join(sorted(items)) or "none"


def object_problems(policy: CompiledPolicy, ref: ObjectRef, attributes: Any) -> list[str]:
    tdef = policy.types.get(ref.type)
    if tdef is None:
        return [f"unknown type {ref.type!r} (declared: {_known(policy.types)})"]
    if attributes is None:
        return []
    if not isinstance(attributes, Mapping):
        return ["attributes must be a mapping of name: value"]
    out: list[str] = []
    for name, value in attributes.items():
        attr = tdef.attributes.get(name)
        if attr is None:
            out.append(f"type {ref.type!r} has no attribute {shown(name)} "
                       f"(declared: {_known(tdef.attributes)})")
        elif not attr.accepts(value):
            out.append(f"attribute {name!r} of {ref.type!r} is a {attr.type}, "
                       f"not {shown(value)}")
        elif isinstance(value, str):
            why = attr.rule_problem(value)
            if why is not None:
                out.append(f"attribute {name!r} of {ref.type!r}: {quote(value)} {why}")
    return out


def relationship_problem(policy: CompiledPolicy, rel: Relationship) -> str | None:
    found = relationship_fault(policy, rel)
    return found[1] if found is not None else None


def relationship_fault(policy: CompiledPolicy, rel: Relationship) -> tuple[str, str] | None:
    """(the part of the relationship at fault, the problem), or None if the policy's
    types allow ``rel``. The part is ``resource.type``, ``relation`` or
    ``subject.type``, so a request's refusal can name its exact field."""
    tdef = policy.types.get(rel.resource.type)
    if tdef is None:
        return "resource.type", (f"unknown type {quote(rel.resource.type)} "
                                 f"(declared: {_known(policy.types)})")
    allowed = tdef.relations.get(rel.relation)
    if allowed is None:
        return "relation", (f"type {rel.resource.type!r} has no relation {quote(rel.relation)} "
                            f"(known: {_known(tdef.relations)})")
    if rel.subject.type not in policy.types:
        return "subject.type", (f"unknown subject type {quote(rel.subject.type)} "
                                f"(declared: {_known(policy.types)})")
    if rel.subject.type not in allowed:
        return "subject.type", (f"{rel.resource.type}#{rel.relation} takes subjects of type "
                                f"{_known(allowed)}, not {quote(rel.subject.type)}")
    return None
