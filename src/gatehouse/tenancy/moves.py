"""Moving a resource (a flow) to another workspace of the same organization."""

from __future__ import annotations

from typing import Any

from gatehouse.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from gatehouse.graph.changes import DeleteRelationship, TouchRelationship
from gatehouse.names import object_key, validate_id, validate_type
from gatehouse.policy.model import PARENT
from gatehouse.tenancy.commit import Commit
from gatehouse.tenancy.context import Context
from gatehouse.tenancy.workspaces import rel


def move_resource(ctx: Context, actor_ref: Any, resource_ref: Any,
                  to_ws_id: str) -> Commit[int]:
    """Re-parent the resource, if the actor may move it out and move things into the
    target; both decided at the revision the move commits at."""
    actor = ctx.subject(actor_ref, "actor")
    guard = ctx.rules.guards.get("move_resource")
    if guard is None:
        raise FailedPrecondition("tenancy", f"policy {ctx.policy.name!r} names no guard for "
                                 "move_resource")
    type_ = validate_type(resource_ref.type, "resource.type")
    tdef = ctx.policy.types.get(type_)
    if tdef is None or tdef.parent != ctx.rules.workspace:
        raise InvalidArgument("resource.type", f"{type_!r} is not a type that lives in a "
                              f"{ctx.rules.workspace!r}")
    resource = object_key(type_, validate_id(resource_ref.id, "resource.id"))
    source = ctx.index.parent(resource)
    if source is None:
        raise NotFound(f"resource: {resource} does not exist")
    target, target_org = ctx.workspace(to_ws_id, "to_workspace_id")
    org = ctx.tenant_of(source)
    if org != target_org:
        raise FailedPrecondition("tenant-boundary", f"{target} is in another organization "
                                 f"than {resource}")
    if guard.action not in tdef.actions or not ctx.allowed(actor.key, guard.action, resource):
        raise PermissionDenied(guard.action, resource, actor.key)
    ctx.authorize(actor, "move_into", target)
    if source == target:
        return Commit((), (), lambda revision: revision)
    ops = (DeleteRelationship(rel(resource, PARENT, source)),
           TouchRelationship(rel(resource, PARENT, target)))
    return Commit(ops, (org,), lambda revision: revision)
