"""gatehouse.v1.AdminService: the policy in force, and reloading it on demand.

Both methods need the ``admin`` scope (``gatehouse.auth.scopes``). A broken
policy on ReloadPolicy is a PolicyError, which ``translate_errors`` answers
FAILED_PRECONDITION with the positioned problems; the policy in force keeps
serving.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from gatehouse.api.errors import translate_errors
from gatehouse.errors import FailedPrecondition
from gatehouse.runtime import IndexFollower, PolicyReloader
from gatehouse.transport import ServicerContext
from gatehouse.v1 import admin_pb2 as pb
from gatehouse.v1 import admin_pb2_grpc as pb_grpc


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


class AdminServicer(pb_grpc.AdminServiceServicer):  # type: ignore[misc]
    def __init__(self, follower: IndexFollower, reloader: PolicyReloader | None,
                 watching: bool) -> None:
        self.follower = follower
        self.reloader = reloader
        self.watching = watching

    def status(self) -> pb.PolicyStatus:
        out = pb.PolicyStatus(policy_version=self.follower.policy.version,
                              index_revision=str(self.follower.revision),
                              watching=self.watching and self.reloader is not None)
        reloader = self.reloader
        if reloader is not None:
            out.policy_dir = str(reloader.policy_dir)
            out.loaded_at.CopyFrom(_timestamp(reloader.loaded_at))
            out.reload_failures = reloader.failures
            failure = reloader.last_failure
            if failure is not None:
                out.last_reload_error = "\n".join(failure.problems)
                out.last_reload_error_at.CopyFrom(_timestamp(failure.at))
        return out

    @translate_errors
    async def GetPolicyStatus(self, request: pb.GetPolicyStatusRequest,
                              context: ServicerContext) -> pb.PolicyStatus:
        return self.status()

    @translate_errors
    async def ReloadPolicy(self, request: pb.ReloadPolicyRequest,
                           context: ServicerContext) -> pb.ReloadPolicyResponse:
        if self.reloader is None:
            raise FailedPrecondition("policy", "this server was started without a policy "
                                     "folder to reload from")
        previous = self.follower.policy.version
        await self.reloader.reload_now()
        return pb.ReloadPolicyResponse(status=self.status(), previous_version=previous)


__all__ = ["AdminServicer"]
