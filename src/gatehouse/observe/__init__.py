"""What an operator sees of a running server: metrics, probes, traces; audit.py the audit log.

``Observer`` is the one handle the composition root holds::

    observer = Observer(metrics_listen, otlp_endpoint)
    await observer.open()                 # probes answer (503 "starting") while the index builds
    store, usage = observer.stores(store, usage)  # traced when tracing is on
    observer.attach(transport, runtime, services)  # call hooks, the per-server collector
    observer.serving()                    # after the gRPC server started: /readyz may say 200
    observer.stopping()                   # shutdown began: /readyz 503
    await observer.close()

Whatever is off costs nothing: without ``--metrics-listen`` no port is opened
and no hook counts calls; without ``--otlp-endpoint`` OpenTelemetry is never
imported (``gatehouse.observe.tracing`` needs the ``tracing`` extra).
"""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import disable_created_metrics

from gatehouse.graph.store import GraphStore
from gatehouse.observe.http import ProbeServer, parse_listen
from gatehouse.observe.metrics import RequestMetrics, ServerCollector, method_names
from gatehouse.observe.metrics import register as register_collector
from gatehouse.observe.metrics import unregister as unregister_collector
from gatehouse.runtime import Runtime
from gatehouse.transport import Transport
from gatehouse.usage.events import UsageStore

if TYPE_CHECKING:
    from gatehouse.observe.tracing import Tracing

log = logging.getLogger("gatehouse.observe")

TRACING_PACKAGES = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.grpc")


def tracing_available() -> bool:
    """Whether the ``tracing`` extra is installed (checked without importing it)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in TRACING_PACKAGES)
    except ModuleNotFoundError:
        return False


def check_otlp_endpoint(url: str) -> str:
    """``http://host:port`` (plaintext) or ``https://host:port`` (TLS) of an OTLP/gRPC
    receiver; ValueError naming what is wrong."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest.partition("/")[0]:  # and keep credentials out of argv and the log
        raise ValueError("--otlp-endpoint must not hold credentials; send them as headers "
                         "with OTEL_EXPORTER_OTLP_HEADERS")
    if not sep or scheme not in ("http", "https") or not rest.strip("/"):
        raise ValueError(f"--otlp-endpoint must be http://HOST:PORT or https://HOST:PORT "
                         f"(an OTLP/gRPC receiver, usually port 4317), not {url[:80]!r}")
    return url


class _State(enum.Enum):
    STARTING = "starting: building the index"
    ATTACHED = "starting: the gRPC server is not serving yet"
    SERVING = ""
    STOPPING = "shutting down"


class Observer:
    """Metrics, probes and tracing of one server process (see the module docstring)."""

    def __init__(self, metrics_listen: str | None = None,
                 otlp_endpoint: str | None = None) -> None:
        if metrics_listen is not None:
            parse_listen(metrics_listen)
        if otlp_endpoint is not None:
            check_otlp_endpoint(otlp_endpoint)
        self._listen = metrics_listen
        self._endpoint = otlp_endpoint
        self._state = _State.STARTING
        self._runtime: Runtime | None = None
        self._http: ProbeServer | None = None
        self._collector: ServerCollector | None = None
        self.tracing: Tracing | None = None

    @property
    def metrics_address(self) -> str | None:
        """Where ``/metrics`` answers (the port bound), or None when it is off."""
        return self._http.address if self._http is not None else None

    async def open(self) -> None:
        """Start tracing and the probe endpoint; OSError if the metrics port cannot be bound."""
        if self._endpoint is not None:
            from gatehouse.observe.tracing import Tracing

            self.tracing = Tracing.start(self._endpoint)
            log.info("tracing", extra={"otlp_endpoint": self._endpoint})
        if self._listen is not None:
            # One ``_created`` series per labelled child doubles the page for nothing a
            # dashboard uses (process start time is there already).
            disable_created_metrics()  # type: ignore[no-untyped-call]  # (unannotated upstream)
            self._http = ProbeServer(self._listen, self.not_ready)
            try:
                self._http.start()
            except BaseException:
                self._http = None
                await self.close()
                raise
            log.info("metrics and probes", extra={
                "address": self._http.address, "paths": ["/metrics", "/healthz", "/readyz"]})

    def stores(self, store: GraphStore, usage: UsageStore) -> tuple[GraphStore, UsageStore]:
        """The stores the runtime should use: traced when tracing is on, else these."""
        if self.tracing is None:
            return store, usage
        return self.tracing.stores(store, usage)

    def attach(self, transport: Transport, runtime: Runtime, services: Iterable[str]) -> None:
        """Add the call hooks (tracing first) and start reporting ``runtime``; before the
        transport starts."""
        self._runtime = runtime
        if self.tracing is not None:
            self.tracing.attach(transport)
        if self._http is not None:
            transport.add_hooks(after=RequestMetrics(method_names(services)))
            collector = ServerCollector(runtime, transport.name, asyncio.get_running_loop())
            try:
                register_collector(collector)
                self._collector = collector
            except ValueError:  # another server of this process reports its state already
                log.warning("another server in this process reports its state on /metrics; "
                            "this one's index and store gauges are left out")
        self._state = _State.ATTACHED

    def serving(self) -> None:
        self._state = _State.SERVING

    def stopping(self) -> None:
        self._state = _State.STOPPING

    def not_ready(self) -> str | None:
        """Why ``/readyz`` says 503 (None: ready) — called from the probe threads."""
        if self._state is not _State.SERVING:
            reason: str = self._state.value
            return reason
        runtime = self._runtime
        if runtime is None:
            return _State.STARTING.value
        follower = runtime.follower
        if not follower.store_healthy:
            return f"store unreachable ({follower.store.description}); reads answer " \
                   "from the index, writes fail"
        return None

    async def close(self) -> None:
        """Stop the probe endpoint, stop reporting, send the last spans."""
        self._state = _State.STOPPING
        if self._collector is not None:
            unregister_collector(self._collector)
            self._collector = None
        if self._http is not None:
            await asyncio.to_thread(self._http.stop)
            self._http = None
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)
            self.tracing = None


__all__ = ["Observer", "check_otlp_endpoint", "tracing_available"]
