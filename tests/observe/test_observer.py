"""The observer through a server's life, in one process: real servers, real HTTP."""

from __future__ import annotations

import asyncio
import http.client
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatehouse.graph.changes import TouchRelationship
from gatehouse.graph.memory import MemoryGraphStore
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.observe import Observer, check_otlp_endpoint, tracing_available
from gatehouse.observe.http import parse_listen
from gatehouse.policy.loader import load_policy
from gatehouse.runtime import Runtime
from gatehouse.server import Server, ServerConfig
from gatehouse.transport import open_transport

ROOT = Path(__file__).resolve().parent.parent.parent


def get(address: str, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(address, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


async def fetch(address: str, path: str) -> tuple[int, str]:
    # From a thread: a scrape asks the store's head revision on this very loop.
    return await asyncio.to_thread(get, address, path)


async def start(observer: Observer) -> Server:
    runtime = await Runtime.start(load_policy(ROOT / "policies" / "coupler"), MemoryGraphStore())
    transport = await open_transport("aio", [])
    return Server(ServerConfig(listen="127.0.0.1:0", watch_policy=False), runtime, transport,
                  observer=observer)


class TestObserver:
    def test_readyz_follows_the_servers_life(self) -> None:
        """/readyz is 503 while the index builds and until gRPC serves, 200 while serving,
        503 once shutdown begins; /healthz is 200 throughout; the port closes at the end."""
        async def main() -> list[tuple[int, str]]:
            observer = Observer("127.0.0.1:0")
            await observer.open()
            address = observer.metrics_address
            assert address is not None and not address.endswith(":0")
            seen = [await fetch(address, "/readyz"), await fetch(address, "/healthz")]
            server = await start(observer)
            seen.append(await fetch(address, "/readyz"))
            await server.start()
            seen.append(await fetch(address, "/readyz"))
            observer.stopping()
            seen.append(await fetch(address, "/readyz"))
            seen.append(await fetch(address, "/healthz"))
            await server.stop()
            with pytest.raises(OSError):
                await fetch(address, "/healthz")
            return seen

        assert asyncio.run(main()) == [
            (503, "starting: building the index\n"), (200, "ok\n"),
            (503, "starting: the gRPC server is not serving yet\n"), (200, "ready\n"),
            (503, "shutting down\n"), (200, "ok\n")]

    def test_servers_one_after_another_each_report_their_own_state(self) -> None:
        """A stopped server's gauges leave /metrics with it, so the next server in the same
        process registers its own (no duplicate series, no stale revision)."""
        async def one(writes: int) -> float:
            observer = Observer("127.0.0.1:0")
            await observer.open()
            server = await start(observer)
            await server.start()
            try:
                for i in range(writes):
                    ws = ObjectRef("workspace", f"w{i}")
                    revision = await server.runtime.graph.write([
                        TouchRelationship(Relationship(ws, "parent",
                                                       ObjectRef("organization", "o"))),
                        TouchRelationship(Relationship(ws, "user", ObjectRef("user", "u")))])
                    await server.runtime.follower.wait_for(revision, 5)
                assert observer.metrics_address is not None
                status, text = await fetch(observer.metrics_address, "/metrics")
                assert status == 200
                families = {f.name: f for f in text_string_to_metric_families(text)}
                assert families["gatehouse_store_healthy"].samples[0].value == 1
                return families["gatehouse_index_revision"].samples[0].value
            finally:
                await server.stop()

        assert asyncio.run(one(2)) == 2
        assert asyncio.run(one(0)) == 0

    def test_two_servers_at_once_keep_serving(self) -> None:
        """A second server with metrics in the same process starts and serves; only the first
        one's gauges are reported (the request counters are shared)."""
        async def main() -> tuple[int, int]:
            first, second = Observer("127.0.0.1:0"), Observer("127.0.0.1:0")
            await first.open()
            await second.open()
            a, b = await start(first), await start(second)
            await a.start()
            await b.start()
            try:
                assert second.metrics_address is not None
                return (await fetch(second.metrics_address, "/readyz"))[0], \
                    (await fetch(second.metrics_address, "/metrics"))[0]
            finally:
                await b.stop()
                await a.stop()

        assert asyncio.run(main()) == (200, 200)


class TestConfiguration:
    @pytest.mark.parametrize(("text", "parsed"), [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:0", ("::1", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)), ("localhost:1", ("localhost", 1)),
    ])
    def test_listen_addresses(self, text: str, parsed: tuple[str, int]) -> None:
        """HOST:PORT parses, IPv6 in brackets included."""
        assert parse_listen(text) == parsed

    @pytest.mark.parametrize("text", ["", "9464", ":9464", "host:", "host:-1", "host:65536",
                                      "host:9464x", "host:" + "9" * 50])
    def test_bad_listen_addresses(self, text: str) -> None:
        """Anything else is refused, quoting at most a short prefix of it."""
        with pytest.raises(ValueError, match="--metrics-listen") as err:
            parse_listen(text)
        assert len(str(err.value)) < 200

    def test_otlp_endpoints(self) -> None:
        """An OTLP endpoint is an http:// or https:// URL with a host."""
        assert check_otlp_endpoint("http://otel:4317") == "http://otel:4317"
        for bad in ("otel:4317", "grpc://otel:4317", "http://", "https:///",
                    "https://user:s3cret@otel:4317"):
            with pytest.raises(ValueError, match="--otlp-endpoint") as err:
                check_otlp_endpoint(bad)
            assert "s3cret" not in str(err.value)

    def test_tracing_extra_is_installed_for_the_tests(self) -> None:
        """`make test` installs the tracing extra, so its tests run rather than skip."""
        assert tracing_available()
