"""gatehouse.v1.GraphService: protobuf in, graph operations, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.struct_pb2 import Struct

from gatehouse.api import convert, cursor
from gatehouse.api.errors import (
    answer_later,
    decode_request,
    inline_abort,
    respond,
    translate_errors,
    without_task,
)
from gatehouse.auth import tenants
from gatehouse.auth.tenants import organizations_of
from gatehouse.errors import FailedPrecondition, GatehouseError, InvalidArgument, quote
from gatehouse.graph.changes import (
    Change,
    DeleteObject,
    DeleteRelationship,
    Operation,
    Precondition,
    PutObject,
    TouchRelationship,
)
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.graph.query import RelationshipFilter
from gatehouse.limits import LIMITS
from gatehouse.names import ID_RE, RELATION_RE, TYPE_RE, object_key, validate_id, validate_type
from gatehouse.runtime import (
    FULLY_CONSISTENT,
    Consistency,
    GraphOperations,
    IndexFollower,
    Mode,
    parse_revision,
)
from gatehouse.transport import Answered, CallInfo, Later, ServicerContext, TimeRemaining
from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import graph_pb2 as pb
from gatehouse.v1 import graph_pb2_grpc as pb_grpc

Context = ServicerContext
_is_type = TYPE_RE.fullmatch
_TOUCH = pb.RelationshipUpdate.OPERATION_TOUCH
_CREATE = pb.RelationshipUpdate.OPERATION_CREATE
_DELETE = pb.RelationshipUpdate.OPERATION_DELETE
_is_id = ID_RE.fullmatch


def _ref(msg: apb.ObjectReference, field: str, part: str = "") -> ObjectRef:
    """The reference ``msg`` names (InvalidArgument naming ``field[.part].type|id``)."""
    type_, id_ = msg.type, msg.id
    if _is_type(type_) and _is_id(id_):  # the usual case: no field names to build
        return ObjectRef(type_, id_)
    where = f"{field}.{part}" if part else field
    return ObjectRef(validate_type(type_, f"{where}.type"), validate_id(id_, f"{where}.id"))


def _relationship(ops: GraphOperations, msg: pb.Relationship, field: str) -> Relationship:
    relation = msg.relation
    if not relation:
        raise InvalidArgument(f"{field}.relation", "is required")
    rel = Relationship(_ref(msg.resource, field, "resource"), relation,
                       _ref(msg.subject, field, "subject"))
    ops.validate_relationship(rel, field)
    return rel


def _write_response(change: Change) -> pb.WriteRelationshipsResponse:
    return pb.WriteRelationshipsResponse(revision=str(change.revision))


def _relationship_msg(rel: Relationship) -> pb.Relationship:
    return pb.Relationship(
        resource=apb.ObjectReference(type=rel.resource.type, id=rel.resource.id),
        relation=rel.relation,
        subject=apb.ObjectReference(type=rel.subject.type, id=rel.subject.id),
    )


def _preconditions(ops: GraphOperations, msgs: Any) -> list[Precondition]:
    if len(msgs) > LIMITS.write_batch:
        raise InvalidArgument("preconditions", f"{len(msgs)} preconditions; at most "
                              f"{LIMITS.write_batch} per call")
    out = []
    for i, p in enumerate(msgs):
        field = f"preconditions[{i}]"
        if p.operation not in (pb.Precondition.OPERATION_MUST_EXIST,
                               pb.Precondition.OPERATION_MUST_NOT_EXIST):
            raise InvalidArgument(f"{field}.operation", "must be MUST_EXIST or MUST_NOT_EXIST")
        rel = _relationship(ops, p.relationship, f"{field}.relationship")
        out.append(Precondition(rel, p.operation == pb.Precondition.OPERATION_MUST_EXIST))
    return out


def _filter(follower: IndexFollower, msg: pb.RelationshipFilter,
            field: str = "filter") -> RelationshipFilter:
    """A filter whose every given part names something the policy declares."""
    policy = follower.policy
    validate_type(msg.resource_type, f"{field}.resource_type")
    tdef = policy.types.get(msg.resource_type)
    if tdef is None:
        raise InvalidArgument(f"{field}.resource_type", f"unknown type {msg.resource_type!r} "
                              f"(declared: {', '.join(sorted(policy.types))})")
    if msg.resource_id:
        validate_id(msg.resource_id, f"{field}.resource_id")
    if msg.relation:
        if not RELATION_RE.fullmatch(msg.relation):
            raise InvalidArgument(f"{field}.relation", f"{quote(msg.relation)} is not a "
                                  "relation name (lowercase letters, digits, '_')")
        if msg.relation not in tdef.relations:
            raise InvalidArgument(f"{field}.relation", f"{msg.relation!r} is not a relation of "
                                  f"{msg.resource_type!r} (relations: "
                                  f"{', '.join(sorted(tdef.relations))})")
    if msg.subject_type:
        validate_type(msg.subject_type, f"{field}.subject_type")
        if msg.subject_type not in policy.types:
            raise InvalidArgument(f"{field}.subject_type", f"unknown type {msg.subject_type!r} "
                                  f"(declared: {', '.join(sorted(policy.types))})")
    if msg.subject_id:
        if not msg.subject_type:
            raise InvalidArgument(f"{field}.subject_type", "is required with subject_id")
        validate_id(msg.subject_id, f"{field}.subject_id")
    return RelationshipFilter(msg.resource_type, msg.resource_id, msg.relation, msg.subject_type,
                              msg.subject_id)


def _filter_tag(flt: RelationshipFilter) -> str:
    return cursor.query_tag("read", flt.resource_type, flt.resource_id, flt.relation,
                            flt.subject_type, flt.subject_id)


def _change_msg(change: Change) -> pb.WatchResponse:
    resp = pb.WatchResponse(revision=str(change.revision))
    for op in change.ops:
        if isinstance(op, TouchRelationship | DeleteRelationship):
            kind = (pb.RelationshipUpdate.OPERATION_TOUCH if isinstance(op, TouchRelationship)
                    else pb.RelationshipUpdate.OPERATION_DELETE)
            resp.relationship_updates.add(operation=kind,
                                          relationship=_relationship_msg(op.relationship))
        else:
            upd = resp.object_updates.add(
                operation=(pb.ObjectUpdate.OPERATION_PUT if isinstance(op, PutObject)
                           else pb.ObjectUpdate.OPERATION_DELETE),
                object=apb.ObjectReference(type=op.ref.type, id=op.ref.id))
            if isinstance(op, PutObject):
                upd.attributes.update(dict(op.attributes))
    return resp


def _require_filter(guard: tenants.TenantGuard, flt: RelationshipFilter,
                    field: str = "filter") -> None:
    """A filter's named resource and subject are the tenant-bound caller's to name."""
    if flt.resource_id:
        key = object_key(flt.resource_type, flt.resource_id)
        if not guard.relationship_visible(key):
            raise tenants.outside(guard, key, f"{field}.resource_id")
    if flt.subject_type and flt.subject_id:
        guard.require(object_key(flt.subject_type, flt.subject_id), f"{field}.subject_id")


def _require_preconditions(guard: tenants.TenantGuard, pres: list[Precondition]) -> None:
    for i, pre in enumerate(pres):
        guard.require_relationship(pre.relationship, f"preconditions[{i}].relationship")


class GraphServicer(pb_grpc.GraphServiceServicer):  # type: ignore[misc]
    """A tenant-bound caller (``Caller.organizations``) writes only objects inside its
    organizations (else the whole request is refused PERMISSION_DENIED naming the
    first update outside; nothing is written), reads and watches only those."""

    def __init__(self, ops: GraphOperations, follower: IndexFollower) -> None:
        self.ops = ops
        self.follower = follower

    def _guard(self, context: Context) -> tenants.TenantGuard | None:
        return self._guard_of(context.call_info())

    def _guard_of(self, info: CallInfo | None) -> tenants.TenantGuard | None:
        organizations = organizations_of(info)
        if organizations is None:
            return None
        view = self.follower.view()
        return tenants.guard(organizations, view.policy, view.index)

    async def _require(self, context: Context,
                       check: Callable[[tenants.TenantGuard], None]) -> frozenset[str] | None:
        return await self._require_of(context.call_info(), context.time_remaining, check)

    async def _require_of(self, info: CallInfo | None, remaining: TimeRemaining,
                          check: Callable[[tenants.TenantGuard], None]) -> frozenset[str] | None:
        """Run a write's tenant ``check`` for a bound caller (None: unbound, nothing to do).

        An object this process's index does not know yet (written a moment ago
        through another process) counts as outside; before refusing, the index
        catches up with the store and the check runs once more.
        """
        guard = self._guard_of(info)
        if guard is None:
            return None
        try:
            check(guard)
        except tenants.OutsideTenants:
            await self.follower.ensure(FULLY_CONSISTENT, remaining())
            guard = self._guard_of(info)
            assert guard is not None
            check(guard)
        return guard.organizations

    @translate_errors
    async def WriteRelationships(self, request: pb.WriteRelationshipsRequest,
                                 context: Context) -> pb.WriteRelationshipsResponse:
        return await self._write(request, context.call_info(), context.time_remaining)

    def write_inline(self, raw: bytes, info: CallInfo | None) -> Later:
        """WriteRelationships through the transport's short path (a write always needs the
        loop, for the store); the same checks, answers and statuses. Without a task
        when nothing needs one (no tenant-bound caller, no trace)."""
        if without_task(info) and organizations_of(info) is None:
            return Later(start=lambda _remaining, answered: self._write_soon(
                raw, info, answered))
        return Later(lambda remaining: answer_later(
            info, pb.WriteRelationshipsRequest, raw,
            lambda req: self._write(req, info, remaining)))

    def _write_soon(self, raw: bytes, info: CallInfo | None, answered: Answered) -> None:
        """The short path of an unbound caller's write: checked here, committed by the
        store's group commit, answered from its callback (on the loop)."""
        request = decode_request(info, pb.WriteRelationshipsRequest, raw)
        try:
            ops, pres, _ = self._plan(request)
        except GatehouseError as exc:
            raise inline_abort(exc) from None
        def written(result: Change | BaseException) -> None:
            answered(respond(info, result, _write_response))

        try:
            self.ops.write_soon(ops, pres, written)
        except Exception as exc:  # a store that raised instead of answering
            written(exc)

    def _plan(self, request: pb.WriteRelationshipsRequest
              ) -> tuple[list[Operation], list[Precondition], list[Precondition]]:
        """The operations and preconditions of a write request (InvalidArgument naming
        the field), and the preconditions the caller gave (without CREATE's own)."""
        updates = request.updates
        if not updates:
            raise InvalidArgument("updates", "give at least one update")
        if len(updates) > LIMITS.write_batch:
            raise InvalidArgument("updates", f"{len(updates)} updates; at most "
                                  f"{LIMITS.write_batch} per call")
        ops: list[Operation] = []
        pres = _preconditions(self.ops, request.preconditions) if request.preconditions else []
        given = list(pres)
        for i, upd in enumerate(updates):
            rel = _relationship(self.ops, upd.relationship, f"updates[{i}].relationship")
            operation = upd.operation
            if operation == _TOUCH:
                ops.append(TouchRelationship(rel))
            elif operation == _CREATE:
                ops.append(TouchRelationship(rel))
                pres.append(Precondition(rel, must_exist=False))
            elif operation == _DELETE:
                ops.append(DeleteRelationship(rel))
            else:
                raise InvalidArgument(f"updates[{i}].operation",
                                      "must be TOUCH, CREATE or DELETE")
        return ops, pres, given

    async def _write(self, request: pb.WriteRelationshipsRequest, info: CallInfo | None,
                     remaining: TimeRemaining) -> pb.WriteRelationshipsResponse:
        ops, pres, given = self._plan(request)

        def inside(guard: tenants.TenantGuard) -> None:
            _require_preconditions(guard, given)
            guard.require_operations(ops, (f"updates[{i}]" for i in range(len(ops))))

        bound = await self._require_of(info, remaining, inside)
        try:
            revision = await self.ops.write(ops, pres)
        except FailedPrecondition as exc:
            raise tenants.without_names(exc) if bound is not None else exc from None
        return pb.WriteRelationshipsResponse(revision=str(revision))

    @translate_errors
    async def DeleteRelationships(self, request: pb.DeleteRelationshipsRequest,
                                  context: Context) -> pb.DeleteRelationshipsResponse:
        flt = _filter(self.follower, request.filter)
        pres = _preconditions(self.ops, request.preconditions)
        def inside(guard: tenants.TenantGuard) -> None:
            _require_filter(guard, flt)
            _require_preconditions(guard, pres)

        organizations = await self._require(context, inside)
        revision, deleted = await self.ops.delete_matching(flt, pres, organizations)
        return pb.DeleteRelationshipsResponse(revision=str(revision), deleted=deleted)

    @translate_errors
    async def ReadRelationships(self, request: pb.ReadRelationshipsRequest,
                                context: Context) -> AsyncIterator[pb.ReadRelationshipsResponse]:
        flt = _filter(self.follower, request.filter)
        if request.page_size > LIMITS.read_page_max:
            raise InvalidArgument("page_size", f"at most {LIMITS.read_page_max}")
        limit = request.page_size or LIMITS.read_page_max
        tag = _filter_tag(flt)
        after = None
        consistency = convert.consistency(request.consistency)
        if request.cursor:
            revision, position = cursor.decode(request.cursor, tag, 3)
            after = (position[0], position[1], position[2])
            if consistency.mode is Mode.MINIMIZE_LATENCY:
                consistency = Consistency.at_least(revision, "cursor")
        await self.follower.ensure(consistency, context.time_remaining())
        guard = self._guard(context)
        if guard is not None:
            _require_filter(guard, flt)
        rels, next_key, revision = self.ops.read_relationships(
            flt, after, limit, guard.organizations if guard is not None else None)
        for rel in rels:
            yield pb.ReadRelationshipsResponse(relationship=_relationship_msg(rel))
        yield pb.ReadRelationshipsResponse(
            revision=str(revision),
            next_cursor=cursor.encode(revision, next_key, tag) if next_key else "",
            complete=next_key is None,
        )

    @translate_errors
    async def WriteObjects(self, request: pb.WriteObjectsRequest,
                           context: Context) -> pb.WriteObjectsResponse:
        if not request.updates:
            raise InvalidArgument("updates", "give at least one update")
        if len(request.updates) > LIMITS.write_batch:
            raise InvalidArgument("updates", f"{len(request.updates)} updates; at most "
                                  f"{LIMITS.write_batch} per call")
        ops: list[Operation] = []
        for i, upd in enumerate(request.updates):
            field = f"updates[{i}]"
            ref = _ref(upd.object, f"{field}.object")
            if upd.operation == pb.ObjectUpdate.OPERATION_PUT:
                attrs = (convert.struct(upd.attributes, f"{field}.attributes",
                                        LIMITS.attributes_bytes)
                         if upd.HasField("attributes") else {})
                ops.append(PutObject(ref, self.ops.validate_object(ref, attrs, field)))
            elif upd.operation == pb.ObjectUpdate.OPERATION_DELETE:
                self.ops.validate_object(ref, {}, field)
                ops.append(DeleteObject(ref))
            else:
                raise InvalidArgument(f"{field}.operation", "must be PUT or DELETE")
        await self._require(context, lambda guard: guard.require_operations(
            ops, (f"updates[{i}]" for i in range(len(ops)))))
        revision = await self.ops.write(ops)
        return pb.WriteObjectsResponse(revision=str(revision))

    @translate_errors
    async def ReadObject(self, request: pb.ReadObjectRequest,
                         context: Context) -> pb.ReadObjectResponse:
        ref = _ref(request.object, "object")
        await self.follower.ensure(convert.consistency(request.consistency),
                                   context.time_remaining())
        attrs, revision = self.ops.read_object(ref, organizations_of(context.call_info()))
        struct = Struct()
        struct.update(dict(attrs))
        return pb.ReadObjectResponse(object=request.object, attributes=struct,
                                     revision=str(revision))

    @translate_errors
    async def Watch(self, request: pb.WatchRequest,
                    context: Context) -> AsyncIterator[pb.WatchResponse]:
        after = None
        if request.after_revision:
            after = parse_revision(request.after_revision, "after_revision")
        organizations = organizations_of(context.call_info())
        async for change in self.ops.watch(after):
            if organizations is not None:
                # Read against the index as it is now: an object the change created
                # and a later one removed is placed by the change's own parent edges.
                view = self.follower.view()
                guard = tenants.TenantGuard(organizations, view.policy, view.index)
                ops = guard.visible_operations(change.ops)
                if not ops:
                    continue
                change = Change(change.revision, tuple(ops), change.committed_at)
            yield _change_msg(change)
