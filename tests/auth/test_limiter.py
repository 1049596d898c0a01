"""Per-key token bucket and in-flight cap, on a clock the test moves."""

from __future__ import annotations

import threading

import pytest

from gatehouse.auth.keys import Rate
from gatehouse.auth.limiter import IN_FLIGHT_RETRY, KeyLimiter, retry_seconds


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class TestTokenBucket:
    def test_burst_then_refill_at_the_rate(self) -> None:
        """A full bucket admits `burst` calls at once, then one per 1/rate seconds."""
        clock = Clock()
        lim = KeyLimiter(Rate(requests_per_second=4, burst=2), clock)
        assert lim.admit() is None and lim.admit() is None
        refused = lim.admit()
        assert refused is not None and refused.retry_after == pytest.approx(0.25)
        clock.t += 0.25
        assert lim.admit() is None
        assert lim.admit() is not None

    def test_a_refusal_says_how_long_until_a_token(self) -> None:
        """The retry delay shrinks as the bucket refills."""
        clock = Clock()
        lim = KeyLimiter(Rate(requests_per_second=1, burst=1), clock)
        assert lim.admit() is None
        clock.t += 0.4
        refused = lim.admit()
        assert refused is not None and refused.retry_after == pytest.approx(0.6)
        assert "1 requests per second" in refused.reason

    def test_retry_delay_rounds_up_to_milliseconds(self) -> None:
        """RetryInfo gets whole milliseconds, never zero."""
        assert retry_seconds(0.0) == (0, 1_000_000)
        assert retry_seconds(1.2345) == (1, 235_000_000)


class TestInFlight:
    def test_cap_and_release(self) -> None:
        """The cap refuses while `in_flight` calls run and admits again after one ends."""
        lim = KeyLimiter(Rate(in_flight=2))
        assert lim.admit() is None and lim.admit() is None
        refused = lim.admit()
        assert refused is not None and refused.retry_after == IN_FLIGHT_RETRY
        lim.release()
        assert lim.admit() is None
        assert lim.in_flight == 2

    def test_a_refused_call_takes_no_token(self) -> None:
        """A call refused for the in-flight cap leaves the bucket as it was."""
        clock = Clock()
        lim = KeyLimiter(Rate(requests_per_second=1, burst=1, in_flight=1), clock)
        lim.in_flight = 1
        assert lim.admit() is not None
        lim.in_flight = 0
        assert lim.admit() is None

    def test_concurrent_admits_never_exceed_the_cap(self) -> None:
        """Eight threads admitting and releasing never see more than the cap in flight."""
        lim = KeyLimiter(Rate(in_flight=3))
        peak = [0]
        lock = threading.Lock()

        def work() -> None:
            for _ in range(2000):
                if lim.admit() is None:
                    with lock:
                        peak[0] = max(peak[0], lim.in_flight)
                    lim.release()

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert peak[0] <= 3 and lim.in_flight == 0
