"""Which scope each RPC needs: one table, consulted on every call.

The table is data so that a test can hold it against the services the
protos declare: an RPC added without a scope fails that test, and at run
time a method missing from the table is refused (fail closed), never let
through. Health and reflection are open so that probes and ``grpcurl list``
work without a key.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

_AUTHORIZATION = "/gatehouse.v1.AuthorizationService/"
_GRAPH = "/gatehouse.v1.GraphService/"
_USAGE = "/gatehouse.v1.UsageService/"
_TENANCY = "/gatehouse.v1.TenancyService/"
_ADMIN = "/gatehouse.v1.AdminService/"

_TENANCY_WRITES = (
    "CreateOrganization", "CreateWorkspace", "CheckSlug", "RenameWorkspace", "DeleteWorkspace",
    "InviteMember", "AcceptInvitation", "RevokeInvitation", "ResendInvitation",
    "ListInvitations", "SetRole", "RemoveMember", "CreateAccessLink", "ListAccessLinks",
    "RedeemAccessLink", "DeleteAccessLink", "MoveResource", "AddDomain", "JoinByDomain",
)

METHOD_SCOPES: Mapping[str, str] = MappingProxyType({
    # check: questions about access and usage, answered from the index.
    _AUTHORIZATION + "Check": "check",
    _AUTHORIZATION + "CheckBulk": "check",
    _AUTHORIZATION + "ListAccessible": "check",
    _USAGE + "ComputeUsage": "check",
    _USAGE + "CheckLimit": "check",
    _TENANCY + "ResolveSignup": "check",
    # write: anything that changes the graph or the usage counters.
    _GRAPH + "WriteRelationships": "write",
    _GRAPH + "DeleteRelationships": "write",
    _GRAPH + "WriteObjects": "write",
    _USAGE + "RecordUsage": "write",
    **{_TENANCY + name: "write" for name in _TENANCY_WRITES},
    # read: the raw graph, which a check-only key must not be able to dump.
    _GRAPH + "ReadRelationships": "read",
    _GRAPH + "ReadObject": "read",
    _GRAPH + "Watch": "read",
    # admin: the running server itself.
    _ADMIN + "GetPolicyStatus": "admin",
    _ADMIN + "ReloadPolicy": "admin",
})
"""Full method path → the scope a key needs to call it."""

OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    # Not served, but clients (grpcurl) try it first and fall back to v1alpha
    # only on UNIMPLEMENTED: refusing it for want of a key would break `list`.
    "/grpc.reflection.v1.ServerReflection/",
)
"""Method prefixes anyone may call, with or without a key."""


def is_open(method: str) -> bool:
    """True for health and reflection, which need no key."""
    return method.startswith(OPEN_SERVICES)


def scope_of(method: str) -> str | None:
    """The scope ``method`` needs; None when the table does not know it (refuse it)."""
    return METHOD_SCOPES.get(method)


__all__ = ["METHOD_SCOPES", "OPEN_SERVICES", "is_open", "scope_of"]
