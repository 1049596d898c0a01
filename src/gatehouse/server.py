"""Composition root: build the runtime, wire the gRPC services, serve."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from gatehouse.api.admin import AdminServicer
from gatehouse.api.authorization import AuthorizationServicer
from gatehouse.api.graph import GraphServicer
from gatehouse.api.tenancy import TenancyServicer
from gatehouse.api.usage import UsageServicer
from gatehouse.auth.authenticator import Authenticator
from gatehouse.auth.exposure import refusal
from gatehouse.auth.keys import KeyTable, load_keys
from gatehouse.auth.reload import KeysWatcher
from gatehouse.errors import GatehouseError
from gatehouse.graph.bootstrap import load_data
from gatehouse.graph.memory import MemoryGraphStore
from gatehouse.graph.store import GraphStore
from gatehouse.observe import Observer
from gatehouse.observe.audit import AuditHook, AuditLog, AuditSettings
from gatehouse.policy.loader import load_policy
from gatehouse.redisconn import RedisOptions
from gatehouse.runtime import Runtime
from gatehouse.transport import Transport, TransportStats, open_transport
from gatehouse.transport.tls import (
    CertificateReloader,
    TlsFiles,
    load_material,
    server_credentials,
)
from gatehouse.usage.events import UsageStore
from gatehouse.usage.memory import MemoryUsageStore
from gatehouse.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    authorization_pb2,
    authorization_pb2_grpc,
    graph_pb2,
    graph_pb2_grpc,
    tenancy_pb2,
    tenancy_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

log = logging.getLogger("gatehouse.server")

READ_SERVICES = ("gatehouse.v1.AuthorizationService",)
SWITCH_INTERVAL = 0.001
WRITE_SERVICES = ("gatehouse.v1.GraphService", "gatehouse.v1.UsageService",
                  "gatehouse.v1.TenancyService")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What the server runs with. ``gatehouse serve`` builds it from the settings table
    (``gatehouse.config.table``): each field is one setting there, with the same default
    (a test holds both in step), so a new field needs its setting."""

    listen: str = "127.0.0.1:50051"
    policy_dir: Path = Path("policies/coupler")
    data_file: Path | None = None
    redis_url: str | None = None
    redis_prefix: str = "gh"
    watch_policy: bool = True
    grace_seconds: float = 5.0
    reuse_port: bool = False
    usage_dedup_days: float = 35.0
    transport: str = "auto"
    """``auto``, ``core`` or ``aio`` (see ``gatehouse.transport.choose``)."""
    audit: AuditSettings | None = None
    """The decision audit log (docs/audit.md); None: none kept."""
    tls: TlsFiles | None = None
    """Serve TLS with these files (mTLS when it names a client CA); None: plaintext."""
    api_keys: Path | None = None
    """The keys file (``--api-keys``); None: anonymous callers with every scope."""
    insecure_no_auth: bool = False
    """``--insecure-no-auth``: serve without keys on a non-loopback address (else refused)."""
    metrics_listen: str | None = None
    """HOST:PORT of /metrics, /healthz and /readyz (plain HTTP); None: off."""
    otlp_endpoint: str | None = None
    """OTLP/gRPC receiver of the trace spans (http:// or https://); None: no tracing."""
    redis_pool_size: int | None = 64
    """Most connections per Redis pool (None: unbounded); see ``RedisOptions``."""
    redis_socket_timeout: float = 10.0
    redis_connect_timeout: float = 5.0
    redis_wait_replicas: int = 0
    """WAIT for this many replicas after each write batch before acknowledging."""
    redis_wait_timeout: float = 1.0


def redis_options(config: ServerConfig) -> RedisOptions:
    return RedisOptions(pool_size=config.redis_pool_size,
                        socket_timeout=config.redis_socket_timeout,
                        connect_timeout=config.redis_connect_timeout,
                        wait_replicas=config.redis_wait_replicas,
                        wait_timeout=config.redis_wait_timeout)


def open_store(config: ServerConfig) -> GraphStore:
    if config.redis_url:
        from gatehouse.graph.redis import RedisGraphStore

        return RedisGraphStore(config.redis_url, config.redis_prefix,
                               options=redis_options(config))
    return MemoryGraphStore()


def open_usage_store(config: ServerConfig) -> UsageStore:
    if config.redis_url:
        from gatehouse.usage.redis import RedisUsageStore

        return RedisUsageStore(config.redis_url, config.redis_prefix,
                               options=redis_options(config))
    return MemoryUsageStore()


async def build_runtime(config: ServerConfig, observer: Observer | None = None) -> Runtime:
    """Load the policy and data (raising PolicyError/DataFileError) and index them."""
    policy = await asyncio.to_thread(load_policy, config.policy_dir)
    store = open_store(config)
    usage = open_usage_store(config)
    if observer is not None:
        store, usage = observer.stores(store, usage)
    try:
        if config.data_file is not None:
            await load_data(store, policy, config.data_file)
        return await Runtime.start(policy, store, config.policy_dir, usage,
                                   dedup_window=int(config.usage_dedup_days * 86400))
    except BaseException:
        await store.close()
        await usage.close()
        raise


def tls_mode(tls: TlsFiles | None) -> str:
    """``off``, ``tls`` or ``mtls``: what the log says the port serves."""
    if tls is None:
        return "off"
    return "mtls" if tls.mutual else "tls"


def transport_options(config: ServerConfig) -> list[tuple[str, int]]:
    """grpc options for the server (the receive limit is the transports' own, from LIMITS)."""
    return [("grpc.so_reuseport", 1 if config.reuse_port else 0)]


class Server:
    """A running gatehouse gRPC server on ``transport`` (see ``open_transport``)."""

    def __init__(self, config: ServerConfig, runtime: Runtime, transport: Transport,
                 *, keys: KeyTable | None = None, observer: Observer | None = None) -> None:
        """Register the services on ``transport`` and listen (TLS per ``config.tls``).

        Raises ``TlsError`` when the TLS files cannot be used, ``OSError`` when
        the address cannot be listened on. Hooks may be added to ``self.grpc``
        until ``start``.
        """
        self.config = config
        self.runtime = runtime
        self.grpc = transport
        self.observer = observer or Observer()
        self.auth: Authenticator | None = None
        self.keys_watcher: KeysWatcher | None = None
        if config.api_keys is not None:
            self.auth = Authenticator(keys if keys is not None else load_keys(config.api_keys))
            self.keys_watcher = KeysWatcher(self.auth, config.api_keys)
        follower = runtime.follower
        authorization = AuthorizationServicer(runtime.decisions, follower)
        authorization_pb2_grpc.add_AuthorizationServiceServicer_to_server(
            authorization, self.grpc
        )
        self.grpc.add_inline(f"/{READ_SERVICES[0]}/Check", authorization.check_inline)
        self.grpc.add_inline(f"/{READ_SERVICES[0]}/CheckBulk", authorization.check_bulk_inline)
        graph = GraphServicer(runtime.graph, follower)
        graph_pb2_grpc.add_GraphServiceServicer_to_server(graph, self.grpc)
        usage = UsageServicer(runtime.usage, follower)
        usage_pb2_grpc.add_UsageServiceServicer_to_server(usage, self.grpc)
        # The two writes a client makes most often take the short path (api: *_inline).
        self.grpc.add_inline("/gatehouse.v1.GraphService/WriteRelationships", graph.write_inline)
        self.grpc.add_inline("/gatehouse.v1.UsageService/RecordUsage", usage.record_inline)
        tenancy_pb2_grpc.add_TenancyServiceServicer_to_server(
            TenancyServicer(runtime.tenancy), self.grpc)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(follower, runtime.reloader, config.watch_policy), self.grpc)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        names = [
            authorization_pb2.DESCRIPTOR.services_by_name["AuthorizationService"].full_name,
            graph_pb2.DESCRIPTOR.services_by_name["GraphService"].full_name,
            usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name,
            tenancy_pb2.DESCRIPTOR.services_by_name["TenancyService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names), self.grpc)
        # Tracing and metrics hooks first: a call the authentication hook refuses is still
        # traced and counted. Then authentication: every later hook and handler sees the caller.
        self.observer.attach(self.grpc, runtime, names)
        if self.auth is not None:
            self.grpc.add_hooks(self.auth.before, self.auth.after)
        self.certificates: CertificateReloader | None = None
        """Watches the TLS files (None without TLS)."""
        if config.tls is not None:
            credentials, self.certificates = server_credentials(config.tls)
            self.port = self.grpc.add_secure_port(config.listen, credentials)
        else:
            self.port = self.grpc.add_insecure_port(config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.listen}")
        self._tasks: list[asyncio.Task[None]] = []
        # Opened here, so that an unwritable audit log path stops the start.
        self.audit = AuditLog(config.audit) if config.audit is not None else None
        if self.audit is not None:
            self.grpc.add_hooks(after=self.audit.hook.after)
        elif self.observer.metrics_address is not None:  # gatehouse_decisions_total still counts
            self.grpc.add_hooks(after=AuditHook(None).after)

    @property
    def stats(self) -> TransportStats:
        """The transport's failure counters (e.g. ``handler_failures``)."""
        return self.grpc.stats

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        if self.audit is not None:
            self.audit.start()
        await self.grpc.start()
        for name in ("", *READ_SERVICES, *WRITE_SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        follower = self.runtime.follower
        follower.on_health(self._store_health_changed)
        reloader = self.runtime.reloader
        if self.config.watch_policy and reloader is not None:
            self._tasks.append(asyncio.create_task(reloader.watch(), name="policy-reloader"))
        if self.keys_watcher is not None:
            self._tasks.append(asyncio.create_task(self.keys_watcher.watch(),
                                                   name="keys-reloader"))
            log.info("api keys loaded", extra={"file": str(self.config.api_keys),
                                               "keys": len(self.keys_watcher.authenticator
                                                           .table.keys)})
        else:
            log.warning("serving WITHOUT authentication: every caller gets every scope",
                        extra={"address": self.address,
                               "insecure_no_auth": self.config.insecure_no_auth})
        log.info(
            "serving",
            extra={
                "address": self.address,
                "transport": self.grpc.name,
                "tls": tls_mode(self.config.tls),
                "policy": str(self.config.policy_dir),
                "policy_version": follower.policy.version,
                "store": follower.store.description,
                "revision": follower.index.revision,
                "relationships": follower.index.relationship_count,
                "metrics": self.observer.metrics_address,
            },
        )
        self.observer.serving()

    def _store_health_changed(self, healthy: bool) -> None:
        """Store down: reads keep serving from the index, writes cannot (NOT_SERVING)."""
        status = (health_pb2.HealthCheckResponse.SERVING if healthy
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in WRITE_SERVICES:
            self._tasks.append(asyncio.create_task(self.health.set(name, status)))

    async def stop(self) -> None:
        self.observer.stopping()
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.grpc.stop(self.config.grace_seconds)
        if self.audit is not None:  # after the last call's hook: every line written
            await asyncio.to_thread(self.audit.close)
        await self.runtime.close()
        await self.observer.close()
        log.info("stopped")


async def serve(config: ServerConfig, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain in-flight calls and exit."""
    unsafe = refusal(config.listen, config.api_keys is not None, config.insecure_no_auth)
    if unsafe is not None:  # the CLI refuses first (exit 2); this guards every other caller
        raise GatehouseError(unsafe)
    # Check runs on the transport's poll thread and needs the interpreter for a
    # few hundred microseconds per call; while the loop thread computes
    # something long (a cold ComputeUsage, a big listing) each of those waits
    # for the loop thread's time slice. 1 ms slices instead of the default 5
    # keep Checks near 3 ms at p50 during such work instead of 17 (measured).
    sys.setswitchinterval(SWITCH_INTERVAL)
    if config.tls is not None:  # unusable TLS files: refuse before loading anything
        await asyncio.to_thread(load_material, config.tls)
    keys = await asyncio.to_thread(load_keys, config.api_keys) if config.api_keys else None
    # Probes answer (readyz 503 "starting") while a large index builds.
    observer = Observer(config.metrics_listen, config.otlp_endpoint)
    await observer.open()
    try:
        runtime = await build_runtime(config, observer)
    except BaseException:
        await observer.close()
        raise
    # The index is millions of long-lived objects. Moved to the collector's
    # permanent generation, a full collection (which work such as compiling a
    # reloaded policy triggers) no longer walks it while holding the
    # interpreter: that walk stalled Checks for half a second on a large graph.
    gc.collect()
    gc.freeze()
    try:
        transport = await open_transport(config.transport, transport_options(config))
    except BaseException:
        await runtime.close()
        await observer.close()
        raise
    try:
        server = Server(config, runtime, transport, keys=keys, observer=observer)
    except BaseException:
        await transport.stop(0)
        await runtime.close()
        await observer.close()
        raise
    await server.start()
    if ready is not None:
        ready.set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": config.grace_seconds})
    await server.stop()
