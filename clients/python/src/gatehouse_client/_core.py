"""What the sync and asyncio clients share: settings, channel options, the
retry pause, the read-your-writes revision and the consistency to send."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from gatehouse_client._ops import Unary, consistency
from gatehouse_client._pb.gatehouse.v1 import authorization_pb2 as authz
from gatehouse_client.errors import GatehouseError, invalid
from gatehouse_client.types import TLS, Consistency, Retry, check_revision

VERSION = "0.1.0"

# The channel's own reconnect backoff grows to 120 s by default; while it
# waits, every call fails UNAVAILABLE at once and retries are wasted. Keep it
# in step with the call retries so a restarted server is found within ~2 s.
_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.primary_user_agent", f"gatehouse-client/{VERSION}"),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)

RetryArg = Retry | int | None
DEFAULT_RETRY = Retry()


def retry_policy(value: RetryArg) -> Retry:
    """``Retry``, an attempt count, or None/0 for no retries."""
    if value is None or value == 0:
        return Retry(attempts=1)
    if isinstance(value, Retry):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return Retry(attempts=value)
    raise ValueError("retries: expected a Retry, a positive attempt count, or None")


@dataclass(frozen=True, slots=True)
class Settings:
    address: str
    api_key: str | None
    tls: TLS | None
    timeout: float
    retry: Retry
    read_your_writes: bool
    options: tuple[tuple[str, Any], ...]

    @staticmethod
    def make(address: str, api_key: str | None, tls: TLS | None, timeout: float,
             retries: RetryArg, read_your_writes: bool,
             options: Sequence[tuple[str, Any]]) -> Settings:
        if not isinstance(address, str) or not address:
            raise ValueError("address: expected host:port")
        if api_key is not None and (not api_key or "\n" in api_key or "\r" in api_key):
            raise ValueError("api_key: must be a non-empty single line")
        if tls is not None and not isinstance(tls, TLS):
            raise ValueError("tls: expected a gatehouse_client.TLS")
        extra = tuple(options)
        if tls is not None and tls.server_name:
            extra += (("grpc.ssl_target_name_override", tls.server_name),
                      ("grpc.default_authority", tls.server_name))
        return Settings(address, api_key, tls, check_timeout(timeout), retry_policy(retries),
                        read_your_writes, _CHANNEL_OPTIONS + extra)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.api_key is None:
            return ()
        return (("authorization", f"Bearer {self.api_key}"),)

    def __repr__(self) -> str:  # never show the key
        return f"Settings(address={self.address!r}, tls={self.tls is not None})"


def check_timeout(value: float | None) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError("timeout: expected a positive number of seconds")
    return float(value)


def pause(retry: Retry, attempt: int, err: GatehouseError, retryable: bool,
          deadline: float) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or None to give up.

    Only UNAVAILABLE is retried: DEADLINE_EXCEEDED means the call's own
    deadline (which covers every attempt) is spent.
    """
    if not retryable or err.code is not grpc.StatusCode.UNAVAILABLE:
        return None
    if attempt + 1 >= retry.attempts:
        return None
    cap = min(retry.max_backoff, retry.initial_backoff * retry.multiplier ** attempt)
    delay = random.uniform(0, cap)
    if time.monotonic() + delay >= deadline:
        return None
    return delay


class Revisions:
    """The highest revision this client's writes returned (safe across threads and tasks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = -1

    def observe(self, revision: str) -> None:
        if not revision.isdigit():
            return
        value = int(revision)
        with self._lock:
            if value > self._value:
                self._value = value

    def current(self) -> str | None:
        with self._lock:
            return None if self._value < 0 else str(self._value)


def level(explicit: Consistency | None, revisions: Revisions,
          read_your_writes: bool) -> authz.Consistency | None:
    """The consistency a read sends: the caller's, else at least the last write's revision."""
    if explicit is not None:
        if not isinstance(explicit, Consistency):
            raise invalid("consistency: expected a gatehouse_client.Consistency")
        return consistency(explicit)
    if read_your_writes:
        seen = revisions.current()
        if seen is not None:
            return authz.Consistency(at_least_as_fresh=seen)
    return None


def observe_write(op: Unary[Any, Any], response: Any, revisions: Revisions) -> None:
    if op.write:
        revisions.observe(str(response.revision))


def observe_revision(revisions: Revisions, revision: str | int) -> None:
    revisions.observe(check_revision(str(revision)))
