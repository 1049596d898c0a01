"""Workspace names and slugs: the rules of the seeds, and deriving a slug.

A slug is 2-50 characters of ``a-z``, ``0-9`` and ``-``, neither starting
nor ending with ``-``; unique within its organization and fixed once the
workspace exists. A name is 1-100 characters, printable, not blank.
"""

from __future__ import annotations

import re
import unicodedata

from gatehouse.errors import InvalidArgument, quote

SLUG_MIN, SLUG_MAX = 2, 50
NAME_MAX = 100
SLUG_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?", re.ASCII)


def slug_problem(slug: str) -> str | None:
    """Why ``slug`` is not a slug, or None."""
    if not SLUG_MIN <= len(slug) <= SLUG_MAX:
        return f"must be {SLUG_MIN}-{SLUG_MAX} characters, not {len(slug)}"
    if not SLUG_RE.fullmatch(slug):
        return ("may hold only lowercase letters, digits and '-', and may not start or end "
                "with '-'")
    return None


def check_name(name: str, field: str = "name") -> str:
    """The name, refused unless 1-100 printable characters that are not all blank."""
    if not name.strip():
        raise InvalidArgument(field, "is required (1-100 characters)")
    if len(name) > NAME_MAX:
        raise InvalidArgument(field, f"is {len(name)} characters; at most {NAME_MAX}")
    if not name.isprintable():
        raise InvalidArgument(field, f"{quote(name)} holds control characters")
    return name


def check_slug(slug: str, field: str = "slug") -> str:
    problem = slug_problem(slug)
    if problem is not None:
        raise InvalidArgument(field, f"{quote(slug)} {problem}")
    return slug


def derive_slug(name: str) -> str:
    """A slug from a name: accents dropped, lowercased, runs of other characters -> '-'.

    ``"Acme Inc."`` -> ``"acme-inc"``. A name with too few usable characters
    gives ``"workspace"``; a long one is cut at 50 (without a trailing '-').
    """
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:SLUG_MAX].rstrip("-")
    return slug if len(slug) >= SLUG_MIN else "workspace"
