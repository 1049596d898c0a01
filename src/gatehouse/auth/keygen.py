"""Making keys without other tools: ``gatehouse keys new`` and ``gatehouse keys hash``.

A key is 32 random bytes, URL-safe base64, prefixed ``gh_`` so that secret
scanners and people recognise it. Only its sha256 goes into the keys file.
Keys are read from stdin and printed to stdout, never taken from argv
(which other users of the machine can read in the process list).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from gatehouse.auth.caller import SCOPES
from gatehouse.auth.keys import NAME_RE, parse_keys
from gatehouse.errors import InvalidArgument, quote
from gatehouse.names import ID_RE

PREFIX = "gh_"


def new_key() -> str:
    """A fresh random key (256 bits)."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The hex sha256 the keys file stores for ``key`` (surrounding whitespace ignored)."""
    return hashlib.sha256(key.strip().encode()).hexdigest()


def entry_yaml(name: str, digest: str, scopes: Sequence[str],
               organizations: Sequence[str] | None) -> str:
    """The keys-file entry for a key, as YAML to paste under ``keys:``.

    Raises InvalidArgument naming the bad name, scope or organization; the
    entry is checked by the keys file's own parser before it is shown.
    """
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument("name", f"{quote(name)} is not a key name (1-64 letters, digits, "
                              "'_', '.', '-')")
    if not scopes:
        raise InvalidArgument("--scopes", f"give at least one of {', '.join(SCOPES)}")
    for scope in scopes:
        if scope not in SCOPES:
            raise InvalidArgument("--scopes", f"unknown scope {quote(scope)} (known: "
                                  f"{', '.join(SCOPES)})")
    for org in organizations or ():
        if not ID_RE.fullmatch(org):
            raise InvalidArgument("--organizations", f"{quote(org)} is not an organization id")
    lines = [f"  - name: {name}", f"    sha256: {digest}",
             f"    scopes: [{', '.join(dict.fromkeys(scopes))}]"]
    if organizations is not None:
        lines.append(f"    organizations: [{', '.join(dict.fromkeys(organizations))}]")
    text = "\n".join(lines) + "\n"
    parse_keys("keys:\n" + text, "<new entry>")  # what we print must load
    return text


__all__ = ["PREFIX", "entry_yaml", "hash_key", "new_key"]
