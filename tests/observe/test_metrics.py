"""The per-call statistics behind gatehouse_requests_total and the latency histogram."""

from __future__ import annotations

import threading

import grpc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatehouse.observe.metrics import CallStats, RequestMetrics
from gatehouse.transport import CallInfo, CallOutcome

CHECK = "/gatehouse.v1.AuthorizationService/Check"


def exposed(stats: CallStats) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(stats)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class TestCallStats:
    def test_calls_from_two_threads_are_all_counted(self) -> None:
        """The poll thread and the loop thread count at once without losing a call."""
        stats = CallStats()
        hook = RequestMetrics({CHECK}, stats)
        info = CallInfo(CHECK, (), "ipv4:127.0.0.1:1")
        fast = CallOutcome(grpc.StatusCode.OK, "", 0.0002)
        slow = CallOutcome(grpc.StatusCode.UNAVAILABLE, "down", 3.0)

        def run(outcome: CallOutcome) -> None:
            for _ in range(20_000):
                hook(info, outcome)

        threads = [threading.Thread(target=run, args=(o,)) for o in (fast, slow, fast)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = exposed(stats)
        method = "gatehouse.v1.AuthorizationService/Check"
        assert got[("gatehouse_requests_total", (("code", "OK"), ("method", method)))] == 40_000
        assert got[("gatehouse_requests_total",
                    (("code", "UNAVAILABLE"), ("method", method)))] == 20_000
        bucket = "gatehouse_request_duration_seconds_bucket"
        assert got[(bucket, (("le", "0.0001"), ("method", method)))] == 0
        assert got[(bucket, (("le", "0.00025"), ("method", method)))] == 40_000
        assert got[(bucket, (("le", "2.5"), ("method", method)))] == 40_000
        assert got[(bucket, (("le", "5.0"), ("method", method)))] == 60_000
        assert got[(bucket, (("le", "+Inf"), ("method", method)))] == 60_000
        assert got[("gatehouse_request_duration_seconds_count", (("method", method),))] == 60_000
        assert abs(got[("gatehouse_request_duration_seconds_sum", (("method", method),))]
                   - (40_000 * 0.0002 + 20_000 * 3.0)) < 1e-3

    def test_served_methods_start_at_zero_and_others_share_one_label(self) -> None:
        """Every served method is exposed at 0 before its first call; any number of
        unknown paths add up under method="other"."""
        stats = CallStats()
        hook = RequestMetrics({CHECK}, stats)
        for i in range(50):
            hook(CallInfo(f"/made.Up/M{i}", (), "p"),
                 CallOutcome(grpc.StatusCode.UNIMPLEMENTED, "", 0.001))
        got = exposed(stats)
        assert got[("gatehouse_requests_total",
                    (("code", "OK"), ("method", CHECK[1:])))] == 0
        assert got[("gatehouse_requests_total",
                    (("code", "UNIMPLEMENTED"), ("method", "other")))] == 50
        assert not any("made.Up" in str(labels) for _, labels in got)
