"""gatehouse.v1.AuthorizationService."""

from __future__ import annotations

import grpc

from gatehouse.api import convert
from gatehouse.api.errors import abort, to_rpc_status
from gatehouse.errors import GatehouseError
from gatehouse.runtime import Runtime
from gatehouse.v1 import authorization_pb2 as pb
from gatehouse.v1 import authorization_pb2_grpc as pb_grpc

MAX_BULK_ITEMS = 1000


class AuthorizationServicer(pb_grpc.AuthorizationServiceServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Check(
        self, request: pb.CheckRequest, context: grpc.aio.ServicerContext  # type: ignore[type-arg]
    ) -> pb.CheckResponse:
        try:
            consistency = convert.consistency(request.consistency)
            await self.runtime.ensure(consistency, context.time_remaining())
            return convert.check_response(self.runtime.check(convert.check_input(request)))
        except GatehouseError as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises

    async def CheckBulk(
        self, request: pb.CheckBulkRequest, context: grpc.aio.ServicerContext  # type: ignore[type-arg]
    ) -> pb.CheckBulkResponse:
        try:
            if len(request.items) > MAX_BULK_ITEMS:
                from gatehouse.errors import InvalidArgument

                raise InvalidArgument(
                    "items", f"{len(request.items)} items; at most {MAX_BULK_ITEMS} per call"
                )
            consistency = convert.consistency(request.consistency)
            await self.runtime.ensure(consistency, context.time_remaining())
        except GatehouseError as exc:
            await abort(context, exc)
            raise
        policy = self.runtime.policy
        results = self.runtime.check_many([convert.check_input(i) for i in request.items])
        resp = pb.CheckBulkResponse(revision=str(self.runtime.index.revision),
                                    policy_version=policy.version)
        for result in results:
            item = resp.results.add()
            if isinstance(result, GatehouseError):
                item.error.CopyFrom(to_rpc_status(result))
            else:
                item.response.CopyFrom(convert.check_response(result))
        return resp
