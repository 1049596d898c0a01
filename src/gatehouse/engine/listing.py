"""ListAccessible: every resource of a type a subject may act on.

Candidates come from the reverse side of the index, so the cost grows with
the answer, not with the graph:

* for each grant, the objects on which the subject holds one of the rule's
  roles (``held[subject]``), and every descendant of the resource type below
  them;
* for grants whose condition requires ownership, only the resources the
  subject owns.

Every candidate is then decided exactly as Check decides it (the same
``check`` function), so a listed id always passes Check; and since every grant
needs a role the subject holds on the resource or an ancestor, every id that
passes Check is among the candidates. Ids are listed in a stable order (by
id), one page at a time, after a keyset cursor.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gatehouse.engine.check import check
from gatehouse.graph.index import GraphIndex
from gatehouse.names import type_of
from gatehouse.policy.model import OWNER, CompiledPolicy


@dataclass(frozen=True, slots=True)
class Page:
    ids: list[str]
    # The last id considered: the cursor for the next page (None when complete).
    after: str | None
    complete: bool


def _descendants(index: GraphIndex, roots: Iterable[str], rtype: str) -> set[str]:
    out: set[str] = set()
    children = index.children
    stack = list(roots)
    seen: set[str] = set()
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        if type_of(key) == rtype:
            out.add(key)
        kids = children.get(key)
        if kids:
            stack.extend(kids)
    return out


def candidates(policy: CompiledPolicy, index: GraphIndex, subject: str, action: str,
               rtype: str) -> set[str]:
    """Resource keys that might be allowed: a superset of the answer."""
    table = policy.tables[rtype].get(action)
    held = index.held.get(subject)
    if table is None or not held:
        return set()
    roots: set[str] = set()
    owned_needed = False
    # (ancestor type, relations) pairs whose holders reach descendants.
    pairs: list[tuple[str, frozenset[str]]] = [(t, rels) for t, rels, _ in table.direct]
    for rule in table.conditional:
        if rule.owner_required:
            owned_needed = True
            continue
        by_type: dict[str, set[str]] = {}
        for ref in rule.roles:
            by_type.setdefault(ref.type, set()).add(ref.relation)
        pairs.extend((t, frozenset(r)) for t, r in by_type.items())
    wanted: dict[str, set[str]] = {}
    for t, rels in pairs:
        wanted.setdefault(t, set()).update(rels)
    for obj, relations in held.items():
        granting = wanted.get(type_of(obj))
        if granting is not None and not granting.isdisjoint(relations):
            roots.add(obj)
    found = _descendants(index, roots, rtype)
    if owned_needed:
        found.update(obj for obj, relations in held.items()
                     if OWNER in relations and type_of(obj) == rtype)
    return found


def list_accessible(
    policy: CompiledPolicy,
    index: GraphIndex,
    subject: str,
    action: str,
    rtype: str,
    *,
    within: str | None = None,
    after: str | None = None,
    limit: int = 1000,
    deadline: float | None = None,
    context: Mapping[str, Any] | None = None,
    keep: Callable[[str], bool] | None = None,
) -> Page:
    """One page of allowed ids (not keys) after ``after``, in id order.

    ``deadline`` (a ``time.monotonic()`` value) ends the page early with
    ``complete=False`` and a cursor to continue from. ``keep``, if given,
    narrows the candidates (by key) before anything is examined, so the page,
    and the cursor's position, only ever hold resources it accepts.
    """
    found = candidates(policy, index, subject, action, rtype)
    if within is not None:
        wtype = type_of(within)
        up = index.up
        found = {k for k in found if k == within or up.get(k, {}).get(wtype) == within}
    if keep is not None:
        found = {k for k in found if keep(k)}
    prefix = len(rtype) + 1
    ordered = sorted(k[prefix:] for k in found)
    if after is not None:
        ordered = ordered[bisect_right(ordered, after):]
    ids: list[str] = []
    last: str | None = None
    head = rtype + ":"
    for n, rid in enumerate(ordered):
        if len(ids) >= limit:
            return Page(ids, last, False)
        if deadline is not None and n % 64 == 0 and n and time.monotonic() > deadline:
            return Page(ids, last, False)
        if check(policy, index, subject, action, rtype, head + rid, context):
            ids.append(rid)
        last = rid
    return Page(ids, None, True)
