"""Check: may this subject do this action on this resource?

Order of evaluation: an unknown resource is denied; any matching deny rule
denies; then unconditional grants (one set test per ancestor type), then
conditional grants; nothing matching denies. Any exception inside a
condition denies too — the engine fails closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gatehouse.errors import InvalidArgument, quote
from gatehouse.graph.index import GraphIndex
from gatehouse.names import object_key, validate_id, validate_type
from gatehouse.policy.model import CompiledPolicy, Rule

_NO_CONTEXT: Mapping[str, Any] = {}


def validate_request(
    policy: CompiledPolicy,
    subject_type: str,
    subject_id: str,
    action: str,
    resource_type: str,
    resource_id: str,
    prefix: str = "",
    resource_type_field: str = "resource.type",
) -> tuple[str, str]:
    """Check a request's names against the policy; return (subject key, resource key).

    Raises InvalidArgument naming the field (``subject.type``, ``action``, ...);
    ``resource_type_field`` is what the request calls the resource type
    (ListAccessible's is ``resource_type``).
    """
    # Names the policy declares are valid by construction: only unknown ones need
    # the syntax check (which gives the more precise message).
    if subject_type not in policy.subject_types:
        validate_type(subject_type, prefix + "subject.type")
        raise InvalidArgument(
            prefix + "subject.type",
            f"{subject_type!r} is not a subject type (subject types: "
            f"{', '.join(sorted(policy.subject_types))})",
        )
    validate_id(subject_id, prefix + "subject.id")
    tdef = policy.types.get(resource_type)
    if tdef is None:
        validate_type(resource_type, prefix + resource_type_field)
        raise InvalidArgument(
            prefix + resource_type_field,
            f"unknown type {resource_type!r} (declared: {', '.join(sorted(policy.types))})",
        )
    validate_id(resource_id, prefix + "resource.id")
    if not action:
        raise InvalidArgument(prefix + "action", "is required")
    if action not in policy.tables[resource_type]:
        raise InvalidArgument(
            prefix + "action",
            f"unknown action {quote(action)} for {resource_type!r} "
            f"(known: {', '.join(tdef.actions) or 'none'})",
        )
    return object_key(subject_type, subject_id), object_key(resource_type, resource_id)


def _holds_role(rule: Rule, resource_type: str, resource: str, up: Mapping[str, str],
                held: Mapping[str, Any] | None) -> bool:
    if held is None:
        return False
    for ref in rule.roles:
        anc = resource if ref.type == resource_type else up.get(ref.type)
        if anc is not None:
            on = held.get(anc)
            if on is not None and ref.relation in on:
                return True
    return False


def _applies(
    rule: Rule,
    resource_type: str,
    up: Mapping[str, str],
    held: Mapping[str, Any] | None,
    index: GraphIndex,
    subject: str,
    resource: str,
    context: Mapping[str, Any],
) -> bool:
    if rule.roles and not _holds_role(rule, resource_type, resource, up, held):
        return False
    cond = rule.condition
    return cond is None or cond(subject, resource, index, context) is True


def check(
    policy: CompiledPolicy,
    index: GraphIndex,
    subject: str,
    action: str,
    resource_type: str,
    resource: str,
    context: Mapping[str, Any] | None = None,
) -> bool:
    """True if allowed. Keys are ``type:id``; the request must be validated."""
    table = policy.tables[resource_type].get(action)
    up = index.up.get(resource)
    if table is None or up is None:
        return False
    held = index.held.get(subject)
    if held is None:
        return False  # every grant needs a role, and the subject holds none
    ctx = context if context is not None else _NO_CONTEXT
    try:
        for rule in table.denies:
            if _applies(rule, resource_type, up, held, index, subject, resource, ctx):
                return False
        for anc_type, relations, is_self in table.direct:
            anc = resource if is_self else up.get(anc_type)
            if anc is not None:
                on = held.get(anc)
                if on is not None and not relations.isdisjoint(on):
                    return True
        for rule in table.conditional:
            if _applies(rule, resource_type, up, held, index, subject, resource, ctx):
                return True
    except Exception:  # a condition blew up: never allow because of an error
        return False
    return False


@dataclass(slots=True)
class Explanation:
    allowed: bool
    summary: str
    trace: list[str] = field(default_factory=list)


def _roles_held(rule: Rule, chain: Mapping[str, str], index: GraphIndex,
                subject: str) -> list[str]:
    held = []
    for ref in rule.roles:
        anc = chain.get(ref.type)
        if anc is not None and index.holds(anc, ref.relation, subject):
            held.append(f"{ref} on {anc}")
    return held


def explain(
    policy: CompiledPolicy,
    index: GraphIndex,
    subject: str,
    action: str,
    resource_type: str,
    resource: str,
    context: Mapping[str, Any] | None = None,
) -> Explanation:
    """Decide like :func:`check`, and say which rules were considered and why.

    The decision must equal ``check``'s; the test suite compares them.
    """
    ctx = context if context is not None else _NO_CONTEXT
    head = f"{subject} {action} {resource}"
    table = policy.tables[resource_type].get(action)
    chain = index.chain(resource)
    if table is None or chain is None:
        return Explanation(False, f"deny: {resource} is not in the graph", [head])
    trace = [head, "ancestors: " + " -> ".join(chain.values())]
    if not table.grants and not table.denies:
        trace.append(f"no rule grants {action!r} on {resource_type!r}")
    verdict: Explanation | None = None
    for rule in (*table.denies, *table.grants):
        kind = rule.effect.value
        roles = ", ".join(str(r) for r in rule.roles) or "any subject"
        held = _roles_held(rule, chain, index, subject)
        line = f"{kind} rule {rule.source} [{roles}]"
        if rule.roles and not held:
            trace.append(f"{line}: not applicable, subject holds none of these roles")
            continue
        if held:
            line += f" held: {'; '.join(held)}"
        if rule.condition is not None:
            try:
                value = rule.condition(subject, resource, index, ctx)
            except Exception as exc:
                # check() denies outright when a condition raises; so does explain.
                trace.append(f"{line}: condition `{rule.condition_text}` failed ({exc}): DENY")
                return Explanation(False, f"deny: condition of {rule.source} failed", trace)
            if value is not True:
                state = "false" if value is False else "unknown (a fact it tests is missing)"
                trace.append(f"{line}: condition `{rule.condition_text}` is {state}")
                continue
            line += f", condition `{rule.condition_text}` is true"
        trace.append(f"{line}: APPLIES")
        if verdict is None:
            allowed = kind == "allow"
            verdict = Explanation(allowed, f"{'allow' if allowed else 'deny'} by {rule.source}")
        if kind == "deny":
            break
    if verdict is None:
        verdict = Explanation(False, "deny: no rule grants this")
    verdict.trace = trace
    return verdict
