"""The client against a locked-down gatehouse: API keys with scopes and tenants, TLS, mTLS.

One real server (``gatehouse serve --api-keys ... --tls-cert ... --tls-key ...
--tls-client-ca ...``) on loopback, with the repository's test certificates.
The keys file holds four callers:

- ``app``: check, read and write; unbound;
- ``checker``: check only;
- ``acme-only``: check, read and write, bound to organization ``acme``;
- ``billing``: check only, and the client certificate ``TlsCerts.CLIENT_SUBJECT``
  stands in for its key.

Two servers: one with keys and TLS, one with keys and mTLS (``--tls-client-ca``:
every client presents a certificate signed by the test CA; a call that sends a
key acts as that key's owner, one without acts as the certificate's mapped key).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import COUPLER, Gatehouse
from gatehouse_client import (
    TLS,
    AsyncClient,
    Client,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

from tests.tls_certs import TlsCerts

FLOW = "data_flow:acme-sales-pipeline"  # under organization northwind in the sample data


def _key() -> str:
    return "gh_test_" + secrets.token_urlsafe(18)


KEYS = {"app": _key(), "checker": _key(), "acme-only": _key(), "billing": _key()}


def keys_file(folder: Path, certs: TlsCerts) -> Path:
    """The keys file: hashes only, and the client certificate's subject for ``billing``."""
    def digest(name: str) -> str:
        return hashlib.sha256(KEYS[name].encode()).hexdigest()

    path = folder / "keys.yaml"
    path.write_text(f"""keys:
  - name: app
    sha256: {digest("app")}
    scopes: [check, read, write]
  - name: checker
    sha256: {digest("checker")}
    scopes: [check]
  - name: acme-only
    sha256: {digest("acme-only")}
    scopes: [check, read, write]
    organizations: [acme]
  - name: billing
    sha256: {digest("billing")}
    scopes: [check]
    client_certificates: ["{certs.CLIENT_SUBJECT}"]
""")
    return path


def tls(certs: TlsCerts, *, mutual: bool) -> TLS:
    """Verify the server with the test CA (its certificate names 127.0.0.1: no override)."""
    if mutual:
        return TLS(ca=certs.ca.issued.cert, cert=certs.client.cert, key=certs.client.key)
    return TLS(ca=certs.ca.issued.cert)


def _serve(folder: Path, certs: TlsCerts, *, mutual: bool) -> Gatehouse:
    import grpc

    args = [*COUPLER, "--api-keys", str(keys_file(folder, certs)),
            "--tls-cert", str(certs.server.cert), "--tls-key", str(certs.server.key)]
    client = certs.client if mutual else None
    if mutual:
        args += ["--tls-client-ca", str(certs.ca.issued.cert)]
    credentials = grpc.ssl_channel_credentials(
        certs.ca.issued.cert_pem, client.key_pem if client else None,
        client.cert_pem if client else None)
    return Gatehouse(folder, tuple(args), credentials=credentials).start()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, tls_certs: TlsCerts,
               ) -> Iterator[Gatehouse]:
    """Keys and TLS (no client certificates asked for)."""
    server = _serve(tmp_path_factory.mktemp("secured-tls"), tls_certs, mutual=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, tls_certs: TlsCerts,
                ) -> Iterator[Gatehouse]:
    """Keys and mTLS: every client presents a certificate signed by the test CA."""
    server = _serve(tmp_path_factory.mktemp("secured-mtls"), tls_certs, mutual=True)
    yield server
    server.stop()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class TestKeysOverTLS:
    def test_a_key_with_the_scope_is_answered(self, tls_server: Gatehouse,
                                              tls_certs: TlsCerts) -> None:
        """Over TLS verified by the CA, a keyed Check gets its decision."""
        with Client(tls_server.address, api_key=KEYS["app"],
                    tls=tls(tls_certs, mutual=False)) as gh:
            assert gh.check("user:ben", "delete", FLOW).allowed
            assert not gh.check("user:uma", "delete", FLOW).allowed

    def test_no_key_is_unauthenticated(self, tls_server: Gatehouse, tls_certs: TlsCerts,
                                       ) -> None:
        """Without a key the call fails Unauthenticated, never with a decision."""
        with Client(tls_server.address, tls=tls(tls_certs, mutual=False)) as gh, \
                pytest.raises(Unauthenticated, match="no API key"):
            gh.check("user:ben", "delete", FLOW)

    def test_an_unknown_key_is_unauthenticated(self, tls_server: Gatehouse,
                                               tls_certs: TlsCerts) -> None:
        """A key the file does not hold is refused as unknown; it is not echoed back."""
        wrong = _key()
        with Client(tls_server.address, api_key=wrong, tls=tls(tls_certs, mutual=False)) as gh, \
                pytest.raises(Unauthenticated) as err:
            gh.check("user:ben", "delete", FLOW)
        assert wrong not in str(err.value)

    def test_a_missing_scope_is_permission_denied(self, tls_server: Gatehouse,
                                                  tls_certs: TlsCerts) -> None:
        """A check-only key may check but not write: PermissionDenied names key and scope."""
        with Client(tls_server.address, api_key=KEYS["checker"],
                    tls=tls(tls_certs, mutual=False)) as gh:
            assert gh.check("user:ben", "delete", FLOW).allowed
            with pytest.raises(PermissionDenied, match="'checker' lacks scope 'write'"):
                gh.write_relationships(touch=[f"{FLOW}#owner@user:{uid('mallory')}"])

    def test_plaintext_to_a_tls_server_fails(self, tls_server: Gatehouse) -> None:
        """A client without TLS cannot talk to the TLS port (no decision, no fallback)."""
        with Client(tls_server.address, api_key=KEYS["app"], retries=None, timeout=2) as gh, \
                pytest.raises(Unavailable):
            gh.check("user:ben", "delete", FLOW)

    def test_read_your_writes_with_a_key(self, tls_server: Gatehouse, tls_certs: TlsCerts,
                                         ) -> None:
        """A keyed write, then a keyed check on the same client, sees the write."""
        user = uid("newcomer")
        with Client(tls_server.address, api_key=KEYS["app"],
                    tls=tls(tls_certs, mutual=False)) as gh:
            assert not gh.check(f"user:{user}", "edit", FLOW).allowed
            gh.write_relationships(touch=[f"workspace:acme#user@user:{user}"])
            assert gh.revision is not None
            assert gh.check(f"user:{user}", "edit", FLOW).allowed

    def test_the_async_client_carries_key_and_tls(self, tls_server: Gatehouse,
                                                  tls_certs: TlsCerts) -> None:
        """AsyncClient: allowed with the key, Unauthenticated without, PermissionDenied
        for a scope the key lacks."""
        async def run() -> None:
            secure = tls(tls_certs, mutual=False)
            async with AsyncClient(tls_server.address, api_key=KEYS["app"], tls=secure) as gh:
                assert (await gh.check("user:ben", "delete", FLOW)).allowed
            async with AsyncClient(tls_server.address, tls=secure) as gh:
                with pytest.raises(Unauthenticated):
                    await gh.check("user:ben", "delete", FLOW)
            async with AsyncClient(tls_server.address, api_key=KEYS["checker"],
                                   tls=secure) as gh:
                with pytest.raises(PermissionDenied):
                    await gh.write_relationships(touch=[f"{FLOW}#owner@user:{uid('m')}"])

        asyncio.run(run())


class TestTenantBoundKey:
    def test_outside_acme_is_permission_denied(self, tls_server: Gatehouse,
                                               tls_certs: TlsCerts) -> None:
        """A key bound to acme is refused for a flow of another organization (northwind),
        though an unbound key gets an answer for the same question."""
        secure = tls(tls_certs, mutual=False)
        with Client(tls_server.address, api_key=KEYS["app"], tls=secure) as gh:
            assert gh.check("user:ben", "delete", FLOW).allowed
        with Client(tls_server.address, api_key=KEYS["acme-only"], tls=secure) as gh, \
                pytest.raises(PermissionDenied, match="this key may use"):
            gh.check("user:ben", "delete", FLOW)

    def test_inside_acme_it_writes_and_reads_its_writes(self, tls_server: Gatehouse,
                                                        tls_certs: TlsCerts) -> None:
        """The bound key builds a workspace and a flow under organization:acme and its
        next check sees them (sync and asyncio)."""
        ws, flow, owner = uid("ws"), uid("flow"), uid("owner")
        secure = tls(tls_certs, mutual=False)
        with Client(tls_server.address, api_key=KEYS["acme-only"], tls=secure) as gh:
            gh.write_relationships(touch=[
                f"workspace:{ws}#parent@organization:acme",
                f"workspace:{ws}#user@user:{owner}",
                f"data_flow:{flow}#parent@workspace:{ws}"])
            assert gh.check(f"user:{owner}", "edit", f"data_flow:{flow}").allowed
            revision = gh.revision
        assert revision is not None

        async def run() -> None:
            async with AsyncClient(tls_server.address, api_key=KEYS["acme-only"],
                                   tls=secure) as gh:
                gh.observe_revision(revision)
                assert (await gh.check(f"user:{owner}", "edit", f"data_flow:{flow}")).allowed
                with pytest.raises(PermissionDenied):
                    await gh.check("user:ben", "delete", FLOW)

        asyncio.run(run())


class TestMutualTLS:
    def test_the_certificate_stands_in_for_a_key(self, mtls_server: Gatehouse,
                                                 tls_certs: TlsCerts) -> None:
        """With no key, the client certificate's subject makes the caller 'billing':
        it may check (sync and asyncio) and lacks write."""
        secure = tls(tls_certs, mutual=True)
        with Client(mtls_server.address, tls=secure) as gh:
            assert gh.check("user:ben", "delete", FLOW).allowed
            with pytest.raises(PermissionDenied, match="'billing' lacks scope 'write'"):
                gh.write_relationships(touch=[f"{FLOW}#owner@user:{uid('m')}"])

        async def run() -> None:
            async with AsyncClient(mtls_server.address, tls=secure) as gh:
                assert (await gh.check("user:ben", "delete", FLOW)).allowed

        asyncio.run(run())

    def test_a_key_over_mtls_names_the_caller(self, mtls_server: Gatehouse,
                                              tls_certs: TlsCerts) -> None:
        """A key sent over mTLS is the caller: the app key writes where the certificate's
        identity may not."""
        user = uid("writer")
        with Client(mtls_server.address, api_key=KEYS["app"],
                    tls=tls(tls_certs, mutual=True)) as gh:
            gh.write_relationships(touch=[f"workspace:acme#user@user:{user}"])
            assert gh.check(f"user:{user}", "edit", FLOW).allowed

    def test_no_client_certificate_no_connection(self, mtls_server: Gatehouse,
                                                 tls_certs: TlsCerts) -> None:
        """Without a client certificate the handshake fails, key or not."""
        with Client(mtls_server.address, api_key=KEYS["app"], tls=tls(tls_certs, mutual=False),
                    retries=None, timeout=2) as gh, pytest.raises(Unavailable):
            gh.check("user:ben", "delete", FLOW)

    def test_a_certificate_from_another_ca_is_refused(self, mtls_server: Gatehouse,
                                                      tls_certs: TlsCerts) -> None:
        """A client certificate with the mapped subject but an untrusted issuer gets nowhere."""
        stranger = TLS(ca=tls_certs.ca.issued.cert, cert=tls_certs.stranger.cert,
                       key=tls_certs.stranger.key)
        with Client(mtls_server.address, tls=stranger, retries=None, timeout=2) as gh, \
                pytest.raises(Unavailable):
            gh.check("user:ben", "delete", FLOW)


class TestFromEnv:
    """``Client.from_env`` reads what ``gatehouse check`` reads."""

    def env(self, server: Gatehouse, certs: TlsCerts, **extra: str) -> dict[str, str]:
        return {"GATEHOUSE_ADDRESS": server.address,
                "GATEHOUSE_TLS_CA": str(certs.ca.issued.cert), **extra}

    def test_key_and_tls_from_the_environment(self, tls_server: Gatehouse,
                                              tls_certs: TlsCerts) -> None:
        """GATEHOUSE_ADDRESS, GATEHOUSE_API_KEY and GATEHOUSE_TLS_CA make a working client."""
        env = self.env(tls_server, tls_certs, GATEHOUSE_API_KEY=KEYS["app"])
        with Client.from_env(env) as gh:
            assert gh.check("user:ben", "delete", FLOW).allowed
        with Client.from_env(self.env(tls_server, tls_certs)) as gh, \
                pytest.raises(Unauthenticated):
            gh.check("user:ben", "delete", FLOW)

    def test_key_file_wins_over_the_key_variable(self, tls_server: Gatehouse,
                                                 tls_certs: TlsCerts, tmp_path: Path) -> None:
        """GATEHOUSE_API_KEY_FILE (the key in a file, trailing newline ignored) is used
        before GATEHOUSE_API_KEY, as in `gatehouse check`."""
        (tmp_path / "key").write_text(KEYS["checker"] + "\n")
        env = self.env(tls_server, tls_certs, GATEHOUSE_API_KEY=KEYS["app"],
                       GATEHOUSE_API_KEY_FILE=str(tmp_path / "key"))
        with Client.from_env(env) as gh, pytest.raises(PermissionDenied, match="'checker'"):
            gh.write_relationships(touch=[f"{FLOW}#owner@user:{uid('m')}"])

    def test_mtls_and_server_name_from_the_environment(self, mtls_server: Gatehouse,
                                                       tls_certs: TlsCerts) -> None:
        """GATEHOUSE_TLS_CLIENT_CERT/KEY present the certificate (the caller is 'billing');
        GATEHOUSE_TLS_SERVER_NAME is the name checked; AsyncClient reads the same."""
        env = self.env(mtls_server, tls_certs,
                       GATEHOUSE_TLS_CLIENT_CERT=str(tls_certs.client.cert),
                       GATEHOUSE_TLS_CLIENT_KEY=str(tls_certs.client.key),
                       GATEHOUSE_TLS_SERVER_NAME="localhost")
        with Client.from_env(env) as gh:
            assert gh.check("user:ben", "delete", FLOW).allowed

        async def run() -> None:
            async with AsyncClient.from_env(env) as gh:
                assert (await gh.check("user:ben", "delete", FLOW)).allowed

        asyncio.run(run())
        wrong_name = {**env, "GATEHOUSE_TLS_SERVER_NAME": "elsewhere.example"}
        with Client.from_env(wrong_name, retries=None, timeout=2) as gh, \
                pytest.raises(Unavailable):
            gh.check("user:ben", "delete", FLOW)

    def test_defaults_and_os_environ(self, gatehouse: Gatehouse,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
        """With no env argument os.environ is read; a loopback address without TLS
        variables is plaintext, as `gatehouse check` does."""
        for name in ("GATEHOUSE_API_KEY", "GATEHOUSE_API_KEY_FILE", "GATEHOUSE_TLS_CA",
                     "GATEHOUSE_TLS_CLIENT_CERT", "GATEHOUSE_TLS_CLIENT_KEY",
                     "GATEHOUSE_TLS_SERVER_NAME"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("GATEHOUSE_ADDRESS", gatehouse.address)
        with Client.from_env() as gh:
            assert gh.check("user:ben", "delete", FLOW).allowed

    def test_remote_addresses_default_to_tls(self) -> None:
        """A non-loopback address with no TLS variables uses TLS with the system's roots:
        a key never crosses a network in plaintext because a variable was left out."""
        from gatehouse_client import _env

        assert _env.from_env({"GATEHOUSE_ADDRESS": "gatehouse.internal:50051"}).tls == TLS()
        assert _env.from_env({"GATEHOUSE_ADDRESS": "[::1]:50051"}).tls is None
        assert _env.from_env({}).address == "127.0.0.1:50051"

    @pytest.mark.parametrize(("env", "message"), [
        ({"GATEHOUSE_TLS_CLIENT_CERT": "c.pem"}, "GATEHOUSE_TLS_CLIENT_CERT and "
                                                 "GATEHOUSE_TLS_CLIENT_KEY go together"),
        ({"GATEHOUSE_API_KEY_FILE": "/nonexistent/key"}, "GATEHOUSE_API_KEY_FILE .*cannot read"),
        ({"GATEHOUSE_API_KEY": "two words"}, "GATEHOUSE_API_KEY: the key must be one line"),
    ])
    def test_bad_values_name_the_variable(self, env: dict[str, str], message: str) -> None:
        """A half-given certificate, an unreadable key file or a malformed key raises
        ValueError naming the variable (and never quoting the key)."""
        with pytest.raises(ValueError, match=message) as err:
            Client.from_env(env)
        assert "two words" not in str(err.value)

    def test_the_key_is_never_in_repr(self) -> None:
        """The settings read from the environment do not show the key."""
        from gatehouse_client import _env

        found = _env.from_env({"GATEHOUSE_API_KEY": KEYS["app"]})
        assert found.api_key == KEYS["app"]
        assert KEYS["app"] not in repr(found)

    def test_the_same_variables_as_gatehouse_check(self) -> None:
        """Every variable from_env reads is one `gatehouse check` reads, and the README's
        table lists each of them."""
        import re

        from conftest import ROOT
        from gatehouse_client import _env

        read = set(re.findall(r"GATEHOUSE_[A-Z_]+", Path(_env.__file__).read_text()))
        cli = (ROOT / "src" / "gatehouse" / "cli.py").read_text()
        check_part = cli[cli.index('sub.add_parser("check"'):cli.index("chk.set_defaults")]
        by_check = set(re.findall(r"GATEHOUSE_[A-Z_]+", check_part))
        by_check |= set(re.findall(r"GATEHOUSE_[A-Z_]+",
                                   cli[cli.index("def _api_key("):cli.index("def _split(")]))
        readme = (ROOT / "clients" / "python" / "README.md").read_text()
        assert read == by_check
        assert all(f"`{name}`" in readme for name in read)
