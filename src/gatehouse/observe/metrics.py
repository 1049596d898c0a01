"""Prometheus metrics: what every call did, and what one server process is at.

Two kinds, because they live differently:

- per call (``RequestMetrics``, an ``AfterCall`` hook): module-level counters
  and histograms on prometheus-client's default registry, labelled by method
  and status code. Several servers in one process add to the same series.
- per process state (``ServerCollector``): read from the runtime each time
  Prometheus scrapes — index revision and its lag behind the store, store
  health, policy reloads, the transport, open Watch streams. One collector is
  registered while a server runs and unregistered when it stops, so nothing
  keeps a stopped server alive or reports it.

The hook runs for every call, inline Checks included, on the core
transport's poll thread: it looks up labelled children in a dict and adds to
them (prometheus-client's own lock per child), a few microseconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Iterable, Iterator

import grpc
from google.protobuf import descriptor_pool
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from gatehouse.limits import LIMITS
from gatehouse.runtime import Runtime
from gatehouse.transport import CallInfo, CallOutcome

log = logging.getLogger("gatehouse.metrics")

OTHER_METHOD = "other"
"""The method label of calls to a method the server does not serve: a client
chooses the path it calls, and labels must not grow with what clients send."""

# Check answers in tens of microseconds inline; writes and listings take milliseconds
# and a cold ComputeUsage can take seconds.
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "gatehouse_requests", "gRPC calls answered, by method and final status code.",
    ("method", "code"))
DURATION = Histogram(
    "gatehouse_request_duration_seconds",
    "Seconds from a call's arrival to its final status, by method.",
    ("method",), buckets=DURATION_BUCKETS)

HEAD_TIMEOUT = 1.0
"""How long a scrape waits for the store's head revision before leaving the lag out."""


def method_names(services: Iterable[str]) -> frozenset[str]:
    """The full paths (``/pkg.Service/Method``) of every method of ``services``.

    The services' descriptors are in protobuf's default pool once their
    generated modules are imported (the server imports them to serve them).
    """
    pool = descriptor_pool.Default()
    names: set[str] = set()
    for service in services:
        try:
            descriptor = pool.FindServiceByName(service)
        except KeyError:
            log.warning("no descriptor for %s; its calls are counted as %r", service,
                        OTHER_METHOD)
            continue
        names.update(f"/{service}/{m.name}" for m in descriptor.methods)
    return frozenset(names)


def method_label(method: str) -> str:
    """``/pkg.Service/Method`` as a label: ``pkg.Service/Method`` (as tracing names spans)."""
    return method[1:] if method.startswith("/") else method


class RequestMetrics:
    """The ``AfterCall`` hook behind ``gatehouse_requests_total`` and the duration histogram."""

    __slots__ = ("_children", "_known")

    def __init__(self, methods: Iterable[str]) -> None:
        self._known = frozenset(methods)
        self._children: dict[tuple[str, grpc.StatusCode], tuple[Counter, Histogram]] = {}
        # Every served method shows up (at 0) before its first call, so a rate()
        # over it is defined from the start rather than appearing later.
        for method in self._known:
            self._labelled(method, grpc.StatusCode.OK)

    def __call__(self, info: CallInfo, outcome: CallOutcome) -> None:
        children = self._children.get((info.method, outcome.code))
        if children is None:
            children = self._labelled(info.method, outcome.code)
        children[0].inc()
        children[1].observe(outcome.duration)

    def _labelled(self, method: str, code: grpc.StatusCode) -> tuple[Counter, Histogram]:
        known = method in self._known
        label = method_label(method) if known else OTHER_METHOD
        children = (REQUESTS.labels(label, code.name), DURATION.labels(label))
        if known:  # bounded: served methods x status codes
            self._children[(method, code)] = children
        return children


def _gauge(name: str, text: str, value: float | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


class ServerCollector:
    """One running server's state, read at each scrape (a prometheus-client collector)."""

    def __init__(self, runtime: Runtime, transport: str,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._runtime = runtime
        self._transport = transport
        self._loop = loop

    def describe(self) -> Iterator[Metric]:
        """The families ``collect`` yields, without values: registering must not read
        the store (the registry would call ``collect`` on the event loop otherwise)."""
        return self._families(None, None)

    def collect(self) -> Iterator[Metric]:
        return self._families(self._runtime, self._head_revision())

    def _families(self, runtime: Runtime | None, head: int | None) -> Iterator[Metric]:
        follower = runtime.follower if runtime is not None else None
        revision = follower.revision if follower is not None else None
        yield _gauge("gatehouse_index_revision",
                     "The store revision the in-memory index has applied.", revision)
        yield _gauge("gatehouse_store_head_revision",
                     "The store's newest committed revision (left out when the store "
                     "did not answer within a second).", head)
        lag = None if head is None or revision is None else max(0, head - revision)
        yield _gauge("gatehouse_index_lag_revisions",
                     "Committed revisions the index has not applied yet (store head minus "
                     "index revision).", lag)
        yield _gauge("gatehouse_store_healthy",
                     "1 while the store is reachable (writes work), 0 while it is not "
                     "(reads keep answering from the index).",
                     None if follower is None else float(follower.store_healthy))
        yield _gauge("gatehouse_index_relationships", "Relationships held by the index.",
                     None if follower is None else follower.index.relationship_count)
        yield _gauge("gatehouse_watch_streams", "Watch streams open on this process.",
                     None if follower is None else follower.watch_streams)
        yield _gauge("gatehouse_watch_streams_limit",
                     "Watch streams this process accepts at once (more are refused "
                     "RESOURCE_EXHAUSTED).", None if follower is None else LIMITS.watch_streams)
        reloads = CounterMetricFamily(
            "gatehouse_policy_reloads",
            "Policy folder edits since start: ok (compiled and swapped in) or failed "
            "(rejected or unreadable; the previous policy keeps serving).",
            labels=("result",))
        policy = GaugeMetricFamily("gatehouse_policy_info",
                                   "The policy version in force (always 1).",
                                   labels=("version",))
        transport = GaugeMetricFamily("gatehouse_transport_info",
                                      "The gRPC transport serving (always 1).",
                                      labels=("transport",))
        if runtime is not None and follower is not None:
            reloader = runtime.reloader
            reloads.add_metric(("ok",), reloader.reloads if reloader is not None else 0)
            reloads.add_metric(("failed",), reloader.failures if reloader is not None else 0)
            policy.add_metric((follower.policy.version,), 1)
            transport.add_metric((self._transport,), 1)
        yield reloads
        yield policy
        yield transport

    def _head_revision(self) -> int | None:
        """The store's head, asked on the event loop (the store's clients live there)."""
        try:
            if asyncio.get_running_loop() is self._loop:
                return None  # a scrape on the loop itself would wait for itself
        except RuntimeError:
            pass
        if self._loop.is_closed():
            return None
        future = asyncio.run_coroutine_threadsafe(
            self._runtime.follower.store.head_revision(), self._loop)
        try:
            return future.result(HEAD_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return None
        except Exception:  # the store is down: store_healthy says so, lag is unknown
            return None


def register(collector: ServerCollector,
             registry: CollectorRegistry = REGISTRY) -> None:
    registry.register(collector)


def unregister(collector: ServerCollector, registry: CollectorRegistry = REGISTRY) -> None:
    with contextlib.suppress(KeyError):  # never registered, or already removed
        registry.unregister(collector)


__all__ = ["DURATION", "DURATION_BUCKETS", "OTHER_METHOD", "REQUESTS", "RequestMetrics",
           "ServerCollector", "method_label", "method_names", "register", "unregister"]
