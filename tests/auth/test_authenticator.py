"""The pre-call hook on its own: identities, refusals, reload, and its cost per call.

The same behaviour through a real server, on both transports, is in
``tests/e2e/test_auth.py``; here are the cases a server cannot easily produce
(a verified client certificate subject) and the time the hook takes.
"""

from __future__ import annotations

import hashlib

import grpc
import pytest

from gatehouse.auth.authenticator import Authenticator
from gatehouse.auth.caller import CALLER, Caller
from gatehouse.auth.keys import parse_keys
from gatehouse.transport import Abort, CallInfo, CallOutcome

CHECK = "/gatehouse.v1.AuthorizationService/Check"
WATCH = "/gatehouse.v1.GraphService/Watch"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


KEYS = f"""
keys:
  - name: svc
    sha256: {digest("k-svc")}
    scopes: [check]
    client_certificates: ["CN=svc,O=Acme"]
  - name: limited
    sha256: {digest("k-limited")}
    scopes: [read]
    rate: {{in_flight: 1}}
"""


def call(method: str, key: str | None = None, subject: str | None = None) -> CallInfo:
    metadata = (("authorization", f"Bearer {key}"),) if key is not None else ()
    return CallInfo(method, (("user-agent", "t"), *metadata), "ipv4:127.0.0.1:1", subject)


def refused(auth: Authenticator, info: CallInfo) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(Abort) as err:
        auth.before(info)
    return err.value.code, err.value.details


OK = CallOutcome(grpc.StatusCode.OK, "", 0.0)


class TestIdentity:
    def test_a_mapped_certificate_subject_stands_in_for_a_key(self) -> None:
        """With mTLS and no key, the certificate's subject names the caller."""
        auth = Authenticator(parse_keys(KEYS, "k.yaml"))
        info = call(CHECK, subject="CN=svc,O=Acme")
        auth.before(info)
        assert info.notes[CALLER] == Caller("svc", frozenset({"check"}))

    def test_an_unmapped_subject_without_a_key_is_unauthenticated(self) -> None:
        """A verified certificate the keys file does not map grants nothing."""
        auth = Authenticator(parse_keys(KEYS, "k.yaml"))
        code, details = refused(auth, call(CHECK, subject="CN=other"))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "CN=other" in details

    def test_an_unknown_key_is_not_rescued_by_a_certificate(self) -> None:
        """A wrong key with a mapped certificate is still refused: the key was meant."""
        auth = Authenticator(parse_keys(KEYS, "k.yaml"))
        code, _ = refused(auth, call(CHECK, key="nope", subject="CN=svc,O=Acme"))
        assert code == grpc.StatusCode.UNAUTHENTICATED

    def test_the_scheme_is_case_insensitive(self) -> None:
        """`bearer`, `Bearer` and `BEARER` all carry the key."""
        auth = Authenticator(parse_keys(KEYS, "k.yaml"))
        info = CallInfo(CHECK, (("authorization", "BEARER k-svc"),), "p")
        auth.before(info)
        assert info.notes[CALLER].name == "svc"


class TestReload:
    def test_a_reload_with_the_same_limits_keeps_the_calls_in_flight(self) -> None:
        """A running call still holds its slot after the table is replaced, and frees it once."""
        table = parse_keys(KEYS, "k.yaml")
        auth = Authenticator(table)
        first = call(WATCH, key="k-limited")
        auth.before(first)
        auth.replace(parse_keys(KEYS, "k.yaml"))
        code, _ = refused(auth, call(WATCH, key="k-limited"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        auth.after(first, OK)
        auth.after(first, OK)  # a second after-hook run gives back nothing more
        limiter = auth.limiter("limited")
        assert limiter is not None and limiter.in_flight == 0
        auth.before(call(WATCH, key="k-limited"))

    def test_a_removed_key_is_refused_from_the_next_call(self) -> None:
        """Once the table no longer holds a key, its calls are UNAUTHENTICATED."""
        auth = Authenticator(parse_keys(KEYS, "k.yaml"))
        auth.replace(parse_keys("keys: []\n", "k.yaml"))
        assert refused(auth, call(CHECK, key="k-svc"))[0] == grpc.StatusCode.UNAUTHENTICATED
