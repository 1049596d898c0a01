"""Tenant-bound callers for end-to-end tests, in one place.

Until API keys authenticate calls, a test server gets its callers from a
test-only pre-call hook: a call carrying ``x-test-organizations: acme,globex``
is made by a caller bound to those organizations; a call without it is
anonymous (unbound). To run the same tests with real keys, change
``start_tenant_server`` to start ``gatehouse serve --api-keys FILE`` with one
key per organization set, and ``as_key`` to send that key's
``authorization: Bearer ...`` metadata; nothing else in the tests names the
mechanism.

Run as ``python -m tests.e2e.tenant_keys serve ...`` this module is the server:
the real ``gatehouse`` command, with the hook registered on its transport.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from gatehouse.auth.caller import CALLER, SCOPES, Caller
from gatehouse.transport import CallInfo, Transport
from tests.conftest import ROOT, ServerProcess, free_port, wait_serving

HEADER = "x-test-organizations"
"""Metadata naming the organizations the test caller is bound to (comma-separated)."""

Metadata = tuple[tuple[str, str], ...]


def caller_from_header(info: CallInfo) -> None:
    """The test-only authentication hook: a caller bound to the organizations named."""
    for key, value in info.metadata:
        if key == HEADER:
            organizations = frozenset(o for o in str(value).split(",") if o)
            info.notes[CALLER] = Caller("test-key", frozenset(SCOPES), organizations)
            return


def as_key(organizations: Iterable[str] | None) -> Metadata:
    """The call metadata of a caller bound to ``organizations`` (None: unbound)."""
    if organizations is None:
        return ()
    return ((HEADER, ",".join(organizations)),)


def start_tenant_server(request: pytest.FixtureRequest,
                        tmp_path_factory: pytest.TempPathFactory, store: str,
                        *args: str) -> ServerProcess:
    """A real server (memory store, or the session's Redis under a fresh prefix) whose
    callers may be bound to organizations (``as_key``)."""
    extra: list[str] = []
    if store == "redis":
        redis = request.getfixturevalue("redis_server")
        extra = ["--redis-url", redis.url, "--redis-prefix", f"t{uuid.uuid4().hex[:8]}"]
    tmp = tmp_path_factory.mktemp(f"tenants-{store}")
    port = free_port()
    address = f"127.0.0.1:{port}"
    log_path = tmp / f"server-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.tenant_keys", "serve", "--listen", address,
             *args, *extra],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    wait_serving(address, proc, log_path)
    return ServerProcess(address, proc, log_path)


def _serve_with_hook(argv: list[str]) -> int:
    from gatehouse import server
    from gatehouse.cli import main

    opened = server.open_transport

    async def open_with_hook(*args: Any, **kwargs: Any) -> Transport:
        transport = await opened(*args, **kwargs)
        transport.add_hooks(before=caller_from_header)
        return transport

    server.open_transport = open_with_hook
    return main(argv)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(ROOT)))
    sys.exit(_serve_with_hook(sys.argv[1:]))
