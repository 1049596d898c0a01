"""Certificates made for the tests: a CA, server and client certificates, an untrusted CA.

Made with ``cryptography`` once per session (EC P-256 keys: quick to make);
nothing in the repository holds a key. The server certificate names
``localhost`` and ``127.0.0.1``, so clients verify it the way they would in
production, by name, with no override.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its key, as PEM files on disk (and as bytes)."""

    cert: Path
    key: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA that can issue certificates into ``folder``."""

    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    issued: Issued

    @classmethod
    def create(cls, folder: Path, common_name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gatehouse tests"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                             crl_sign=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        slug = common_name.replace(" ", "-")
        return cls(name, key, _write(folder, slug, cert, key))

    def issue(self, folder: Path, slug: str, common_name: str, *, server: bool,
              organization: str = "acme", serial: int | None = None,
              dns_names: tuple[str, ...] | None = None) -> Issued:
        """A leaf certificate: for a server (localhost and 127.0.0.1, or only ``dns_names``
        when given) or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                             x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name)
                   .public_key(key.public_key())
                   .serial_number(serial if serial is not None else x509.random_serial_number())
                   .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True))
        if server:
            names: list[x509.GeneralName] = (
                [x509.DNSName(n) for n in dns_names] if dns_names is not None else
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(x509.SubjectAlternativeName(names),
                critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return _write(folder, slug, builder.sign(self.key, hashes.SHA256()), key)


def _write(folder: Path, slug: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> Issued:
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{slug}.crt", folder / f"{slug}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return Issued(cert_path, key_path)


@dataclass(frozen=True, slots=True)
class TlsCerts:
    """Everything a TLS test needs; ``ca`` signs the rest except ``stranger``."""

    folder: Path
    ca: Authority
    server: Issued
    """For localhost and 127.0.0.1, signed by ``ca``."""
    client: Issued
    """Subject ``CN=billing-service,O=acme,C=DE``, signed by ``ca``."""
    stranger: Issued
    """A client certificate signed by ``untrusted`` (the server must refuse it)."""
    untrusted: Authority

    CLIENT_SUBJECT = "CN=billing-service,O=acme,C=DE"
    """How the transports report ``client``'s subject (RFC 4514 order, most specific first)."""


def make_certs(folder: Path) -> TlsCerts:
    ca = Authority.create(folder, "gatehouse test CA")
    untrusted = Authority.create(folder, "untrusted CA")
    return TlsCerts(
        folder=folder,
        ca=ca,
        server=ca.issue(folder, "server", "gatehouse.test", server=True),
        client=ca.issue(folder, "client", "billing-service", server=False),
        stranger=untrusted.issue(folder, "stranger", "billing-service", server=False),
        untrusted=untrusted,
    )
