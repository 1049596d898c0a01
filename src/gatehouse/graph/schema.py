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
    tdef = policy.types.get(rel.resource.type)
    if tdef is None:
        return f"unknown type {rel.resource.type!r} (declared: {_known(policy.types)})"
    allowed = tdef.relations.get(rel.relation)
    if allowed is None:
        return (f"type {rel.resource.type!r} has no relation {rel.relation!r} "
                f"(known: {_known(tdef.relations)})")
    if rel.subject.type not in policy.types:
        return f"unknown subject type {rel.subject.type!r} (declared: {_known(policy.types)})"
    if rel.subject.type not in allowed:
        return (f"{rel.resource.type}#{rel.relation} takes subjects of type "
                f"{_known(allowed)}, not {rel.subject.type!r}")
    return None
