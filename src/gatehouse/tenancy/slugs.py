"""Workspace names and slugs: checked by the policy's attribute rules, and deriving
a slug from a name.

The rules themselves are the policy's (``workspace.slug`` and ``workspace.name``
in ``types:``, e.g. ``pattern``, ``min_length``, ``max_length``), the same ones
every store write is checked against. When a policy declares none, the seeds'
rules apply: a slug is 2-50 of ``a-z``, ``0-9`` and ``-`` without a leading or
trailing ``-``; a name is 1-100 characters.
"""

from __future__ import annotations

import re
import unicodedata

from gatehouse.errors import InvalidArgument, quote
from gatehouse.policy.model import Attribute

SLUG_MIN, SLUG_MAX = 2, 50
NAME_MAX = 100
SLUG_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?", re.ASCII)
SEED_SLUG = Attribute("slug", "string", min_length=SLUG_MIN, max_length=SLUG_MAX,
                      pattern=SLUG_RE)
SEED_NAME = Attribute("name", "string", min_length=1, max_length=NAME_MAX)


def _ruled(attr: Attribute | None, seed: Attribute) -> Attribute:
    """The attribute's own rules, or the seed's when it declares none."""
    if attr is None or (attr.min_length is None and attr.max_length is None
                        and attr.pattern is None):
        return seed
    return attr


def slug_problem(slug: str, attr: Attribute | None = None) -> str | None:
    """Why ``slug`` is not a slug under the policy's rules (``attr``), or None."""
    return _ruled(attr, SEED_SLUG).rule_problem(slug)


def check_name(name: str, field: str = "name", attr: Attribute | None = None) -> str:
    """The name, refused if blank, holding control characters or breaking the rules."""
    if not name.strip():
        raise InvalidArgument(field, "is required")
    if not name.isprintable():
        raise InvalidArgument(field, f"{quote(name)} holds control characters")
    problem = _ruled(attr, SEED_NAME).rule_problem(name)
    if problem is not None:
        raise InvalidArgument(field, f"{quote(name)} {problem}")
    return name


def check_slug(slug: str, field: str = "slug", attr: Attribute | None = None) -> str:
    problem = slug_problem(slug, attr)
    if problem is not None:
        raise InvalidArgument(field, f"{quote(slug)} {problem}")
    return slug


def slug_max(attr: Attribute | None = None) -> int:
    return _ruled(attr, SEED_SLUG).max_length or SLUG_MAX


def derive_slug(name: str, attr: Attribute | None = None) -> str:
    """A slug from a name: accents dropped, lowercased, runs of other characters -> '-'.

    ``"Acme Inc."`` -> ``"acme-inc"``. A name with too few usable characters
    gives ``"workspace"``; a long one is cut to the maximum (without a trailing '-').
    """
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:slug_max(attr)].rstrip("-")
    return slug if slug_problem(slug, attr) is None else "workspace"
