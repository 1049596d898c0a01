"""The TLS benchmark's certificates: the tests' own CA and loopback server certificate
(tests/tls_certs.py), seen as the three files a server and its clients need.

Needs the ``cryptography`` package (the test extra installs it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


def make(directory: Path) -> Certs:
    """A CA and a server certificate for 127.0.0.1 and localhost, written under ``directory``."""
    from tests.tls_certs import make_certs

    made = make_certs(directory)
    return Certs(made.ca.issued.cert, made.server.cert, made.server.key)
