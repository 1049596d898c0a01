"""Bearer tokens for invitations and access links.

A token is ``"<record id>.<secret>"``: the id finds the record (an
invitation, an access link), the secret proves the bearer got the token from
the service. The secret is 32 random bytes; the record keeps only its
SHA-256, compared in constant time. A token is returned once and never
logged: errors about a token never quote it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from gatehouse.errors import InvalidArgument

SECRET_BYTES = 32
_TOKEN_RE = re.compile(r"([A-Za-z0-9_-]{8,64})\.([A-Za-z0-9_-]{43})", re.ASCII)


@dataclass(frozen=True, slots=True)
class Token:
    """A freshly issued token and what the record stores of it."""

    record_id: str
    text: str
    secret_sha256: str


def new_id(nbytes: int = 12) -> str:
    """A random record id (URL-safe, no separators an id may not hold)."""
    return secrets.token_hex(nbytes)


def issue(record_id: str) -> Token:
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")
    return Token(record_id, f"{record_id}.{secret}", _digest(secret))


def parse(text: str, field: str = "token") -> tuple[str, str]:
    """(record id, secret) of a token's text; InvalidArgument without quoting it."""
    m = _TOKEN_RE.fullmatch(text)
    if m is None:
        raise InvalidArgument(field, "is not a token this service issued")
    return m.group(1), m.group(2)


def matches(secret: str, secret_sha256: object) -> bool:
    """Whether ``secret`` is the one whose digest a record stores (constant time)."""
    if not isinstance(secret_sha256, str):
        return False
    return hmac.compare_digest(_digest(secret), secret_sha256)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
