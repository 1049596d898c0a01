"""Tenant-bound callers for end-to-end tests, in one place: real API keys.

``start_tenant_server`` starts the real ``gatehouse serve --api-keys FILE``
with a generated keys file: one key per organization set the tests use
(``BOUND``) and one unbound key, each holding every scope. ``as_key`` gives the
``authorization: Bearer ...`` metadata of the key bound to exactly those
organizations (None: the unbound key), so every call goes through the
server's own authentication hook.

The channels of the returned server send the unbound key on a call that
carries no ``authorization`` metadata of its own, so set-up code reads as the
unbound caller it is; a call made with ``as_key(...)`` sends only that key.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from gatehouse.auth.caller import SCOPES
from tests.conftest import ServerProcess, start_on_store

Metadata = tuple[tuple[str, str], ...]

BOUND: tuple[frozenset[str], ...] = (
    frozenset({"acme"}),
    frozenset({"globex"}),
    frozenset({"acme", "globex"}),
    frozenset({"acme", "newco"}),
)
"""The organization sets a key is bound to in the generated keys file."""
NEWCO = "newco"
"""An organization no server creates at set-up: a key bound to it may create it."""

_SECRET = f"gh_tenant_{uuid.uuid4().hex}"
"""Per test run: the keys below are this plus the key's name."""


def _name(organizations: frozenset[str] | None) -> str:
    return "unbound" if organizations is None else "only-" + "-".join(sorted(organizations))


def key_of(organizations: Iterable[str] | None) -> str:
    """The API key bound to exactly ``organizations`` (None: the unbound key)."""
    orgs = None if organizations is None else frozenset(organizations)
    if orgs is not None and orgs not in BOUND:
        raise KeyError(f"no test key is bound to {sorted(orgs)}; add the set to BOUND")
    return f"{_SECRET}_{_name(orgs)}"


def as_key(organizations: Iterable[str] | None) -> Metadata:
    """The call metadata of the key bound to ``organizations`` (None: the unbound key)."""
    return (("authorization", f"Bearer {key_of(organizations)}"),)


def keys_file_text() -> str:
    """The keys file: every key of ``BOUND`` and the unbound one, with every scope."""
    lines = ["keys:"]
    for orgs in (None, *BOUND):
        digest = hashlib.sha256(key_of(orgs).encode()).hexdigest()
        lines += [f"  - name: {_name(orgs)}", f"    sha256: {digest}",
                  f"    scopes: [{', '.join(SCOPES)}]"]
        if orgs is not None:
            lines.append(f"    organizations: [{', '.join(sorted(orgs))}]")
    return "\n".join(lines) + "\n"


class _DefaultKey(grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
                  grpc.UnaryStreamClientInterceptor):
    """Adds the unbound key to a call that sends no ``authorization`` of its own."""

    def __init__(self) -> None:
        self.header = as_key(None)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(details.metadata or ())
        if not any(k == "authorization" for k, _ in metadata):
            metadata += self.header
        return _Details(details.method, details.timeout, tuple(metadata),
                        details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation: Callable[..., Any],
                              details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any],
                               details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)


@dataclass(frozen=True)
class _Details(grpc.ClientCallDetails):  # type: ignore[misc]
    method: str
    timeout: float | None
    metadata: Metadata
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class KeyedServer(ServerProcess):
    """A server started with the generated keys file; its channels default to the
    unbound key."""

    def channel(self) -> grpc.Channel:
        return grpc.intercept_channel(super().channel(), _DefaultKey())


def start_tenant_server(request: pytest.FixtureRequest,
                        tmp_path_factory: pytest.TempPathFactory, store: str,
                        *args: str) -> KeyedServer:
    """A real server (memory store, or the session's Redis under a fresh prefix)
    authenticating callers with the keys of ``as_key``."""
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text(keys_file_text())
    server = start_on_store(request, tmp_path_factory, store, "--api-keys", str(keys), *args)
    return KeyedServer(server.address, server.proc, server.log_path)
