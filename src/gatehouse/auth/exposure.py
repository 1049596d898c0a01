"""Safe by default: which listen addresses may serve without keys.

A server without ``--api-keys`` answers anyone who reaches its port with
every scope. That is only acceptable when nobody but this machine can reach
it: a loopback address (127.0.0.0/8, ::1, ``localhost``) or a Unix socket.
Anywhere else ``gatehouse serve`` refuses to start unless the operator says
``--insecure-no-auth``.

``gatehouse check`` asks the same question from the other end (``is_loopback``):
plaintext to a loopback server, TLS to anything else, so one definition of
"this machine only" serves both.
"""

from __future__ import annotations

import ipaddress


def listen_host(listen: str) -> str:
    """The host part of ``host:port`` (brackets of ``[::1]:port`` removed)."""
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def is_loopback(listen: str) -> bool:
    """True when only this machine can reach ``listen``; False when unsure."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    host = listen_host(listen).strip().lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere, or "" (every interface)


UNSAFE = ("refusing to serve {listen} without API keys: anyone who reaches it could read "
          "and write everything. Give --api-keys FILE (env GATEHOUSE_API_KEYS; `gatehouse "
          "keys new` makes a key), listen on a loopback address, or pass --insecure-no-auth "
          "if something in front of gatehouse already authenticates every caller")
"""The start-up refusal (``str.format(listen=...)``)."""



def refusal(listen: str, has_keys: bool, insecure_no_auth: bool) -> str | None:
    """Why serving ``listen`` this way is refused, or None when it may start."""
    if has_keys or insecure_no_auth or is_loopback(listen):
        return None
    return UNSAFE.format(listen=listen)


__all__ = ["UNSAFE", "is_loopback", "listen_host", "refusal"]
