"""Server TLS (and mTLS) from PEM files, reloaded when the files change.

``server_credentials`` checks the files before anything listens: a file that
cannot be read, holds no PEM certificate or key, an encrypted key, a key that
does not belong to the certificate, or a client-CA file without a certificate
is a ``TlsError`` naming the flag and the file, so ``gatehouse serve`` refuses
to start with one line instead of failing every handshake later.

The credentials are grpc's *dynamic* SSL credentials: before each new
connection's handshake grpc asks ``CertificateReloader`` whether the
certificate changed. It compares each file's identity (device, inode, mtime,
size) with what it loaded; only when that changed does it read and check the
files again. A good new set is used from the next handshake on (connections
already open keep theirs); a broken one is logged once and the previous
certificate keeps serving. Swapping files by rename (as Kubernetes does with
secret volumes) and rewriting them in place both work; a pair caught half
written fails the check or changes again while being read, and is retried at
a later handshake.

With a client CA, every client must present a certificate signed by it
(grpc's "request and require client certificate and verify"); without one,
client certificates are not asked for. grpc's public API has no way to ask for
a client certificate without verifying it, so a subject reported by the
transport (``CallInfo.client_subject``) is always one this CA vouched for.

Only the standard library's ``ssl`` module checks the PEM data; grpc itself
(BoringSSL) serves it.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from gatehouse.errors import GatehouseError, quote
from gatehouse.filewatch import Mark, stat_mark

log = logging.getLogger("gatehouse.tls")

CERT_FLAG = "--tls-cert"
KEY_FLAG = "--tls-key"
CLIENT_CA_FLAG = "--tls-client-ca"

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY_END = b"PRIVATE KEY-----"
_MAX_PEM_BYTES = 1 << 20
"""Larger files (1 MiB) are refused: certificate chains and CA bundles are far smaller."""

Signature = tuple[Mark | None, ...]


class TlsError(GatehouseError):
    """A TLS file cannot be used; the message names the flag and the file."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the server's TLS files are (``--tls-cert``, ``--tls-key``, ``--tls-client-ca``)."""

    cert: Path
    """PEM certificate chain, the server's own certificate first."""
    key: Path
    """PEM private key of that certificate, unencrypted."""
    client_ca: Path | None = None
    """PEM CA certificate(s) client certificates must chain to; set means mTLS."""

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate (mTLS)."""
        return self.client_ca is not None

    def labelled(self) -> tuple[tuple[str, Path], ...]:
        files: tuple[tuple[str, Path], ...] = ((CERT_FLAG, self.cert), (KEY_FLAG, self.key))
        if self.client_ca is not None:
            files += ((CLIENT_CA_FLAG, self.client_ca),)
        return files


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The checked contents of a ``TlsFiles``, ready for grpc."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    fingerprint: str
    """sha256 of the server certificate (DER), as ``openssl x509 -fingerprint -sha256`` shows."""

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.key, self.cert)], self.client_ca)


def _refuse_password() -> bytes:
    # Called by OpenSSL only for an encrypted key; raising keeps it from prompting.
    raise TlsError("encrypted")


def _read(flag: str, path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise TlsError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > _MAX_PEM_BYTES:
        raise TlsError(f"{flag} {path}: larger than {_MAX_PEM_BYTES} bytes; not a PEM file")
    return data


def _ascii(flag: str, path: Path, data: bytes, what: str) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise TlsError(f"{flag} {path}: not PEM text (expected {what})") from None


def _ssl_reason(exc: ssl.SSLError) -> str:
    reason = getattr(exc, "reason", None)
    return quote(reason if isinstance(reason, str) and reason else str(exc))


def check_certificates(flag: str, path: Path, data: bytes) -> str:
    """Check that ``data`` holds PEM certificates; the DER sha256 of the first."""
    text = _ascii(flag, path, data, "PEM certificates")
    if _PEM_CERT not in data:
        raise TlsError(f"{flag} {path}: no PEM certificate in it "
                       f"(expected a '-----BEGIN CERTIFICATE-----' block)")
    try:
        ssl.create_default_context(cadata=text)
        first = text[text.index(_PEM_CERT.decode()):]
        end = "-----END CERTIFICATE-----"
        der = ssl.PEM_cert_to_DER_cert(first[:first.index(end) + len(end)])
    except (ssl.SSLError, ValueError) as exc:
        reason = _ssl_reason(exc) if isinstance(exc, ssl.SSLError) else quote(str(exc))
        raise TlsError(f"{flag} {path}: not a valid PEM certificate ({reason})") from None
    return hashlib.sha256(der).hexdigest()


def load_material(files: TlsFiles) -> TlsMaterial:
    """Read and check the files; ``TlsError`` naming the flag and file when one is unusable."""
    cert = _read(CERT_FLAG, files.cert)
    key = _read(KEY_FLAG, files.key)
    client_ca = _read(CLIENT_CA_FLAG, files.client_ca) if files.client_ca is not None else None
    fingerprint = check_certificates(CERT_FLAG, files.cert, cert)
    _ascii(KEY_FLAG, files.key, key, "a PEM private key")
    if _PEM_KEY_END not in key:
        raise TlsError(f"{KEY_FLAG} {files.key}: no PEM private key in it "
                       f"(expected a '-----BEGIN PRIVATE KEY-----' block)")
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in key or b"Proc-Type: 4,ENCRYPTED" in key:
        raise TlsError(f"{KEY_FLAG} {files.key}: the private key is encrypted; give it "
                       f"unencrypted and protect the file instead")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert, files.key, password=_refuse_password)
    except TlsError:
        raise TlsError(f"{KEY_FLAG} {files.key}: the private key is encrypted; give it "
                       f"unencrypted and protect the file instead") from None
    except ssl.SSLError as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            raise TlsError(f"{KEY_FLAG} {files.key}: this private key does not belong to the "
                           f"certificate in {CERT_FLAG} {files.cert}") from None
        raise TlsError(f"{KEY_FLAG} {files.key}: not a usable PEM private key for "
                       f"{CERT_FLAG} {files.cert} ({_ssl_reason(exc)})") from None
    except OSError as exc:  # the file went away between the two reads
        raise TlsError(f"{KEY_FLAG} {files.key}: cannot read it: {exc.strerror or exc}") from None
    if client_ca is not None:
        assert files.client_ca is not None
        check_certificates(CLIENT_CA_FLAG, files.client_ca, client_ca)
    # ssl read the pair from the paths again; if either changed meanwhile,
    # what was checked is not what grpc would get.
    if _read(CERT_FLAG, files.cert) != cert or _read(KEY_FLAG, files.key) != key:
        raise TlsError(f"{CERT_FLAG} {files.cert} or {KEY_FLAG} {files.key} changed while "
                       f"being read")
    return TlsMaterial(cert, key, client_ca, fingerprint)


def signature(files: TlsFiles) -> Signature:
    """Each file's (device, inode, mtime in ns, size); None for a file that cannot be seen."""
    return tuple(stat_mark(path) for _, path in files.labelled())


class CertificateReloader:
    """grpc's certificate-configuration fetcher: new files → new configuration, else None.

    grpc calls it (holding the interpreter) on one of its own threads before
    each new connection's handshake, so the common path is a few ``stat``
    calls. It never raises: a broken change is logged once per change and the
    certificate already in use stays.
    """

    def __init__(self, files: TlsFiles, material: TlsMaterial, loaded: Signature) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._loaded = loaded
        self._rejected: Signature | None = None
        self._fingerprint = material.fingerprint
        self.reloads = 0
        """New certificate sets handed to grpc since start."""
        self.failures = 0
        """Changes that could not be used (each logged once)."""

    @property
    def fingerprint(self) -> str:
        """sha256 of the certificate new handshakes get."""
        return self._fingerprint

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            with self._lock:
                return self._fetch()
        except Exception:  # grpc would log and keep the old one too; say why ourselves
            log.exception("TLS certificate reload failed; the previous certificate stays")
            return None

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        seen = signature(self.files)
        if seen == self._loaded or seen == self._rejected:
            return None
        try:
            material = load_material(self.files)
        except TlsError as exc:
            if signature(self.files) != seen:
                return None  # still being written: look again at the next handshake
            self._rejected = seen
            self.failures += 1
            log.error("TLS files changed but cannot be used; the previous certificate stays",
                      extra={"problem": str(exc), "fingerprint": self._fingerprint})
            return None
        if signature(self.files) != seen:
            return None
        self._loaded, self._rejected = seen, None
        self._fingerprint = material.fingerprint
        self.reloads += 1
        log.info("TLS certificate reloaded", extra={
            "cert": str(self.files.cert), "fingerprint": material.fingerprint,
            "mtls": self.files.mutual})
        return material.configuration()


def server_credentials(files: TlsFiles) -> tuple[grpc.ServerCredentials, CertificateReloader]:
    """Credentials for ``Transport.add_secure_port`` and the reloader behind them.

    Raises ``TlsError`` when the files cannot be used now.
    """
    loaded = signature(files)
    material = load_material(files)
    reloader = CertificateReloader(files, material, loaded)
    # grpc's stubs say the fetcher returns a configuration; its docs (and code)
    # take None as "no change", which is what the reloader says most of the time.
    credentials = grpc.dynamic_ssl_server_credentials(
        material.configuration(), reloader,  # type: ignore[arg-type]
        require_client_authentication=files.mutual)
    return credentials, reloader


__all__ = [
    "CertificateReloader",
    "TlsError",
    "TlsFiles",
    "TlsMaterial",
    "load_material",
    "server_credentials",
    "signature",
]
