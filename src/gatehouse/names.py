"""The syntax of names every layer shares: types, relations, ids and object keys.

This is a base module: it imports nothing from gatehouse but ``errors`` and ``limits``, so
the policy compiler, the graph, the engine and the API can all depend on it
without depending on each other (``tests/test_layers.py`` holds the rule).

An object is written ``type:id``; inside the process it is carried as that
canonical string, its *key*, interned so that equal keys are one object and
compare by identity on the hot path. Ids may not hold ``:``, so the first
``:`` of a key always separates type from id.
"""

from __future__ import annotations

import re
import sys

from gatehouse.errors import InvalidArgument, quote
from gatehouse.limits import LIMITS

TYPE_RE = re.compile(rf"[a-z][a-z0-9_]{{0,{LIMITS.type_chars - 1}}}")
"""A type, relation or action name: lowercase, digits and ``_``, starting with a letter."""
RELATION_RE = TYPE_RE
ID_RE = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.\-=+/|]{{0,{LIMITS.id_chars - 1}}}")
"""An object id: 1-256 characters, no separators (``:``, ``#``, ``@``, spaces).

Both patterns are meant for ``fullmatch``; their lengths come from limits.py."""
SEPARATOR = ":"


def validate_type(value: str, field_name: str) -> str:
    """``value`` if it is a type name, else InvalidArgument naming ``field_name``."""
    if not value:
        raise InvalidArgument(field_name, "is required")
    if not TYPE_RE.fullmatch(value):
        raise InvalidArgument(
            field_name, f"{quote(value)} is not a type name (lowercase letters, digits, '_')"
        )
    return value


def validate_id(value: str, field_name: str) -> str:
    """``value`` if it is an object id, else InvalidArgument naming ``field_name``."""
    if not value:
        raise InvalidArgument(field_name, "is required")
    if not ID_RE.fullmatch(value):
        raise InvalidArgument(
            field_name,
            f"{quote(value)} is not a valid id (1-256 of letters, digits and _ . - = + / |;"
            " it may not start with punctuation)",
        )
    return value


def object_key(type_: str, id_: str) -> str:
    """The canonical interned key ``type:id`` of an object."""
    return sys.intern(f"{type_}{SEPARATOR}{id_}")


def split_key(key: str) -> tuple[str, str]:
    """``(type, id)`` of an object key; the inverse of :func:`object_key`.

    Only the first ``:`` separates, so a key read back from a store splits
    the same way it was joined. No validation: keys come from checked input.
    """
    type_, _, id_ = key.partition(SEPARATOR)
    return type_, id_


def type_of(key: str) -> str:
    """The type half of an object key (``split_key(key)[0]``, without the tuple)."""
    return key.partition(SEPARATOR)[0]
