"""Composition root: build the runtime, wire the gRPC services, serve."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gatehouse.api.authorization import AuthorizationServicer
from gatehouse.graph.datafile import load_data_file
from gatehouse.graph.memory import MemoryGraphStore
from gatehouse.policy.loader import load_policy
from gatehouse.runtime import Runtime
from gatehouse.v1 import authorization_pb2, authorization_pb2_grpc

log = logging.getLogger("gatehouse.server")

SERVICES = ("gatehouse.v1.AuthorizationService",)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    policy_dir: Path = Path("policies/coupler")
    data_file: Path | None = None
    watch_policy: bool = True
    grace_seconds: float = 5.0


async def build_runtime(config: ServerConfig) -> Runtime:
    """Load the policy and data (raising PolicyError/DataFileError) and index them."""
    policy = await asyncio.to_thread(load_policy, config.policy_dir)
    store = MemoryGraphStore()
    if config.data_file is not None:
        ops = await asyncio.to_thread(load_data_file, config.data_file, policy)
        if ops:
            await store.write(ops)
    return await Runtime.start(policy, store, config.policy_dir)


class Server:
    """A running gatehouse gRPC server."""

    def __init__(self, config: ServerConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.grpc = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 8 << 20)]
        )
        authorization_pb2_grpc.add_AuthorizationServiceServicer_to_server(
            AuthorizationServicer(runtime), self.grpc
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        names = [
            authorization_pb2.DESCRIPTOR.services_by_name["AuthorizationService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, self.grpc)
        self.port = self.grpc.add_insecure_port(config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.listen}")
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        await self.grpc.start()
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.config.watch_policy:
            self._tasks.append(asyncio.create_task(self.runtime.watch_policy()))
        log.info(
            "serving",
            extra={
                "address": self.address,
                "policy": str(self.config.policy_dir),
                "policy_version": self.runtime.policy.version,
                "store": "memory (ephemeral: data is lost on exit)",
                "revision": self.runtime.index.revision,
                "relationships": self.runtime.index.relationship_count,
            },
        )

    async def stop(self) -> None:
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.grpc.stop(self.config.grace_seconds)
        log.info("stopped")


async def serve(config: ServerConfig, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain in-flight calls and exit."""
    runtime = await build_runtime(config)
    server = Server(config, runtime)
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
