#!/usr/bin/env python3
"""A do-nothing gatehouse.v1.AuthorizationService: every check is DECISION_ALLOW.

It parses the request and builds a response like gatehouse does, through the
same generated code on the stock ``grpc.aio`` server, but decides nothing:
the ceiling of a one-process ``grpc.aio`` server on this machine (gatehouse
itself serves from its own transport, ``gatehouse.transport``). It also
serves ``grpc.health.v1.Health`` so the benchmark can wait for it.

    .venv/bin/python bench/null_server.py --listen 127.0.0.1:50099 [--transport core]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gatehouse.transport.core import CoreServer
from gatehouse.v1 import authorization_pb2 as pb
from gatehouse.v1 import authorization_pb2_grpc as pb_grpc

REVISION = "1"
POLICY_VERSION = "null"


class NullAuthorization(pb_grpc.AuthorizationServiceServicer):  # type: ignore[misc]
    async def Check(self, request: pb.CheckRequest,
                    context: grpc.aio.ServicerContext) -> pb.CheckResponse:  # type: ignore[type-arg]
        return pb.CheckResponse(decision=pb.DECISION_ALLOW, revision=REVISION,
                                policy_version=POLICY_VERSION)

    async def CheckBulk(self, request: pb.CheckBulkRequest,
                        context: grpc.aio.ServicerContext  # type: ignore[type-arg]
                        ) -> pb.CheckBulkResponse:
        resp = pb.CheckBulkResponse(revision=REVISION, policy_version=POLICY_VERSION)
        for _ in request.items:
            item = resp.results.add()
            item.response.decision = pb.DECISION_ALLOW
            item.response.revision = REVISION
            item.response.policy_version = POLICY_VERSION
        return resp


def _inline_check(raw: bytes, info: object) -> bytes:
    pb.CheckRequest.FromString(raw)
    out: bytes = pb.CheckResponse(decision=pb.DECISION_ALLOW, revision=REVISION,
                                  policy_version=POLICY_VERSION).SerializeToString()
    return out


async def serve(listen: str, transport: str = "aio", tls: tuple[str, str] | None = None) -> None:
    options = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 8 << 20)]
    server: Any = CoreServer(options) if transport == "core" else grpc.aio.server(options=options)
    pb_grpc.add_AuthorizationServiceServicer_to_server(NullAuthorization(), server)
    if transport == "core":
        server.add_inline("/gatehouse.v1.AuthorizationService/Check", _inline_check)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if tls is not None:
        pair = (Path(tls[1]).read_bytes(), Path(tls[0]).read_bytes())
        creds = grpc.ssl_server_credentials([pair])
        port = server.add_secure_port(listen, creds)
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--listen", default="127.0.0.1:50099", help="loopback host:port")
    p.add_argument("--transport", choices=("aio", "core"), default="aio",
                   help="aio: the stock grpc.aio server (what compare.py runs); core: "
                        "gatehouse.transport with Check answered inline, the ceiling of "
                        "gatehouse's own transport")
    p.add_argument("--tls-cert", help="serve TLS with this certificate (PEM; with --tls-key)")
    p.add_argument("--tls-key", help="the certificate's private key (PEM)")
    args = p.parse_args(argv)
    if args.tls_cert and args.transport == "core":
        p.error("--tls-cert serves on the aio transport only")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, args.transport, tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
