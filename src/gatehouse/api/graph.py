"""gatehouse.v1.GraphService: protobuf in, runtime calls, protobuf out."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from gatehouse.api import convert
from gatehouse.api.errors import abort
from gatehouse.errors import FailedPrecondition, GatehouseError, InvalidArgument
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
from gatehouse.graph.store import ChangelogGap
from gatehouse.names import validate_id, validate_type
from gatehouse.runtime import Consistency, Runtime
from gatehouse.transport import ServicerContext
from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import graph_pb2 as pb
from gatehouse.v1 import graph_pb2_grpc as pb_grpc

MAX_BATCH = 1000
MAX_PAGE = 1000

Context = ServicerContext


def _ref(msg: apb.ObjectReference, field: str) -> ObjectRef:
    return ObjectRef(validate_type(msg.type, f"{field}.type"), validate_id(msg.id, f"{field}.id"))


def _relationship(runtime: Runtime, msg: pb.Relationship, field: str) -> Relationship:
    if not msg.relation:
        raise InvalidArgument(f"{field}.relation", "is required")
    rel = Relationship(_ref(msg.resource, f"{field}.resource"), msg.relation,
                       _ref(msg.subject, f"{field}.subject"))
    runtime.validate_relationship(rel, field)
    return rel


def _relationship_msg(rel: Relationship) -> pb.Relationship:
    return pb.Relationship(
        resource=apb.ObjectReference(type=rel.resource.type, id=rel.resource.id),
        relation=rel.relation,
        subject=apb.ObjectReference(type=rel.subject.type, id=rel.subject.id),
    )


def _preconditions(runtime: Runtime, msgs: Any) -> list[Precondition]:
    out = []
    for i, p in enumerate(msgs):
        field = f"preconditions[{i}]"
        if p.operation not in (pb.Precondition.OPERATION_MUST_EXIST,
                               pb.Precondition.OPERATION_MUST_NOT_EXIST):
            raise InvalidArgument(f"{field}.operation", "must be MUST_EXIST or MUST_NOT_EXIST")
        rel = _relationship(runtime, p.relationship, f"{field}.relationship")
        out.append(Precondition(rel, p.operation == pb.Precondition.OPERATION_MUST_EXIST))
    return out


def _filter(
    runtime: Runtime, msg: pb.RelationshipFilter, field: str = "filter"
) -> RelationshipFilter:
    validate_type(msg.resource_type, f"{field}.resource_type")
    if msg.resource_type not in runtime.policy.types:
        raise InvalidArgument(f"{field}.resource_type", f"unknown type {msg.resource_type!r}")
    if msg.resource_id:
        validate_id(msg.resource_id, f"{field}.resource_id")
    if msg.subject_type:
        validate_type(msg.subject_type, f"{field}.subject_type")
    if msg.subject_id:
        if not msg.subject_type:
            raise InvalidArgument(f"{field}.subject_type", "is required with subject_id")
        validate_id(msg.subject_id, f"{field}.subject_id")
    return RelationshipFilter(msg.resource_type, msg.resource_id, msg.relation, msg.subject_type,
                              msg.subject_id)


def _encode_cursor(revision: int, key: tuple[str, str, str]) -> str:
    raw = json.dumps([revision, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str) -> tuple[int, tuple[str, str, str]]:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        rev, res, rel, subj = json.loads(raw)
        if not (isinstance(rev, int) and all(isinstance(x, str) for x in (res, rel, subj))):
            raise ValueError
        return rev, (res, rel, subj)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise InvalidArgument("cursor", "is not a cursor this service returned") from None


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


class GraphServicer(pb_grpc.GraphServiceServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def WriteRelationships(
        self, request: pb.WriteRelationshipsRequest, context: Context
    ) -> pb.WriteRelationshipsResponse:
        try:
            if not request.updates:
                raise InvalidArgument("updates", "give at least one update")
            if len(request.updates) > MAX_BATCH:
                raise InvalidArgument("updates", f"{len(request.updates)} updates; at most "
                                      f"{MAX_BATCH} per call")
            ops: list[Operation] = []
            pres = _preconditions(self.runtime, request.preconditions)
            for i, upd in enumerate(request.updates):
                field = f"updates[{i}]"
                rel = _relationship(self.runtime, upd.relationship, f"{field}.relationship")
                if upd.operation == pb.RelationshipUpdate.OPERATION_TOUCH:
                    ops.append(TouchRelationship(rel))
                elif upd.operation == pb.RelationshipUpdate.OPERATION_CREATE:
                    ops.append(TouchRelationship(rel))
                    pres.append(Precondition(rel, must_exist=False))
                elif upd.operation == pb.RelationshipUpdate.OPERATION_DELETE:
                    ops.append(DeleteRelationship(rel))
                else:
                    raise InvalidArgument(f"{field}.operation",
                                          "must be TOUCH, CREATE or DELETE")
            revision = await self.runtime.write(ops, pres)
            return pb.WriteRelationshipsResponse(revision=str(revision))
        except GatehouseError as exc:
            await abort(context, exc)
            raise

    async def DeleteRelationships(
        self, request: pb.DeleteRelationshipsRequest, context: Context
    ) -> pb.DeleteRelationshipsResponse:
        try:
            flt = _filter(self.runtime, request.filter)
            pres = _preconditions(self.runtime, request.preconditions)
            revision, deleted = await self.runtime.delete_matching(flt, pres, MAX_BATCH * 10)
            return pb.DeleteRelationshipsResponse(revision=str(revision), deleted=deleted)
        except GatehouseError as exc:
            await abort(context, exc)
            raise

    async def ReadRelationships(
        self, request: pb.ReadRelationshipsRequest, context: Context
    ) -> AsyncIterator[pb.ReadRelationshipsResponse]:
        try:
            flt = _filter(self.runtime, request.filter)
            if request.page_size > MAX_PAGE:
                raise InvalidArgument("page_size", f"at most {MAX_PAGE}")
            limit = request.page_size or MAX_PAGE
            after = None
            consistency = convert.consistency(request.consistency)
            if request.cursor:
                revision, after = _decode_cursor(request.cursor)
                if consistency.mode == "minimize_latency":
                    consistency = type(consistency)("at_least_as_fresh", revision)
            await self.runtime.ensure(consistency, context.time_remaining())
            rels, next_key, revision = self.runtime.read_relationships(flt, after, limit)
        except GatehouseError as exc:
            await abort(context, exc)
            raise
        for rel in rels:
            yield pb.ReadRelationshipsResponse(relationship=_relationship_msg(rel))
        yield pb.ReadRelationshipsResponse(
            revision=str(revision),
            next_cursor=_encode_cursor(revision, next_key) if next_key else "",
            complete=next_key is None,
        )

    async def WriteObjects(
        self, request: pb.WriteObjectsRequest, context: Context
    ) -> pb.WriteObjectsResponse:
        try:
            if not request.updates:
                raise InvalidArgument("updates", "give at least one update")
            if len(request.updates) > MAX_BATCH:
                raise InvalidArgument("updates", f"at most {MAX_BATCH} per call")
            ops: list[Operation] = []
            for i, upd in enumerate(request.updates):
                field = f"updates[{i}]"
                ref = _ref(upd.object, f"{field}.object")
                if upd.operation == pb.ObjectUpdate.OPERATION_PUT:
                    attrs = MessageToDict(upd.attributes) if upd.HasField("attributes") else {}
                    ops.append(PutObject(ref, self.runtime.validate_object(ref, attrs, field)))
                elif upd.operation == pb.ObjectUpdate.OPERATION_DELETE:
                    self.runtime.validate_object(ref, {}, field)
                    ops.append(DeleteObject(ref))
                else:
                    raise InvalidArgument(f"{field}.operation", "must be PUT or DELETE")
            revision = await self.runtime.write(ops)
            return pb.WriteObjectsResponse(revision=str(revision))
        except GatehouseError as exc:
            await abort(context, exc)
            raise

    async def ReadObject(
        self, request: pb.ReadObjectRequest, context: Context
    ) -> pb.ReadObjectResponse:
        try:
            ref = _ref(request.object, "object")
            await self.runtime.ensure(convert.consistency(request.consistency),
                                      context.time_remaining())
            attrs, revision = self.runtime.read_object(ref)
            struct = Struct()
            struct.update(dict(attrs))
            return pb.ReadObjectResponse(object=request.object, attributes=struct,
                                         revision=str(revision))
        except GatehouseError as exc:
            await abort(context, exc)
            raise

    async def Watch(
        self, request: pb.WatchRequest, context: Context
    ) -> AsyncIterator[pb.WatchResponse]:
        try:
            after = None
            if request.after_revision:
                after = Consistency.at_least(request.after_revision, "after_revision").revision
            changes = self.runtime.watch(after)
            async for change in changes:
                yield _change_msg(change)
        except ChangelogGap as exc:
            await abort(context, FailedPrecondition(
                "changelog", f"cannot resume: {exc}; read the graph again and watch from its "
                "revision"))
        except GatehouseError as exc:
            await abort(context, exc)
            raise
