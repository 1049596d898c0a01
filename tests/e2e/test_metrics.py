"""Prometheus metrics and HTTP probes (``--metrics-listen``), scraped over real HTTP from
real server processes."""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatehouse.observe.http import MAX_CONNECTIONS
from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import authorization_pb2_grpc as apb_grpc
from gatehouse.v1 import graph_pb2 as pb
from gatehouse.v1 import graph_pb2_grpc as pb_grpc
from tests.conftest import GATEHOUSE, ROOT, ServerProcess, free_port, start_server, wait_serving
from tests.e2e.test_graph_service import ref, update
from tests.redis_server import RedisServer

CHECK = "gatehouse.v1.AuthorizationService/Check"
WRITE = "gatehouse.v1.GraphService/WriteRelationships"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(address: str, path: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
    conn = http.client.HTTPConnection(address, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), dict(resp.getheaders())
    finally:
        conn.close()


def scrape(address: str) -> Samples:
    status, text, headers = get(address, "/metrics")
    assert status == 200, text
    assert headers["Content-Type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests(samples: Samples, method: str, code: str) -> float:
    return value(samples, "gatehouse_requests_total", method=method, code=code)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)  # poll interval of a bounded wait


def settled(metrics: str, done: Callable[[Samples], bool]) -> Samples:
    """A scrape once ``done`` holds: a call is counted by the post-call hook, which may run
    a moment after the client has its answer (grpc.aio sends an error status first)."""
    samples = scrape(metrics)
    deadline = time.monotonic() + 10
    while not done(samples) and time.monotonic() < deadline:
        time.sleep(0.02)  # poll interval of a bounded wait
        samples = scrape(metrics)
    return samples


def with_metrics(tmp: Path, *args: str) -> tuple[ServerProcess, str]:
    metrics = f"127.0.0.1:{free_port()}"
    return start_server(tmp, "--metrics-listen", metrics, *args), metrics


class Served(NamedTuple):
    server: ServerProcess
    metrics: str
    transport: str


@pytest.fixture(scope="module", params=["core", "aio"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Served]:
    server, metrics = with_metrics(tmp_path_factory.mktemp(request.param), "--transport",
                                   request.param, "--policy", "policies/coupler", "--data",
                                   "examples/coupler.data.yaml")
    yield Served(server, metrics, request.param)
    server.stop()


class TestRequestMetrics:
    def test_calls_are_counted_per_method_and_status_code(
            self, served: Served) -> None:
        """Checks, a write and a refused call each add one to their (method, code) counter and
        one observation to their method's latency histogram."""
        server, metrics, _ = served
        channel = server.channel()
        authz = apb_grpc.AuthorizationServiceStub(channel)
        graph = pb_grpc.GraphServiceStub(channel)
        before = scrape(metrics)
        for _ in range(3):
            authz.Check(apb.CheckRequest(subject=ref("user:uma"), action="edit",
                                         resource=ref("data_flow:acme-sales-pipeline")),
                        timeout=10)
        graph.WriteRelationships(pb.WriteRelationshipsRequest(
            updates=[update(f"workspace:initech#guest@user:m{uuid.uuid4().hex[:8]}")]),
            timeout=10)
        with pytest.raises(grpc.RpcError) as info:
            authz.Check(apb.CheckRequest(subject=ref("nocolon"), action="edit",
                                         resource=ref("data_flow:acme-sales-pipeline")),
                        timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        after = settled(metrics, lambda s: requests(s, CHECK, "INVALID_ARGUMENT") >
                        requests(before, CHECK, "INVALID_ARGUMENT"))
        assert requests(after, CHECK, "OK") - requests(before, CHECK, "OK") == 3
        assert requests(after, CHECK, "INVALID_ARGUMENT") - \
            requests(before, CHECK, "INVALID_ARGUMENT") == 1
        assert requests(after, WRITE, "OK") - requests(before, WRITE, "OK") == 1
        count = "gatehouse_request_duration_seconds_count"
        assert value(after, count, method=CHECK) - value(before, count, method=CHECK) == 4
        buckets = {labels for name, labels in after
                   if name == "gatehouse_request_duration_seconds_bucket"
                   and ("method", CHECK) in labels}
        assert {dict(b)["le"] for b in buckets} >= {"0.001", "0.01", "+Inf"}
        assert value(after, "gatehouse_request_duration_seconds_bucket", method=CHECK,
                     le="+Inf") == value(after, count, method=CHECK)
        assert value(after, "gatehouse_request_duration_seconds_sum", method=CHECK) > 0

    def test_a_method_the_server_lacks_is_counted_as_other(
            self, served: Served) -> None:
        """A call to a path the server does not serve counts under method="other": what a
        client sends cannot add label values."""
        server, metrics, _ = served
        path = f"/made.Up/Method{uuid.uuid4().hex[:6]}"
        call = server.channel().unary_unary(path)
        before = scrape(metrics)
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        after = settled(metrics, lambda s: requests(s, "other", "UNIMPLEMENTED") >
                        requests(before, "other", "UNIMPLEMENTED"))
        assert requests(after, "other", "UNIMPLEMENTED") - \
            requests(before, "other", "UNIMPLEMENTED") == 1
        assert not any(path[1:] in str(labels) for _, labels in after)

    def test_server_state_is_reported(self, served: Served) -> None:
        """The index revision is the revision answers are served at, the store is healthy,
        nothing lags, and the transport and policy version in force are named."""
        server, metrics, _ = served
        authz = apb_grpc.AuthorizationServiceStub(server.channel())
        graph = pb_grpc.GraphServiceStub(server.channel())
        written = graph.WriteRelationships(pb.WriteRelationshipsRequest(
            updates=[update(f"workspace:initech#guest@user:s{uuid.uuid4().hex[:8]}")]),
            timeout=10)
        resp = authz.Check(apb.CheckRequest(
            subject=ref("user:uma"), action="edit", resource=ref("data_flow:acme-sales-pipeline"),
            consistency=apb.Consistency(at_least_as_fresh=written.revision)), timeout=10)
        samples = scrape(metrics)
        assert value(samples, "gatehouse_index_revision") == int(resp.revision)
        assert value(samples, "gatehouse_store_head_revision") == int(written.revision)
        assert ("gatehouse_index_lag_revisions", ()) in samples
        assert value(samples, "gatehouse_index_lag_revisions") == 0
        assert value(samples, "gatehouse_store_healthy") == 1
        assert value(samples, "gatehouse_index_relationships") >= 33
        assert value(samples, "gatehouse_policy_info", version=resp.policy_version) == 1
        transport = [dict(labels)["transport"] for name, labels in samples
                     if name == "gatehouse_transport_info"]
        assert transport == [served.transport]
        assert value(samples, "gatehouse_watch_streams") == 0
        assert value(samples, "gatehouse_watch_streams_limit") > 0
        assert value(samples, "gatehouse_policy_reloads_total", result="failed") == 0

    def test_open_watch_streams_are_counted(self, served: Served) -> None:
        """An open Watch stream shows in gatehouse_watch_streams until it is cancelled."""
        server, metrics, _ = served
        graph = pb_grpc.GraphServiceStub(server.channel())
        stream = graph.Watch(pb.WatchRequest(), timeout=30)
        try:
            wait_until(lambda: value(scrape(metrics), "gatehouse_watch_streams") == 1,
                       "the stream to be counted")
        finally:
            stream.cancel()
        wait_until(lambda: value(scrape(metrics), "gatehouse_watch_streams") == 0,
                   "the stream to be gone")


class TestProbes:
    def test_health_and_readiness_answer_and_other_paths_do_not(
            self, served: Served) -> None:
        """/healthz and /readyz answer 200 on a serving server; HEAD works; an unknown path is
        404 and a POST is refused."""
        metrics = served.metrics
        assert get(metrics, "/healthz")[:2] == (200, "ok\n")
        assert get(metrics, "/readyz")[:2] == (200, "ready\n")
        assert get(metrics, "/readyz?verbose=1")[0] == 200
        status, body, _ = get(metrics, "/metrics", "HEAD")
        assert (status, body) == (200, "")
        assert get(metrics, "/")[0] == 404
        assert get(metrics, "/metrics/../etc/passwd")[0] == 404
        assert get(metrics, "/metrics", "POST")[0] == 501

    def test_junk_requests_do_not_kill_the_endpoint(
            self, served: Served) -> None:
        """Binary garbage, an oversized request line, a half-sent request, connections that
        send nothing and a flood of them leave /metrics, the probes and gRPC answering."""
        server, metrics, _ = served
        host, port = metrics.rsplit(":", 1)

        def raw(data: bytes) -> bytes:
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        assert raw(bytes(range(256)) * 4 + b"\r\n\r\n").startswith(b"HTTP/1.0 400")
        assert raw(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 414")
        assert raw(b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n"
                   ).startswith(b"HTTP/1.0 431")
        assert raw(b"GET /metr").startswith(b"HTTP/1.0 404")
        assert raw(b"") == b""
        idle = [socket.create_connection((host, int(port)), timeout=10)
                for _ in range(MAX_CONNECTIONS + 8)]
        try:
            for s in idle:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x")  # and then nothing
            time.sleep(0.2)
        finally:
            for s in idle:
                s.close()
        def answers() -> bool:
            try:
                return get(metrics, "/healthz")[0] == 200
            except (OSError, http.client.HTTPException):
                return False  # refused while the slots of the closed connections free up

        wait_until(answers, "the endpoint to answer")
        assert get(metrics, "/readyz")[0] == 200
        assert requests(scrape(metrics), CHECK, "OK") >= 0
        authz = apb_grpc.AuthorizationServiceStub(server.channel())
        assert authz.Check(apb.CheckRequest(
            subject=ref("user:uma"), action="edit",
            resource=ref("data_flow:acme-sales-pipeline")), timeout=10
        ).decision == apb.DECISION_ALLOW
        assert server.proc.poll() is None


class TestReadinessWithRedis:
    def test_readyz_fails_while_the_store_is_down_and_recovers(self, tmp_path: Path) -> None:
        """Redis killed: /readyz turns 503 naming the store, store_healthy 0, /healthz stays
        200 (the process lives, reads still answer); Redis back: 200 and 1 again."""
        redis = RedisServer(tmp_path / "redis").start()
        server, metrics = with_metrics(tmp_path, "--policy", "policies/coupler", "--data",
                                       "examples/coupler.data.yaml", "--redis-url", redis.url)
        try:
            assert get(metrics, "/readyz")[:2] == (200, "ready\n")
            samples = scrape(metrics)
            assert value(samples, "gatehouse_store_healthy") == 1
            assert value(samples, "gatehouse_index_revision") == \
                value(samples, "gatehouse_store_head_revision") > 0
            redis.kill()
            wait_until(lambda: get(metrics, "/readyz")[0] == 503, "readyz 503")
            body = get(metrics, "/readyz")[1]
            assert body.startswith("store unreachable (redis redis://127.0.0.1:")
            assert body.count("\n") == 1
            assert get(metrics, "/healthz")[0] == 200
            samples = scrape(metrics)
            assert value(samples, "gatehouse_store_healthy") == 0
            # The head is unknown while the store is down: no made-up lag.
            assert ("gatehouse_index_lag_revisions", ()) not in samples
            redis.start()
            wait_until(lambda: get(metrics, "/readyz")[0] == 200, "readyz 200 again")
            assert value(scrape(metrics), "gatehouse_store_healthy") == 1
        finally:
            server.stop()
            redis.stop()


class TestPolicyReloads:
    def test_good_and_broken_edits_are_counted(self, tmp_path: Path) -> None:
        """A policy edit that compiles counts result="ok" and changes policy_info; a broken
        one counts result="failed" and the version in force stays."""
        policy = tmp_path / "policy"
        shutil.copytree(ROOT / "policies" / "coupler", policy)
        server, metrics = with_metrics(tmp_path, "--policy", str(policy))
        try:
            def reloads(result: str) -> float:
                return value(scrape(metrics), "gatehouse_policy_reloads_total", result=result)

            def versions() -> list[str]:
                return [dict(labels)["version"] for name, labels in scrape(metrics)
                        if name == "gatehouse_policy_info"]

            first = versions()
            assert reloads("ok") == reloads("failed") == 0
            source = policy / "policy.yaml"
            source.write_text(source.read_text() + "\n# an edit that still compiles\n")
            wait_until(lambda: reloads("ok") == 1, "a counted reload")
            second = versions()
            assert len(second) == 1 and second != first
            source.write_text(source.read_text() + "\nthis: [is not, valid\n")
            wait_until(lambda: reloads("failed") == 1, "a counted failure")
            assert reloads("ok") == 1
            assert versions() == second
        finally:
            server.stop()


def two_free_ports() -> int:
    """A port P such that P and P + 1 are both free now."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports")


class TestWorkers:
    def test_each_worker_serves_its_own_page_on_the_next_port(
            self, tmp_path: Path, redis_server: RedisServer) -> None:
        """With --workers 2, worker 0 serves metrics on PORT and worker 1 on PORT+1, each
        ready and reporting its own index."""
        address, port = f"127.0.0.1:{free_port()}", two_free_ports()
        log = tmp_path / "workers.log"
        proc = subprocess.Popen(
            [*GATEHOUSE, "serve", "--listen", address, "--workers", "2",
             "--metrics-listen", f"127.0.0.1:{port}", "--policy", "policies/coupler",
             "--redis-url", redis_server.url, "--redis-prefix", f"wm{uuid.uuid4().hex[:6]}"],
            cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
        try:
            wait_serving(address, proc, log)
            for metrics in (f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"):
                def ready(metrics: str = metrics) -> bool:
                    try:
                        return get(metrics, "/readyz")[0] == 200
                    except OSError:
                        return False

                wait_until(ready, f"worker metrics on {metrics}")
                assert value(scrape(metrics), "gatehouse_store_healthy") == 1
                assert f'"metrics": "{metrics}"' in log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


class TestFlags:
    @pytest.mark.parametrize(("flag", "text", "message"), [
        ("--metrics-listen", "9464", "(--metrics-listen): must be HOST:PORT"),
        ("--metrics-listen", "127.0.0.1:http", "(--metrics-listen): must be HOST:PORT"),
        ("--metrics-listen", "127.0.0.1:70000", "(--metrics-listen): must be HOST:PORT"),
        ("--otlp-endpoint", "collector:4317", "(--otlp-endpoint): "),
        ("--otlp-endpoint", "ftp://collector:4317", "(--otlp-endpoint): "),
    ])
    def test_a_bad_value_is_refused_naming_the_flag(self, flag: str, text: str,
                                                    message: str) -> None:
        """A malformed --metrics-listen or --otlp-endpoint stops start-up with exit 2."""
        done = subprocess.run([*GATEHOUSE, "serve", "--listen", f"127.0.0.1:{free_port()}",
                               flag, text], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2
        assert message in done.stderr

    def test_worker_ports_must_fit(self) -> None:
        """With --workers N the ports PORT..PORT+N-1 must all exist."""
        done = subprocess.run([*GATEHOUSE, "serve", "--listen", f"127.0.0.1:{free_port()}",
                               "--workers", "2", "--redis-url", "redis://127.0.0.1:1/0",
                               "--metrics-listen", "127.0.0.1:65535"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert "--metrics-listen port 65535 + 1 (one per worker) is past 65535" in done.stderr

    def test_a_taken_metrics_port_stops_start_up(self, tmp_path: Path) -> None:
        """When the metrics port is taken the server exits 1 saying so, rather than serve
        without the metrics it was asked for."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = subprocess.run([*GATEHOUSE, "serve", "--listen", f"127.0.0.1:{free_port()}",
                                   "--metrics-listen", f"127.0.0.1:{port}"], cwd=ROOT,
                                  capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr

    def test_the_environment_variable_turns_it_on(self, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        """GATEHOUSE_METRICS_LISTEN serves the endpoint as the flag does."""
        metrics = f"127.0.0.1:{free_port()}"
        monkeypatch.setenv("GATEHOUSE_METRICS_LISTEN", metrics)
        server = start_server(tmp_path)
        try:
            assert get(metrics, "/readyz")[0] == 200
            assert f'"metrics": "{metrics}"' in server.logs()
        finally:
            server.stop()
