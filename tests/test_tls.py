"""TLS and mTLS on both transports, with toy handlers, over real loopback connections.

Certificates come from the session's ``tls_certs`` fixture (made by the
tests). Every case runs on ``core`` and ``aio``. What a client sees of the
server certificate is read with the standard ``ssl`` module, so a reload is
proven by the certificate a new connection actually gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from gatehouse.transport import Transport
from gatehouse.transport.base import client_subject
from gatehouse.transport.tls import (
    CertificateReloader,
    TlsError,
    TlsFiles,
    load_material,
    server_credentials,
)
from tests.test_transport import SERVICE, TRANSPORTS, Hooks, Served, Toy, make_transport, register
from tests.tls_certs import Issued, TlsCerts

# A channel of its own connection: grpc shares connections between channels
# with the same target and options, and a reload is only seen by new ones.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


@contextlib.contextmanager
def serving_tls(kind: str, files: TlsFiles | None,
                hooks: Hooks | None = None) -> Iterator[tuple[Served, CertificateReloader | None]]:
    """A toy server on ``kind`` listening with TLS from ``files`` (plaintext for None)."""
    toy, recorder = Toy(), hooks or Hooks()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    reloader: CertificateReloader | None = None

    async def build() -> tuple[Transport, int]:
        nonlocal reloader
        server = make_transport(kind)
        register(server, toy)
        server.add_hooks(recorder.before, recorder.after)
        if files is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            credentials, reloader = server_credentials(files)
            port = server.add_secure_port("127.0.0.1:0", credentials)
        assert port
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(build(), loop).result(10)
    served = Served(f"127.0.0.1:{port}", toy, server, loop, recorder)
    try:
        yield served, reloader
    finally:
        served.run(server.stop(0.5))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def tls_channel(port_address: str, certs: TlsCerts, client: Issued | None = None,
                ca: Path | None = None) -> grpc.Channel:
    """A channel to ``localhost`` trusting ``ca`` (the test CA), presenting ``client``."""
    root = (ca or certs.ca.issued.cert).read_bytes()
    credentials = grpc.ssl_channel_credentials(
        root, client.key_pem if client else None, client.cert_pem if client else None)
    port = port_address.rsplit(":", 1)[1]
    return grpc.secure_channel(f"localhost:{port}", credentials, OWN_CONNECTION)


def unary(channel: grpc.Channel, method: str, data: bytes) -> Any:
    return channel.unary_unary(f"/{SERVICE}/{method}")(data, timeout=5)


def refused(channel: grpc.Channel, method: str = "Unary") -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        unary(channel, method, b"x")
    code: grpc.StatusCode = err.value.code()
    return code


def presented(address: str, certs: TlsCerts, client: Issued | None = None) -> x509.Certificate:
    """The certificate a new TLS connection to ``address`` is shown (verified by the test CA)."""
    context = ssl.create_default_context(cafile=str(certs.ca.issued.cert))
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock, \
            context.wrap_socket(sock, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


@pytest.fixture(params=TRANSPORTS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def own_files(tls_certs: TlsCerts, tmp_path: Path) -> TlsFiles:
    """Copies of the server's files a test may replace (mTLS with the test CA)."""
    folder = tmp_path / "served"
    folder.mkdir()
    for src in (tls_certs.server.cert, tls_certs.server.key, tls_certs.ca.issued.cert):
        shutil.copy(src, folder / src.name)
    return TlsFiles(folder / tls_certs.server.cert.name, folder / tls_certs.server.key.name,
                    folder / tls_certs.ca.issued.cert.name)


def replace(target: Path, source: Path) -> None:
    """Swap ``target`` for a copy of ``source`` by rename, as secret volumes do."""
    staged = target.with_suffix(".staged")
    shutil.copy(source, staged)
    os.replace(staged, target)


class TestTls:
    def test_calls_over_tls_are_answered(self, kind: str, tls_certs: TlsCerts) -> None:
        """Inline, async and streaming calls work over TLS verified by the client's CA."""
        files = TlsFiles(tls_certs.server.cert, tls_certs.server.key)
        with serving_tls(kind, files) as (served, _), \
                tls_channel(served.address, tls_certs) as channel:
            assert unary(channel, "Inline", b"ping") == b"inline:ping"
            assert unary(channel, "Unary", b"u") == b"async:u:"
            stream = channel.unary_stream(f"/{SERVICE}/Count")
            assert list(stream(b"2", timeout=5)) == [b"0", b"1"]

    def test_a_plaintext_client_is_refused(self, kind: str, tls_certs: TlsCerts) -> None:
        """A client speaking plaintext to a TLS port gets UNAVAILABLE and reaches no handler."""
        files = TlsFiles(tls_certs.server.cert, tls_certs.server.key)
        with serving_tls(kind, files) as (served, _), \
                grpc.insecure_channel(served.address, OWN_CONNECTION) as channel:
            assert refused(channel) == grpc.StatusCode.UNAVAILABLE
            assert served.toy.reached == [] and served.hooks.seen == []

    def test_a_client_not_trusting_the_server_ca_is_refused(
            self, kind: str, tls_certs: TlsCerts) -> None:
        """A client whose roots do not include the server's CA does not connect."""
        files = TlsFiles(tls_certs.server.cert, tls_certs.server.key)
        with serving_tls(kind, files) as (served, _), \
                tls_channel(served.address, tls_certs,
                            ca=tls_certs.untrusted.issued.cert) as channel:
            assert refused(channel) == grpc.StatusCode.UNAVAILABLE

    def test_without_a_client_ca_a_client_certificate_gives_no_subject(
            self, kind: str, tls_certs: TlsCerts) -> None:
        """TLS without --tls-client-ca never asks for a client certificate: no subject."""
        files = TlsFiles(tls_certs.server.cert, tls_certs.server.key)
        with serving_tls(kind, files) as (served, _), \
                tls_channel(served.address, tls_certs, tls_certs.client) as channel:
            assert unary(channel, "Unary", b"u") == b"async:u:"
            assert [i.client_subject for i in served.hooks.seen] == [None]

    def test_a_plaintext_server_gives_no_subject(self, kind: str) -> None:
        """Without TLS the hooks see no client subject."""
        with serving_tls(kind, None) as (served, _), \
                grpc.insecure_channel(served.address) as channel:
            assert unary(channel, "Inline", b"ping") == b"inline:ping"
            assert [i.client_subject for i in served.hooks.seen] == [None]


class TestMutualTls:
    def test_a_trusted_client_certificate_is_accepted_and_its_subject_seen(
            self, kind: str, tls_certs: TlsCerts) -> None:
        """mTLS: the before-hook and the handlers see the client's subject in RFC 4514 form."""
        files = TlsFiles(tls_certs.server.cert, tls_certs.server.key, tls_certs.ca.issued.cert)
        with serving_tls(kind, files) as (served, _), \
                tls_channel(served.address, tls_certs, tls_certs.client) as channel:
            assert unary(channel, "Inline", b"ping") == b"inline:ping"
            assert unary(channel, "Unary", b"u") == b"async:u:"
            seen = [(i.method, i.client_subject) for i in served.hooks.seen]
            assert seen == [(f"/{SERVICE}/Inline", TlsCerts.CLIENT_SUBJECT),
                            (f"/{SERVICE}/Unary", TlsCerts.CLIENT_SUBJECT)]
            ended = served.hooks.wait_ended(f"/{SERVICE}/Unary")
            assert ended[0].code == grpc.StatusCode.OK

    def test_special_characters_in_a_subject_are_escaped_as_openssl_prints_them(
            self, kind: str, tls_certs: TlsCerts, tmp_path: Path) -> None:
        """Commas, plus signs, quotes and non-ASCII come escaped, as
        `openssl x509 -noout -subject -nameopt RFC2253` shows them: no subject can pose
        as another by embedding ',O=...'."""
        odd = tls_certs.ca.issue(tmp_path, "odd", 'Zoë + "ops",O=acme', server=False,
                                 organization="Acme, Inc.")
        files = TlsFiles(tls_certs.server.cert, tls_certs.server.key, tls_certs.ca.issued.cert)
        with serving_tls(kind, files) as (served, _), \
                tls_channel(served.address, tls_certs, odd) as channel:
            assert unary(channel, "Unary", b"u") == b"async:u:"
        assert [i.client_subject for i in served.hooks.seen] == \
            ['CN=Zo\\C3\\AB \\+ \\"ops\\"\\,O=acme,O=Acme\\, Inc.,C=DE']

    def test_a_client_certificate_from_another_ca_is_refused_at_handshake(
            self, kind: str, tls_certs: TlsCerts) -> None:
        """A certificate the client CA did not sign: UNAVAILABLE, and no hook or handler ran."""
        files = TlsFiles(tls_certs.server.cert, tls_certs.server.key, tls_certs.ca.issued.cert)
        with serving_tls(kind, files) as (served, _), \
                tls_channel(served.address, tls_certs, tls_certs.stranger) as channel:
            assert refused(channel, "Inline") == grpc.StatusCode.UNAVAILABLE
            assert served.hooks.seen == [] and served.toy.reached == []

    def test_a_client_without_a_certificate_is_refused_at_handshake(
            self, kind: str, tls_certs: TlsCerts) -> None:
        """mTLS requires a certificate: a client presenting none gets UNAVAILABLE."""
        files = TlsFiles(tls_certs.server.cert, tls_certs.server.key, tls_certs.ca.issued.cert)
        with serving_tls(kind, files) as (served, _), \
                tls_channel(served.address, tls_certs) as channel:
            assert refused(channel) == grpc.StatusCode.UNAVAILABLE
            assert served.hooks.seen == [] and served.toy.reached == []


class TestReload:
    def test_a_new_certificate_serves_new_connections_without_restart(
            self, kind: str, tls_certs: TlsCerts, own_files: TlsFiles, tmp_path: Path) -> None:
        """Replaced files: the next connection gets the new certificate; open ones go on."""
        fresh = tls_certs.ca.issue(tmp_path / "next", "server", "gatehouse-next.test",
                                   server=True, serial=4242)
        with serving_tls(kind, own_files) as (served, reloader), \
                tls_channel(served.address, tls_certs, tls_certs.client) as old:
            assert unary(old, "Unary", b"before") == b"async:before:"
            first = presented(served.address, tls_certs, tls_certs.client)
            assert common_name(first) == "gatehouse.test"
            replace(own_files.key, fresh.key)
            replace(own_files.cert, fresh.cert)
            now = presented(served.address, tls_certs, tls_certs.client)
            assert (common_name(now), now.serial_number) == ("gatehouse-next.test", 4242)
            with tls_channel(served.address, tls_certs, tls_certs.client) as new:
                assert unary(new, "Unary", b"new") == b"async:new:"
            assert unary(old, "Unary", b"after") == b"async:after:"
            assert reloader is not None and reloader.reloads == 1

    def test_a_broken_replacement_keeps_the_old_certificate_serving(
            self, kind: str, tls_certs: TlsCerts, own_files: TlsFiles, tmp_path: Path,
            caplog: pytest.LogCaptureFixture) -> None:
        """A half-swapped pair (new cert, old key) or garbage is logged; the old one serves."""
        fresh = tls_certs.ca.issue(tmp_path / "next", "server", "gatehouse-next.test",
                                   server=True)
        caplog.set_level(logging.INFO, logger="gatehouse.tls")
        with serving_tls(kind, own_files) as (served, reloader):
            assert reloader is not None
            replace(own_files.cert, fresh.cert)  # the key is still the old one
            for _ in range(3):
                assert common_name(presented(served.address, tls_certs, tls_certs.client)) \
                    == "gatehouse.test"
            with tls_channel(served.address, tls_certs, tls_certs.client) as channel:
                assert unary(channel, "Unary", b"still") == b"async:still:"
            problems = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert len(problems) == 1  # once per change, not once per handshake
            assert str(own_files.key) in getattr(problems[0], "problem", "")
            assert "does not belong" in getattr(problems[0], "problem", "")
            garbage = tmp_path / "garbage.pem"
            garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n")
            replace(own_files.key, garbage)
            assert common_name(presented(served.address, tls_certs, tls_certs.client)) \
                == "gatehouse.test"
            replace(own_files.key, fresh.key)  # the pair is whole again
            assert common_name(presented(served.address, tls_certs, tls_certs.client)) \
                == "gatehouse-next.test"
            assert (reloader.reloads, reloader.failures) == (1, 2)
            assert not any(b"PRIVATE KEY" in r.getMessage().encode() for r in caplog.records)

    def test_a_replaced_client_ca_decides_new_handshakes(
            self, kind: str, tls_certs: TlsCerts, own_files: TlsFiles) -> None:
        """Swapping the client CA file: its clients get in, the old CA's are refused."""
        assert own_files.client_ca is not None
        with serving_tls(kind, own_files) as (served, _):
            with tls_channel(served.address, tls_certs, tls_certs.stranger) as channel:
                assert refused(channel) == grpc.StatusCode.UNAVAILABLE
            replace(own_files.client_ca, tls_certs.untrusted.issued.cert)
            with tls_channel(served.address, tls_certs, tls_certs.stranger) as channel:
                assert unary(channel, "Unary", b"in") == b"async:in:"
            with tls_channel(served.address, tls_certs, tls_certs.client) as channel:
                assert refused(channel) == grpc.StatusCode.UNAVAILABLE
            subjects = {i.client_subject for i in served.hooks.seen}
            assert subjects == {TlsCerts.CLIENT_SUBJECT}  # the stranger's, by its own CA


class TestFiles:
    """``load_material``: every unusable file is named, with the flag it came from."""

    def files(self, certs: TlsCerts, **kw: Path) -> TlsFiles:
        return TlsFiles(kw.get("cert", certs.server.cert), kw.get("key", certs.server.key),
                        kw.get("client_ca", certs.ca.issued.cert))

    def refusal(self, files: TlsFiles) -> str:
        with pytest.raises(TlsError) as err:
            load_material(files)
        return str(err.value)

    def test_good_files_load_with_the_certificate_fingerprint(self, tls_certs: TlsCerts) -> None:
        """The material carries the bytes and the certificate's sha256 fingerprint."""
        material = load_material(self.files(tls_certs))
        cert = x509.load_pem_x509_certificate(tls_certs.server.cert_pem)
        assert material.fingerprint == cert.fingerprint(cert.signature_hash_algorithm
                                                        or x509.hashes.SHA256()).hex()
        assert material.key == tls_certs.server.key_pem

    def test_a_missing_file_is_named(self, tls_certs: TlsCerts, tmp_path: Path) -> None:
        """A file that does not exist: the flag, the path and why."""
        missing = tmp_path / "nope.crt"
        assert self.refusal(self.files(tls_certs, cert=missing)) == \
            f"--tls-cert {missing}: cannot read it: No such file or directory"

    def test_a_file_without_a_certificate_is_named(self, tls_certs: TlsCerts,
                                                   tmp_path: Path) -> None:
        """A certificate or client-CA file with no PEM certificate in it is refused."""
        text = tmp_path / "text.pem"
        text.write_text("hello\n")
        assert "--tls-cert" in self.refusal(self.files(tls_certs, cert=text))
        assert f"--tls-client-ca {text}: no PEM certificate" in \
            self.refusal(self.files(tls_certs, client_ca=text))
        assert f"--tls-key {text}: no PEM private key" in \
            self.refusal(self.files(tls_certs, key=text))

    def test_a_corrupt_certificate_is_named(self, tls_certs: TlsCerts, tmp_path: Path) -> None:
        """A PEM block whose contents are not a certificate is refused."""
        bad = tmp_path / "bad.crt"
        bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        assert self.refusal(self.files(tls_certs, cert=bad)).startswith(
            f"--tls-cert {bad}: not a valid PEM certificate")

    def test_a_key_of_another_certificate_is_named(self, tls_certs: TlsCerts) -> None:
        """The client's key with the server's certificate: the mismatch is said in words."""
        assert self.refusal(self.files(tls_certs, key=tls_certs.client.key)) == (
            f"--tls-key {tls_certs.client.key}: this private key does not belong to the "
            f"certificate in --tls-cert {tls_certs.server.cert}")

    def test_an_encrypted_key_is_refused_without_prompting(self, tls_certs: TlsCerts,
                                                           tmp_path: Path) -> None:
        """An encrypted key is refused (a server cannot type a passphrase)."""
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(tls_certs.server.key_pem, None)
        encrypted = tmp_path / "enc.key"
        encrypted.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret")))
        assert "the private key is encrypted" in \
            self.refusal(self.files(tls_certs, key=encrypted))


class TestClientSubject:
    def test_only_one_utf8_subject_of_a_tls_connection_counts(self) -> None:
        """Anything but exactly one UTF-8 x509_subject on an ssl connection is no identity."""
        ok = {"transport_security_type": [b"ssl"], "x509_subject": [b"CN=a,O=b"]}
        assert client_subject(ok) == "CN=a,O=b"
        assert client_subject(None) is None
        assert client_subject({}) is None
        assert client_subject({**ok, "transport_security_type": [b"insecure"]}) is None
        assert client_subject({**ok, "x509_subject": [b"CN=a", b"CN=b"]}) is None
        assert client_subject({**ok, "x509_subject": [b"CN=\xff"]}) is None
        assert client_subject({"transport_security_type": [b"ssl"]}) is None

