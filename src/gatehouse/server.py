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

from gatehouse.api.authorization import AuthorizationServicer
from gatehouse.api.graph import GraphServicer
from gatehouse.api.tenancy import TenancyServicer
from gatehouse.api.usage import UsageServicer
from gatehouse.graph.bootstrap import load_data
from gatehouse.graph.memory import MemoryGraphStore
from gatehouse.graph.store import GraphStore
from gatehouse.policy.loader import load_policy
from gatehouse.redisconn import RedisOptions
from gatehouse.runtime import Runtime
from gatehouse.transport import Transport, TransportStats, open_transport
from gatehouse.usage.events import UsageStore
from gatehouse.usage.memory import MemoryUsageStore
from gatehouse.v1 import (
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


async def build_runtime(config: ServerConfig) -> Runtime:
    """Load the policy and data (raising PolicyError/DataFileError) and index them."""
    policy = await asyncio.to_thread(load_policy, config.policy_dir)
    store = open_store(config)
    usage = open_usage_store(config)
    try:
        if config.data_file is not None:
            await load_data(store, policy, config.data_file)
        return await Runtime.start(policy, store, config.policy_dir, usage,
                                   dedup_window=int(config.usage_dedup_days * 86400))
    except BaseException:
        await store.close()
        await usage.close()
        raise


def transport_options(config: ServerConfig) -> list[tuple[str, int]]:
    """grpc options for the server (the receive limit is the transports' own, from LIMITS)."""
    return [("grpc.so_reuseport", 1 if config.reuse_port else 0)]


class Server:
    """A running gatehouse gRPC server on ``transport`` (see ``open_transport``)."""

    def __init__(self, config: ServerConfig, runtime: Runtime, transport: Transport) -> None:
        self.config = config
        self.runtime = runtime
        self.grpc = transport
        follower = runtime.follower
        authorization = AuthorizationServicer(runtime.decisions, follower)
        authorization_pb2_grpc.add_AuthorizationServiceServicer_to_server(
            authorization, self.grpc
        )
        self.grpc.add_inline(f"/{READ_SERVICES[0]}/Check", authorization.check_inline)
        self.grpc.add_inline(f"/{READ_SERVICES[0]}/CheckBulk", authorization.check_bulk_inline)
        graph_pb2_grpc.add_GraphServiceServicer_to_server(
            GraphServicer(runtime.graph, follower), self.grpc)
        usage_pb2_grpc.add_UsageServiceServicer_to_server(
            UsageServicer(runtime.usage, follower), self.grpc)
        tenancy_pb2_grpc.add_TenancyServiceServicer_to_server(
            TenancyServicer(runtime.tenancy), self.grpc)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        names = [
            authorization_pb2.DESCRIPTOR.services_by_name["AuthorizationService"].full_name,
            graph_pb2.DESCRIPTOR.services_by_name["GraphService"].full_name,
            usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name,
            tenancy_pb2.DESCRIPTOR.services_by_name["TenancyService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names), self.grpc)
        self.port = self.grpc.add_insecure_port(config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.listen}")
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def stats(self) -> TransportStats:
        """The transport's failure counters (e.g. ``handler_failures``)."""
        return self.grpc.stats

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        await self.grpc.start()
        for name in ("", *READ_SERVICES, *WRITE_SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        follower = self.runtime.follower
        follower.on_health(self._store_health_changed)
        reloader = self.runtime.reloader
        if self.config.watch_policy and reloader is not None:
            self._tasks.append(asyncio.create_task(reloader.watch(), name="policy-reloader"))
        log.info(
            "serving",
            extra={
                "address": self.address,
                "transport": self.grpc.name,
                "policy": str(self.config.policy_dir),
                "policy_version": follower.policy.version,
                "store": follower.store.description,
                "revision": follower.index.revision,
                "relationships": follower.index.relationship_count,
            },
        )

    def _store_health_changed(self, healthy: bool) -> None:
        """Store down: reads keep serving from the index, writes cannot (NOT_SERVING)."""
        status = (health_pb2.HealthCheckResponse.SERVING if healthy
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in WRITE_SERVICES:
            self._tasks.append(asyncio.create_task(self.health.set(name, status)))

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.grpc.stop(self.config.grace_seconds)
        await self.runtime.close()
        log.info("stopped")


async def serve(config: ServerConfig, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain in-flight calls and exit."""
    # Check runs on the transport's poll thread and needs the interpreter for a
    # few hundred microseconds per call; while the loop thread computes
    # something long (a cold ComputeUsage, a big listing) each of those waits
    # for the loop thread's time slice. 1 ms slices instead of the default 5
    # keep Checks near 3 ms at p50 during such work instead of 17 (measured).
    sys.setswitchinterval(SWITCH_INTERVAL)
    runtime = await build_runtime(config)
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
        raise
    server = Server(config, runtime, transport)
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
