"""The pre-call hook that turns ``authorization: Bearer <key>`` into a ``Caller``.

It runs before every call, on the core transport's poll thread for Check,
so it does a fixed amount of work: one metadata scan, one sha256, one dict
lookup confirmed with ``hmac.compare_digest``, one scope test and, for a key
with limits, one short critical section. The key table and the limiters are
one immutable pair replaced by a single assignment on reload, so a call
sees either the old table or the new one, never a mixture.

Refusals: no key, a malformed header or an unknown key → UNAUTHENTICATED; a
key without the method's scope, or a method no scope covers →
PERMISSION_DENIED; a key over its rate or in-flight cap → RESOURCE_EXHAUSTED
with a ``google.rpc.RetryInfo``. Messages name the key (never the key itself)
and the scope needed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from gatehouse.auth.caller import CALLER
from gatehouse.auth.keys import ApiKey, KeyTable
from gatehouse.auth.limiter import KeyLimiter, Refusal, retry_seconds
from gatehouse.auth.scopes import METHOD_SCOPES, OPEN_SERVICES
from gatehouse.errors import quote
from gatehouse.limits import LIMITS
from gatehouse.transport import Abort, CallInfo, CallOutcome

LIMITER = "auth.limiter"
"""The notes key of the limiter a call was admitted by (released after the call)."""
STATUS_DETAILS = "grpc-status-details-bin"

_BEARER = "bearer "
_HEADER_CHARS = len(_BEARER) + LIMITS.api_key_chars
NO_KEY = ("no API key: send `authorization: Bearer <key>` metadata (health and reflection "
          "need none)")
MALFORMED = "authorization: expected `Bearer <key>`"
UNKNOWN_KEY = "unknown API key"


@dataclass(frozen=True, slots=True)
class _State:
    table: KeyTable
    limiters: Mapping[str, KeyLimiter]


def _limiters(table: KeyTable, old: Mapping[str, KeyLimiter]) -> Mapping[str, KeyLimiter]:
    """A limiter per key with limits; a key whose limits did not change keeps its limiter,
    so a reload neither refills its bucket nor forgets the calls it has in flight."""
    out: dict[str, KeyLimiter] = {}
    for key in table.keys:
        if key.rate is None:
            continue
        kept = old.get(key.name)
        out[key.name] = kept if kept is not None and kept.rate == key.rate \
            else KeyLimiter(key.rate)
    return MappingProxyType(out)


def _unauthenticated(details: str) -> Abort:
    return Abort(grpc.StatusCode.UNAUTHENTICATED, details)


def exhausted(name: str, refusal: Refusal) -> Abort:
    """RESOURCE_EXHAUSTED with a RetryInfo detail (in ``grpc-status-details-bin``)."""
    message = f"key {quote(name)}: {refusal.reason}; retry later"
    seconds, nanos = retry_seconds(refusal.retry_after)
    info = error_details_pb2.RetryInfo()
    info.retry_delay.seconds = seconds
    info.retry_delay.nanos = nanos
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                               message=message, details=[detail])
    return Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message,
                 ((STATUS_DETAILS, status.SerializeToString()),))


class Authenticator:
    """Checks every call's key against the table; install with ``transport.add_hooks``."""

    def __init__(self, table: KeyTable) -> None:
        self._state = _State(table, _limiters(table, {}))

    @property
    def table(self) -> KeyTable:
        return self._state.table

    def replace(self, table: KeyTable) -> None:
        """Serve ``table`` from the next call on (one assignment: atomic for every reader)."""
        self._state = _State(table, _limiters(table, self._state.limiters))

    def limiter(self, name: str) -> KeyLimiter | None:
        """The limiter of the key called ``name`` (None when it has no limits)."""
        return self._state.limiters.get(name)

    def _identify(self, info: CallInfo, table: KeyTable) -> ApiKey:
        header: object = None
        for name, value in info.metadata:
            if name == "authorization":
                if header is not None:
                    raise _unauthenticated("authorization: sent more than once")
                header = value
        if header is None:
            subject = info.client_subject
            if subject is None:
                raise _unauthenticated(NO_KEY)
            by_certificate = table.by_subject.get(subject)
            if by_certificate is None:
                raise _unauthenticated(f"client certificate {quote(subject)} is not mapped to "
                                       "a key, and no API key was sent")
            return by_certificate
        if not isinstance(header, str) or len(header) > _HEADER_CHARS \
                or header[:7].lower() != _BEARER:
            raise _unauthenticated(MALFORMED)
        secret = header[7:].strip()
        if not secret or " " in secret:
            raise _unauthenticated(MALFORMED)
        digest = hashlib.sha256(secret.encode()).digest()
        key = table.by_digest.get(digest)
        if key is None or not hmac.compare_digest(key.digest, digest):
            raise _unauthenticated(UNKNOWN_KEY)
        return key

    def before(self, info: CallInfo) -> None:
        """Admit the call (recording its ``Caller`` in ``info.notes``) or raise ``Abort``."""
        method = info.method
        scope = METHOD_SCOPES.get(method)
        if scope is None and method.startswith(OPEN_SERVICES):
            return
        state = self._state
        key = self._identify(info, state.table)
        caller = key.caller
        info.notes[CALLER] = caller
        if scope is None:
            raise Abort(grpc.StatusCode.PERMISSION_DENIED,
                        f"{quote(method)} is not covered by any scope")
        if scope not in caller.scopes:
            raise Abort(grpc.StatusCode.PERMISSION_DENIED,
                        f"key {quote(caller.name)} lacks scope {scope!r}, which "
                        f"{method.rpartition('/')[2]} needs")
        limiter = state.limiters.get(caller.name)
        if limiter is not None:
            refusal = limiter.admit()
            if refusal is not None:
                raise exhausted(caller.name, refusal)
            info.notes[LIMITER] = limiter

    def after(self, info: CallInfo, outcome: CallOutcome) -> None:
        """Give back the in-flight slot ``before`` took, once."""
        limiter = info.notes.pop(LIMITER, None)
        if limiter is not None:
            limiter.release()


__all__ = ["LIMITER", "MALFORMED", "NO_KEY", "STATUS_DETAILS", "UNKNOWN_KEY", "Authenticator",
           "exhausted"]
