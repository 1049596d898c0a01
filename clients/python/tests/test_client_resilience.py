"""Retries, deadlines, error mapping, API keys and TLS.

Most cases run against ``ScriptedServer`` (a real gRPC server answering
what the test decides, recording every attempt); the restart case stops and
starts a real gatehouse on the same port while a read is retrying.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import grpc
import pytest
from conftest import Gatehouse, ScriptedServer
from gatehouse_client import (
    TLS,
    Aborted,
    AlreadyExists,
    AsyncClient,
    Cancelled,
    Client,
    CreateWorkspace,
    DeadlineExceeded,
    FailedPrecondition,
    GatehouseError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Retry,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    UsageEvent,
)
from gatehouse_client._pb.gatehouse.v1 import authorization_pb2 as authz
from gatehouse_client._pb.gatehouse.v1 import graph_pb2
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from tests.tls_certs import TlsCerts

Make = Callable[..., ScriptedServer]
ALLOW = authz.CheckResponse(decision=authz.DECISION_ALLOW, revision="7").SerializeToString()
FAST = Retry(attempts=3, initial_backoff=0.01, max_backoff=0.02)


def failing(code: grpc.StatusCode, details: str = "down", times: int = 10**9,
            then: bytes = ALLOW) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    """Fail the first ``times`` calls with ``code``, then answer ``then``."""
    count = [0]

    def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
        count[0] += 1
        if count[0] <= times:
            context.abort(code, details)
        return then

    return answer


class TestRetries:
    def test_a_read_is_retried_until_it_succeeds(self, scripted: Make) -> None:
        """Two UNAVAILABLE answers, then ALLOW: the caller only sees the ALLOW."""
        server = scripted(failing(grpc.StatusCode.UNAVAILABLE, times=2))
        with Client(server.address, retries=FAST) as c:
            assert c.check("user:a", "view", "doc:1").allowed
        assert server.methods() == ["Check"] * 3

    def test_a_read_gives_up_after_its_attempts(self, scripted: Make) -> None:
        """With three attempts allowed, the third UNAVAILABLE is raised with the details."""
        server = scripted(failing(grpc.StatusCode.UNAVAILABLE, "store down"))
        with Client(server.address, retries=FAST) as c, pytest.raises(Unavailable) as err:
            c.check_bulk([("user:a", "view", "doc:1")])
        assert err.value.details == "store down" and err.value.method == "CheckBulk"
        assert server.methods() == ["CheckBulk"] * 3

    def test_writes_are_never_retried(self, scripted: Make) -> None:
        """Graph writes and tenancy operations are sent once, whatever the retry policy."""
        server = scripted(failing(grpc.StatusCode.UNAVAILABLE))
        with Client(server.address, retries=Retry(attempts=10, initial_backoff=0.001)) as c:
            calls: list[Callable[[], object]] = [
                lambda: c.write_relationships(touch=["doc:1#viewer@user:a"]),
                lambda: c.delete_relationships("doc", resource_id="1"),
                lambda: c.write_objects(put={"user:a": {"email": "a@x"}}),
                lambda: c.tenancy.invite_member("user:o", "workspace:w", "a@x", "user"),
                lambda: c.tenancy.create_organization("user:o", "Org"),
            ]
            for call in calls:
                with pytest.raises(Unavailable):
                    call()
        assert server.methods() == ["WriteRelationships", "DeleteRelationships", "WriteObjects",
                                    "InviteMember", "CreateOrganization"]

    def test_record_usage_is_retried_its_event_ids_make_it_safe(self, scripted: Make) -> None:
        """RecordUsage is idempotent by event id, so UNAVAILABLE is retried."""
        server = scripted(failing(grpc.StatusCode.UNAVAILABLE, times=1, then=b""))
        with Client(server.address, retries=FAST) as c:
            assert c.record_usage("org", [UsageEvent("e1", "credits", 1)]) == []
        assert server.methods() == ["RecordUsage"] * 2

    @pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED,
                                      grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      grpc.StatusCode.DEADLINE_EXCEEDED])
    def test_only_unavailable_is_retried(self, scripted: Make, code: grpc.StatusCode) -> None:
        """Any other failure of a read is raised after one attempt."""
        server = scripted(failing(code))
        with Client(server.address, retries=FAST) as c, pytest.raises(GatehouseError):
            c.check("user:a", "view", "doc:1")
        assert server.methods() == ["Check"]

    def test_retries_never_outlive_the_deadline(self, scripted: Make) -> None:
        """A thousand attempts allowed, half a second of deadline: the call ends in time."""
        server = scripted(failing(grpc.StatusCode.UNAVAILABLE))
        retry = Retry(attempts=1000, initial_backoff=0.05, max_backoff=0.1)
        with Client(server.address, retries=retry, timeout=0.5) as c, \
                pytest.raises(Unavailable):
            c.compute_usage("org")
        # It retried, and stopped when the deadline was spent (not after 1000 attempts).
        assert 1 < len(server.methods()) < 1000

    def test_a_listing_resumes_without_repeating_ids(self, scripted: Make) -> None:
        """A page that fails after two ids is asked again; the caller sees each id once."""
        count = [0]

        def answer(request: bytes, context: grpc.ServicerContext) -> object:
            count[0] += 1
            ids = authz.ListAccessibleResponse(resource_ids=["a", "b"]).SerializeToString()
            if count[0] == 1:
                return ([ids], grpc.StatusCode.UNAVAILABLE, "restarting")
            return [ids, authz.ListAccessibleResponse(resource_ids=["c"], complete=True,
                                                      revision="3").SerializeToString()]

        server = scripted(answer)
        with Client(server.address, retries=FAST) as c:
            assert list(c.list_accessible("user:a", "view", "doc")) == ["a", "b", "c"]
        assert server.methods() == ["ListAccessible"] * 2

    def test_a_relationship_page_is_not_resumed_after_items(self, scripted: Make) -> None:
        """ReadRelationships has no resumable order: a failure after an item is raised."""
        rel = graph_pb2.ReadRelationshipsResponse(relationship=graph_pb2.Relationship(
            resource=authz.ObjectReference(type="doc", id="1"), relation="viewer",
            subject=authz.ObjectReference(type="user", id="a"))).SerializeToString()
        server = scripted(lambda req, ctx: ([rel], grpc.StatusCode.UNAVAILABLE, "gone"))
        with Client(server.address, retries=FAST) as c:
            seen = []
            with pytest.raises(Unavailable):
                for r in c.read_relationships("doc"):
                    seen.append(str(r))
        assert seen == ["doc:1#viewer@user:a"]
        assert server.methods() == ["ReadRelationships"]

    def test_a_page_without_an_end_is_an_error(self, scripted: Make) -> None:
        """A stream that stops without a cursor or completion never passes for a full list."""
        msg = authz.ListAccessibleResponse(resource_ids=["a"]).SerializeToString()
        server = scripted(lambda req, ctx: [msg])
        with Client(server.address) as c, pytest.raises(Internal, match="without a cursor"):
            list(c.list_accessible("user:a", "view", "doc"))

    def test_the_async_client_retries_the_same_way(self, scripted: Make) -> None:
        """AsyncClient: reads retried, writes sent once."""
        server = scripted(failing(grpc.StatusCode.UNAVAILABLE, times=2))

        async def run() -> None:
            async with AsyncClient(server.address, retries=FAST) as c:
                assert (await c.check("user:a", "view", "doc:1")).allowed
                server.answer = failing(grpc.StatusCode.UNAVAILABLE)
                with pytest.raises(Unavailable):
                    await c.write_relationships(touch=["doc:1#viewer@user:a"])
                with pytest.raises(Unavailable):
                    await c.check_limit("org", CreateWorkspace())

        asyncio.run(run())
        assert server.methods() == ["Check"] * 3 + ["WriteRelationships"] + ["CheckLimit"] * 3


class TestRestart:
    def test_a_read_rides_out_a_restart_and_a_write_fails_fast(
            self, own_gatehouse: Gatehouse) -> None:
        """The server stops; a check keeps retrying until it is back on the same port. A
        write sent while it is down fails at once with Unavailable."""
        retry = Retry(attempts=500, initial_backoff=0.05, max_backoff=0.3)
        with Client(own_gatehouse.address, retries=retry, timeout=60) as c:
            assert c.check("user:uma", "edit", "data_flow:acme-sales-pipeline").allowed
            own_gatehouse.stop()
            with pytest.raises(Unavailable):  # not retried: the restart below comes later
                c.write_relationships(touch=["workspace:acme#guest@user:zoe"])

            restarted = threading.Event()

            def restart() -> None:
                time.sleep(1.0)
                own_gatehouse.start()
                restarted.set()

            thread = threading.Thread(target=restart)
            thread.start()
            start = time.monotonic()
            try:
                decision = c.check("user:uma", "edit", "data_flow:acme-sales-pipeline")
                waited = time.monotonic() - start
            finally:
                thread.join()
            assert decision.allowed and restarted.is_set()
            assert waited >= 1.0  # it was down when the check began


class TestDeadlines:
    def test_the_default_timeout_and_a_per_call_override(self, scripted: Make) -> None:
        """A server slower than the default timeout gives DeadlineExceeded; a longer
        per-call timeout gets the answer."""
        def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
            time.sleep(0.6)
            return ALLOW

        server = scripted(slow)
        with Client(server.address, timeout=0.2, retries=FAST) as c:
            with pytest.raises(DeadlineExceeded):  # the server would answer at 0.6 s
                c.check("user:a", "view", "doc:1")
            assert c.check("user:a", "view", "doc:1", timeout=5).allowed
        assert server.methods() == ["Check", "Check"]

    @pytest.mark.parametrize("bad", [0, -1, "1", True])
    def test_timeouts_must_be_positive_numbers(self, bad: object) -> None:
        """A zero, negative or non-numeric timeout is refused when the client is made."""
        with pytest.raises(ValueError, match="timeout"):
            Client("127.0.0.1:1", timeout=bad)  # type: ignore[arg-type]
        with Client("127.0.0.1:1") as c:
            for call in (lambda: c.check("user:a", "view", "doc:1", timeout=bad),
                         lambda: c.list_accessible("user:a", "view", "doc", timeout=bad)):
                with pytest.raises(ValueError, match="timeout"):
                    call()


class TestErrors:
    @pytest.mark.parametrize(("code", "cls"), [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.OUT_OF_RANGE, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExists),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.ABORTED, Aborted),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.CANCELLED, Cancelled),
        (grpc.StatusCode.UNIMPLEMENTED, Unimplemented),
        (grpc.StatusCode.INTERNAL, Internal),
        (grpc.StatusCode.UNKNOWN, Internal),
        (grpc.StatusCode.DATA_LOSS, Internal),
    ])
    def test_each_status_has_its_exception(self, scripted: Make, code: grpc.StatusCode,
                                           cls: type[GatehouseError]) -> None:
        """The status maps to one class, keeping the code, the server's message and the
        method; and the async client maps it the same."""
        server = scripted(failing(code, "field: what is wrong"))
        with Client(server.address, retries=None) as c, pytest.raises(cls) as err:
            c.check("user:a", "view", "doc:1")
        assert type(err.value) is cls
        assert (err.value.code, err.value.details, err.value.method) == (
            code, "field: what is wrong", "Check")
        assert len(server.calls) == 1  # retries=None: one attempt, even for UNAVAILABLE

        async def run() -> None:
            async with AsyncClient(server.address, retries=None) as c:
                with pytest.raises(cls):
                    await c.check("user:a", "view", "doc:1")

        asyncio.run(run())

    def test_resource_exhausted_carries_the_servers_retry_info(self, scripted: Make) -> None:
        """RetryInfo in the status details, or a retry-after trailer, becomes retry_after."""
        def limited(request: bytes, context: grpc.ServicerContext) -> bytes:
            info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=250_000_000))
            status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                                       message="rate limit of key 'billing'")
            status.details.add().Pack(info)
            context.set_trailing_metadata((("grpc-status-details-bin",
                                            status.SerializeToString()),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit of key 'billing'")

        server = scripted(limited)
        with Client(server.address) as c, pytest.raises(ResourceExhausted) as err:
            c.check("user:a", "view", "doc:1")
        assert err.value.retry_after == 0.25

        async def run() -> float | None:
            async with AsyncClient(server.address) as c:
                with pytest.raises(ResourceExhausted) as aerr:
                    await c.check("user:a", "view", "doc:1")
                return aerr.value.retry_after

        assert asyncio.run(run()) == 0.25

        def trailer(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.set_trailing_metadata((("retry-after", "2"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")

        server.answer = trailer
        with Client(server.address) as c, pytest.raises(ResourceExhausted) as err:
            c.check("user:a", "view", "doc:1")
        assert err.value.retry_after == 2.0

    def test_malformed_input_is_never_sent(self, scripted: Make) -> None:
        """Bad references, relationships, revisions and changes fail before any call."""
        server = scripted(lambda req, ctx: ALLOW)
        from gatehouse_client import Consistency

        with Client(server.address) as c:
            bad: list[Callable[[], object]] = [
                lambda: c.check("uma", "view", "doc:1"),
                lambda: c.check_bulk([("user:a", "view")]),  # type: ignore[list-item]
                lambda: c.list_accessible("user:a", "view", "doc", within="acme"),
                lambda: c.write_relationships(touch=["doc:1#viewer"]),
                lambda: c.check("user:a", "view", "doc:1",
                                consistency=Consistency.at_least("next")),
                lambda: c.check_limit("org", "one more workspace"),  # type: ignore[arg-type]
                lambda: c.tenancy.add_domain("user:o", "org", "x.com", "sometimes"),
                lambda: c.record_usage("org", [{"event_id": "e"}]),  # type: ignore[list-item]
                lambda: c.check("user:a", "view", "doc:1", context={"when": object()}),
            ]
            for call in bad:
                with pytest.raises(InvalidArgument):
                    call()
        assert server.calls == []

    def test_errors_survive_pickling(self) -> None:
        """An error sent to another process (pickle) keeps its class and fields."""
        import pickle

        from gatehouse_client.errors import error_for

        for err in (error_for(grpc.StatusCode.PERMISSION_DENIED, "no", "Check"),
                    error_for(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow", "Check", 1.5)):
            back = pickle.loads(pickle.dumps(err))
            assert type(back) is type(err) and str(back) == str(err)
            assert (back.code, back.details, back.method) == (err.code, err.details, err.method)
        assert back.retry_after == 1.5  # type: ignore[attr-defined]

    def test_a_closed_port_is_unavailable(self) -> None:
        """Nothing listening: Unavailable after the retries, never a hang or an allow."""
        with Client("127.0.0.1:1", retries=FAST, timeout=2) as c, pytest.raises(Unavailable):
            c.check("user:a", "view", "doc:1")


class TestApiKey:
    def test_the_key_is_sent_as_a_bearer_token(self, scripted: Make) -> None:
        """Every call (sync and async) carries authorization: Bearer <key>; none without a key."""
        server = scripted(lambda req, ctx: ALLOW)
        with Client(server.address, api_key="gh_test_123") as c:
            c.check("user:a", "view", "doc:1")
            assert "gh_test_123" not in repr(c)

        async def run() -> None:
            async with AsyncClient(server.address, api_key="gh_async_456") as c:
                await c.check("user:a", "view", "doc:1")

        asyncio.run(run())
        with Client(server.address) as c:
            c.check("user:a", "view", "doc:1")
        assert [call.metadata.get("authorization") for call in server.calls] == [
            "Bearer gh_test_123", "Bearer gh_async_456", None]
        assert server.calls[0].metadata["user-agent"].startswith("gatehouse-client/")

    @pytest.mark.parametrize("key", ["", "two\nlines"])
    def test_malformed_keys_are_refused(self, key: str) -> None:
        """An empty key, or one that would break the metadata line, is refused."""
        with pytest.raises(ValueError, match="api_key"):
            Client("127.0.0.1:1", api_key=key)


class TestTLS:
    def _server(self, scripted: Make, certs: TlsCerts, client_ca: bool) -> ScriptedServer:
        """A server whose certificate names only gatehouse.test (not the address dialled)."""
        named = certs.ca.issue(certs.folder / "named", "server", "gatehouse.test", server=True,
                               dns_names=("gatehouse.test",))
        creds = grpc.ssl_server_credentials(
            [(named.key_pem, named.cert_pem)],
            root_certificates=certs.ca.issued.cert_pem if client_ca else None,
            require_client_auth=client_ca)
        return scripted(lambda req, ctx: ALLOW, creds)

    def test_tls_with_a_private_ca(self, scripted: Make, tls_certs: TlsCerts) -> None:
        """The CA from a path (or bytes) and the certificate's name: the call succeeds; a
        plaintext client or one trusting only the system roots cannot connect."""
        server = self._server(scripted, tls_certs, client_ca=False)
        tls = TLS(ca=tls_certs.ca.issued.cert, server_name="gatehouse.test")
        with Client(server.address, tls=tls, api_key="k") as c:
            assert c.check("user:a", "view", "doc:1").allowed
        as_bytes = TLS(ca=tls_certs.ca.issued.cert_pem, server_name="gatehouse.test")

        async def run() -> None:
            async with AsyncClient(server.address, tls=as_bytes) as c:
                assert (await c.check("user:a", "view", "doc:1")).allowed

        asyncio.run(run())
        for other in (None, TLS(server_name="gatehouse.test")):
            with Client(server.address, tls=other, retries=None, timeout=2) as c, \
                    pytest.raises(Unavailable):
                c.check("user:a", "view", "doc:1")
        assert len(server.calls) == 2

    def test_mutual_tls(self, scripted: Make, tls_certs: TlsCerts) -> None:
        """A server that requires client certificates accepts the client's and refuses a
        client without one."""
        server = self._server(scripted, tls_certs, client_ca=True)
        mtls = TLS(ca=str(tls_certs.ca.issued.cert), cert=tls_certs.client.cert,
                   key=tls_certs.client.key, server_name="gatehouse.test")
        with Client(server.address, tls=mtls) as c:
            assert c.check("user:a", "view", "doc:1").allowed
        plain = TLS(ca=tls_certs.ca.issued.cert, server_name="gatehouse.test")
        with Client(server.address, tls=plain, retries=None, timeout=2) as c, \
                pytest.raises(Unavailable):
            c.check("user:a", "view", "doc:1")
        assert len(server.calls) == 1
        assert "key=" not in repr(mtls)

    def test_configuration_errors_name_the_field(self, tls_certs: TlsCerts) -> None:
        """A certificate without its key, or an unreadable CA file, names the field."""
        with pytest.raises(ValueError, match="cert and key go together"):
            TLS(cert=tls_certs.client.cert)
        with pytest.raises(ValueError, match=r"tls\.ca: cannot read"):
            Client("127.0.0.1:1", tls=TLS(ca=tls_certs.folder / "missing.pem"))
