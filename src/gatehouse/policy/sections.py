"""What the compilers of the policy's sections share.

``constraints:``, ``metrics:`` and ``plans:`` are each a mapping from a name to
a mapping that defines it. Their compilers report problems through a
``ReportProblem`` callable (path inside the document, message, whether the
problem sits on the key rather than the value) and walk their entries with
``named_definitions``, so the three say the same things the same way.

Every value a policy file holds may be hostile: a list where a name belongs,
a 100,000-character string, a number past what a double holds. ``shown``
quotes such a value briefly in a message and ``is_name`` tests "a string"
before any ``in`` test, which would raise on an unhashable list or mapping.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Container, Iterator
from typing import Any

from gatehouse.errors import quote
from gatehouse.limits import LIMITS
from gatehouse.sourcemap import MAX_EXACT_INT, DocPath

ReportProblem = Callable[[DocPath, str, bool], None]
"""Record one problem: (path in the document, message, whether it sits on the key)."""


def shown(value: Any) -> str:
    """A value from a policy file as messages quote it: its ``repr``, cut short if long."""
    if isinstance(value, str):
        return quote(value)
    text = repr(value)
    if len(text) <= LIMITS.quote_chars:
        return text
    return f"{text[:LIMITS.quote_chars]}... ({len(text)} characters)"


LISTED_NAMES = 20


def listed(names: Collection[str]) -> str:
    """``names`` sorted and comma-separated for a "known: ..." hint, or their count when
    there are too many to list (a hint per problem must not cost the whole set each time)."""
    if len(names) > LISTED_NAMES:
        return unlisted(len(names))
    return ", ".join(sorted(names)) or "none"


def unlisted(count: int) -> str:
    """The hint given instead of more than LISTED_NAMES names."""
    return f"{count} names, too many to list"


def is_name(value: Any, known: Container[str]) -> bool:
    """``value`` is a string among ``known`` (False, not TypeError, for a list or mapping)."""
    return isinstance(value, str) and value in known


def is_number(value: Any) -> bool:
    """An int or float (not a bool), finite and no larger than a double holds exactly."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return abs(value) <= MAX_EXACT_INT


def named_definitions(raw: Any, section: str, noun: str, name_re: re.Pattern[str],
                      not_a_mapping: Callable[[str], str], report: ReportProblem,
                      section_error: str | None = None, empty_body_ok: bool = False,
                      ) -> Iterator[tuple[str, DocPath, dict[str, Any]]]:
    """Yield (name, path, body) for each well-formed entry of ``section``.

    A section that is not a mapping, a name ``name_re`` refuses and a body that
    is not a mapping are reported (``section_error`` and ``not_a_mapping(name)``
    word the first and last) and skipped. ``empty_body_ok`` reads ``name:``
    with nothing after it as an empty mapping.
    """
    if not isinstance(raw, dict):
        report((section,), section_error or f"{section} must map names to {noun} definitions",
               False)
        return
    for name, body in raw.items():
        base: DocPath = (section, name)
        if not name_re.fullmatch(str(name)):
            report(base, f"{shown(name)} is not a valid {noun} name", True)
            continue
        if body is None and empty_body_ok:
            body = {}
        if not isinstance(body, dict):
            report(base, not_a_mapping(name), False)
            continue
        yield name, base, body
