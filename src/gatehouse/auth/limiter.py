"""Per-key request rate (token bucket) and calls in flight.

Admission runs on the core transport's poll thread and releases run there or
on the event loop, so each limiter guards its few numbers with its own lock,
held for a handful of arithmetic operations and never across anything else.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gatehouse.auth.keys import Rate


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call was not admitted, and after how long a retry may succeed."""

    reason: str
    retry_after: float
    """Seconds; for the in-flight cap a short guess (a running call may end any time)."""


IN_FLIGHT_RETRY = 0.05
"""The retry delay suggested when the in-flight cap is reached."""


class KeyLimiter:
    """One key's bucket and in-flight count, shared by every call with that key."""

    __slots__ = ("_lock", "_now", "_tokens", "_updated", "in_flight", "rate")

    def __init__(self, rate: Rate, now: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._now = now
        self._lock = threading.Lock()
        self._tokens = float(rate.burst)
        self._updated = now()
        self.in_flight = 0

    def admit(self) -> Refusal | None:
        """Take one token and one in-flight slot, or say why not (taking neither)."""
        rate = self.rate
        with self._lock:
            if rate.in_flight is not None and self.in_flight >= rate.in_flight:
                return Refusal(f"{rate.in_flight} calls already in flight", IN_FLIGHT_RETRY)
            rps = rate.requests_per_second
            if rps is not None:
                now = self._now()
                tokens = min(float(rate.burst), self._tokens + (now - self._updated) * rps)
                self._updated = now
                if tokens < 1.0:
                    self._tokens = tokens
                    return Refusal(f"over {rps:g} requests per second",
                                   (1.0 - tokens) / rps)
                self._tokens = tokens - 1.0
            self.in_flight += 1
            return None

    def release(self) -> None:
        """A call admitted by ``admit`` ended."""
        with self._lock:
            self.in_flight -= 1


def retry_seconds(delay: float) -> tuple[int, int]:
    """``delay`` as (seconds, nanos), rounded up to the millisecond, at least 1 ms."""
    ms = max(1, math.ceil(delay * 1000))
    return ms // 1000, (ms % 1000) * 1_000_000


__all__ = ["IN_FLIGHT_RETRY", "KeyLimiter", "Refusal", "retry_seconds"]
