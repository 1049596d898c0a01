"""What the top-level sections that map names to definitions share.

``constraints:``, ``metrics:`` and ``plans:`` are each a mapping from a name to
a mapping that defines it. Their compilers report problems through a
``Report`` (path inside the document, message, whether the problem sits on
the key rather than the value) and walk their entries with
``named_definitions``, so the three say the same things the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

Path = tuple[str | int, ...]
Report = Callable[[Path, str, bool], None]


def named_definitions(raw: Any, section: str, noun: str, name_re: re.Pattern[str],
                      not_a_mapping: Callable[[str], str], report: Report,
                      section_error: str | None = None, empty_body_ok: bool = False,
                      ) -> Iterator[tuple[str, Path, dict[str, Any]]]:
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
        base: Path = (section, name)
        if not name_re.fullmatch(str(name)):
            report(base, f"{name!r} is not a valid {noun} name", True)
            continue
        if body is None and empty_body_ok:
            body = {}
        if not isinstance(body, dict):
            report(base, not_a_mapping(name), False)
            continue
        yield name, base, body
