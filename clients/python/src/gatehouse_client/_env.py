"""Connection settings from the environment, under the names ``gatehouse check`` reads.

One set of variables configures both the SRE's command line and a backend
service, so a deployment sets them once (a Kubernetes secret, a compose
``environment:`` block):

- ``GATEHOUSE_ADDRESS``: host:port (default ``127.0.0.1:50051``);
- ``GATEHOUSE_API_KEY_FILE``: a file holding the key, else ``GATEHOUSE_API_KEY``, the key
  itself;
- ``GATEHOUSE_TLS_CA``: verify the server with this PEM CA file;
- ``GATEHOUSE_TLS_CLIENT_CERT`` and ``GATEHOUSE_TLS_CLIENT_KEY``: present a client
  certificate (mTLS);
- ``GATEHOUSE_TLS_SERVER_NAME``: the name the server's certificate must carry.

TLS is used when a CA or a client certificate is named, or when the address is
not on this machine (then the system's roots verify the server): a key is never
sent in plaintext across a network because a variable was forgotten.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gatehouse_client.types import TLS

DEFAULT_ADDRESS = "127.0.0.1:50051"
_KEY_FILE_BYTES = 1 << 16


@dataclass(frozen=True, slots=True)
class EnvSettings:
    address: str
    api_key: str | None
    tls: TLS | None

    def __repr__(self) -> str:  # never show the key
        return f"EnvSettings(address={self.address!r}, tls={self.tls is not None})"


def is_loopback(address: str) -> bool:
    """True when ``address`` (host:port or a unix: target) stays on this machine."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere: treat it as remote


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _api_key(env: Mapping[str, str]) -> str | None:
    path = _get(env, "GATEHOUSE_API_KEY_FILE")
    if path is not None:
        where = f"GATEHOUSE_API_KEY_FILE ({path})"
        try:
            with open(path, "rb") as f:
                raw = f.read(_KEY_FILE_BYTES)
        except OSError as exc:
            raise ValueError(f"{where}: cannot read it: {exc.strerror or exc}") from None
        try:
            key = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ValueError(f"{where}: the key must be printable ASCII") from None
        if not key:
            raise ValueError(f"{where}: empty; it must hold the key")
    else:
        where = "GATEHOUSE_API_KEY"
        key = env.get(where, "").strip()
        if not key:
            return None
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise ValueError(f"{where}: the key must be one line of printable ASCII without spaces")
    return key


def _tls(env: Mapping[str, str], address: str) -> TLS | None:
    ca = _get(env, "GATEHOUSE_TLS_CA")
    cert = _get(env, "GATEHOUSE_TLS_CLIENT_CERT")
    key = _get(env, "GATEHOUSE_TLS_CLIENT_KEY")
    server_name = _get(env, "GATEHOUSE_TLS_SERVER_NAME")
    if (cert is None) != (key is None):
        raise ValueError("GATEHOUSE_TLS_CLIENT_CERT and GATEHOUSE_TLS_CLIENT_KEY go together: "
                         "the client certificate and its key")
    if ca is None and cert is None and is_loopback(address):
        return None
    return TLS(ca=Path(ca) if ca else None, cert=Path(cert) if cert else None,
               key=Path(key) if key else None, server_name=server_name)


def from_env(env: Mapping[str, str]) -> EnvSettings:
    """Address, key and TLS from ``env``; a bad value raises ValueError naming its variable."""
    address = _get(env, "GATEHOUSE_ADDRESS") or DEFAULT_ADDRESS
    return EnvSettings(address, _api_key(env), _tls(env, address))
