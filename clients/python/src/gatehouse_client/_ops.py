"""Each RPC as data: the request to send, how to read the answer, and whether
the call may be retried. Shared by the sync and the asyncio client, which
differ only in how they wait.

Retry rule: a call is retried on UNAVAILABLE only when sending it twice
cannot change anything: reads (Check, CheckBulk, ListAccessible, ComputeUsage,
CheckLimit, ReadRelationships, ReadObject, CheckSlug, ListInvitations,
ListAccessLinks, ResolveSignup) and RecordUsage, whose event ids make a
repeat count once. Graph writes and tenancy operations are never retried: an
UNAVAILABLE may come after the server committed, and the server keeps no
request ids to recognise a repeat (a TOUCH is idempotent but a CREATE, a
delete's count and every tenancy operation are not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from gatehouse_client._pb.gatehouse.v1 import authorization_pb2 as authz
from gatehouse_client._pb.gatehouse.v1 import graph_pb2 as graph
from gatehouse_client._pb.gatehouse.v1 import tenancy_pb2 as tenancy
from gatehouse_client._pb.gatehouse.v1 import usage_pb2 as usage
from gatehouse_client.errors import code_of, invalid
from gatehouse_client.types import (
    AccessLink,
    AccessLinkStatus,
    AccessLinkToken,
    AddMember,
    Change,
    CheckItem,
    ConnectAccount,
    Consistency,
    CreatedOrganization,
    CreatedWorkspace,
    CreateWorkspace,
    Decision,
    Deleted,
    DeletedWorkspace,
    EnrollmentMode,
    Error,
    Explanation,
    Invitation,
    InvitationStatus,
    InvitationToken,
    Joined,
    LimitCheck,
    LimitDecision,
    MetricUsage,
    ObjectRef,
    RecordAmount,
    Recorded,
    RedeemedLink,
    Relationship,
    RemovedMember,
    SignupMatch,
    SlugCheck,
    StoredObject,
    Usage,
    UsageEvent,
    split_ref,
)

Resp = TypeVar("Resp", bound=Message)
T = TypeVar("T")

AUTHZ = "/gatehouse.v1.AuthorizationService/"
GRAPH = "/gatehouse.v1.GraphService/"
USAGE = "/gatehouse.v1.UsageService/"
TENANCY = "/gatehouse.v1.TenancyService/"


@dataclass(frozen=True, slots=True)
class Unary(Generic[Resp, T]):
    """One unary call: what to send, how to read the answer, whether to retry."""

    method: str
    request: Message
    response_type: type[Resp]
    parse: Callable[[Resp], T]
    retry: bool
    # A write's answer carries the revision the client remembers for reads.
    write: bool = False

    @property
    def name(self) -> str:
        return self.method.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Paged(Generic[Resp, T]):
    """A paged server stream (ListAccessible, ReadRelationships).

    ``items`` reads one message's items. With ``resume_key``, the items come
    in ascending key order, so a page that failed part-way is asked again
    from its cursor and the items already yielded are skipped; without it, a
    page is retried only before its first item.
    """

    method: str
    request: Message
    response_type: type[Resp]
    items: Callable[[Resp], Iterable[T]]
    resume_key: Callable[[T], str] | None = None

    @property
    def name(self) -> str:
        return self.method.rsplit("/", 1)[-1]

    def with_cursor(self, cursor: str) -> Message:
        request = type(self.request)()
        request.CopyFrom(self.request)
        request.cursor = cursor  # type: ignore[attr-defined]
        return request


# -- conversions -------------------------------------------------------------


def serialize(message: Message) -> bytes:
    return message.SerializeToString()



def ref(value: ObjectRef, name: str) -> authz.ObjectReference:
    kind, ident = split_ref(value, name)
    return authz.ObjectReference(type=kind, id=ident)


def opt_ref(value: ObjectRef | None, name: str) -> authz.ObjectReference | None:
    return None if value is None else ref(value, name)


def consistency(value: Consistency | None) -> authz.Consistency | None:
    if value is None:
        return None
    if value.mode == "at_least":
        return authz.Consistency(at_least_as_fresh=value.revision)
    if value.mode == "full":
        return authz.Consistency(fully_consistent=True)
    return authz.Consistency(minimize_latency=True)


def struct(value: Mapping[str, object] | None, name: str) -> struct_pb2.Struct | None:
    if value is None:
        return None
    out = struct_pb2.Struct()
    try:
        out.update(dict(value))  # type: ignore[arg-type]  # checked by protobuf below
    except (TypeError, ValueError) as exc:
        raise invalid(f"{name}: not JSON-like data ({exc})") from None
    return out


def from_struct(value: struct_pb2.Struct) -> dict[str, object]:
    out: dict[str, object] = json_format.MessageToDict(value)
    return out


def timestamp(value: timestamp_pb2.Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def pair(value: authz.ObjectReference) -> tuple[str, str]:
    return value.type, value.id


def relationship(value: Relationship | str, name: str) -> graph.Relationship:
    rel = Relationship.parse(value) if isinstance(value, str) else value
    return graph.Relationship(
        resource=authz.ObjectReference(type=rel.resource[0], id=rel.resource[1]),
        relation=rel.relation,
        subject=authz.ObjectReference(type=rel.subject[0], id=rel.subject[1]))


def from_relationship(value: graph.Relationship) -> Relationship:
    return Relationship(pair(value.resource), value.relation, pair(value.subject))


# -- authorization -----------------------------------------------------------


def _check_request(subject: ObjectRef, action: str, resource: ObjectRef,
                   context: Mapping[str, object] | None, explain: bool,
                   level: authz.Consistency | None, name: str) -> authz.CheckRequest:
    return authz.CheckRequest(subject=ref(subject, f"{name}subject"), action=action,
                              resource=ref(resource, f"{name}resource"),
                              context=struct(context, f"{name}context"), explain=explain,
                              consistency=level)


def decision(resp: authz.CheckResponse) -> Decision:
    explanation = None
    if resp.HasField("explanation"):
        explanation = Explanation(resp.explanation.summary, tuple(resp.explanation.trace))
    return Decision(allowed=resp.decision == authz.DECISION_ALLOW, revision=resp.revision,
                    policy_version=resp.policy_version, explanation=explanation)


def check(subject: ObjectRef, action: str, resource: ObjectRef, *,
          context: Mapping[str, object] | None, explain: bool,
          level: authz.Consistency | None) -> Unary[authz.CheckResponse, Decision]:
    request = _check_request(subject, action, resource, context, explain, level, "")
    return Unary(AUTHZ + "Check", request, authz.CheckResponse, decision, retry=True)


BulkItem = CheckItem | tuple[ObjectRef, str, ObjectRef]


def _bulk_results(resp: authz.CheckBulkResponse) -> list[Decision | Error]:
    out: list[Decision | Error] = []
    for item in resp.results:
        if item.HasField("response"):
            out.append(decision(item.response))
        else:
            out.append(Error(code_of(item.error.code), item.error.message))
    return out


def check_bulk(items: Sequence[BulkItem], *, level: authz.Consistency | None,
               ) -> Unary[authz.CheckBulkResponse, list[Decision | Error]]:
    requests = []
    for i, item in enumerate(items):
        if not isinstance(item, CheckItem):
            if not (isinstance(item, tuple) and len(item) == 3):
                raise invalid(f"items[{i}]: expected CheckItem or (subject, action, resource)")
            item = CheckItem(*item)
        requests.append(_check_request(item.subject, item.action, item.resource, item.context,
                                       item.explain, None, f"items[{i}]."))
    request = authz.CheckBulkRequest(items=requests, consistency=level)
    return Unary(AUTHZ + "CheckBulk", request, authz.CheckBulkResponse, _bulk_results,
                 retry=True)


def list_accessible(subject: ObjectRef, action: str, resource_type: str, *,
                    within: ObjectRef | None, page_size: int, context: Mapping[str, object] | None,
                    level: authz.Consistency | None,
                    ) -> Paged[authz.ListAccessibleResponse, str]:
    request = authz.ListAccessibleRequest(
        subject=ref(subject, "subject"), action=action, resource_type=resource_type,
        within=opt_ref(within, "within"), page_size=page_size, consistency=level,
        context=struct(context, "context"))
    return Paged(AUTHZ + "ListAccessible", request, authz.ListAccessibleResponse,
                 lambda m: m.resource_ids, resume_key=lambda i: i)


# -- graph -------------------------------------------------------------------


def _revision(resp: Any) -> str:
    return str(resp.revision)


def _preconditions(must_exist: Iterable[Relationship | str],
                   must_not_exist: Iterable[Relationship | str]) -> list[graph.Precondition]:
    out = [graph.Precondition(operation=graph.Precondition.OPERATION_MUST_EXIST,
                              relationship=relationship(r, "must_exist"))
           for r in must_exist]
    out += [graph.Precondition(operation=graph.Precondition.OPERATION_MUST_NOT_EXIST,
                               relationship=relationship(r, "must_not_exist"))
            for r in must_not_exist]
    return out


def write_relationships(touch: Iterable[Relationship | str], create: Iterable[Relationship | str],
                        delete: Iterable[Relationship | str],
                        must_exist: Iterable[Relationship | str],
                        must_not_exist: Iterable[Relationship | str],
                        ) -> Unary[graph.WriteRelationshipsResponse, str]:
    ops = graph.RelationshipUpdate
    updates = [ops(operation=ops.OPERATION_TOUCH, relationship=relationship(r, "touch"))
               for r in touch]
    updates += [ops(operation=ops.OPERATION_CREATE, relationship=relationship(r, "create"))
                for r in create]
    updates += [ops(operation=ops.OPERATION_DELETE, relationship=relationship(r, "delete"))
                for r in delete]
    request = graph.WriteRelationshipsRequest(
        updates=updates, preconditions=_preconditions(must_exist, must_not_exist))
    return Unary(GRAPH + "WriteRelationships", request, graph.WriteRelationshipsResponse,
                 _revision, retry=False, write=True)


def delete_relationships(resource_type: str, resource_id: str, relation: str,
                         subject_type: str, subject_id: str,
                         must_exist: Iterable[Relationship | str],
                         must_not_exist: Iterable[Relationship | str],
                         ) -> Unary[graph.DeleteRelationshipsResponse, Deleted]:
    request = graph.DeleteRelationshipsRequest(
        filter=graph.RelationshipFilter(resource_type=resource_type, resource_id=resource_id,
                                        relation=relation, subject_type=subject_type,
                                        subject_id=subject_id),
        preconditions=_preconditions(must_exist, must_not_exist))
    return Unary(GRAPH + "DeleteRelationships", request, graph.DeleteRelationshipsResponse,
                 lambda r: Deleted(r.revision, r.deleted), retry=False, write=True)


def read_relationships(resource_type: str, resource_id: str, relation: str, subject_type: str,
                       subject_id: str, *, page_size: int, level: authz.Consistency | None,
                       ) -> Paged[graph.ReadRelationshipsResponse, Relationship]:
    request = graph.ReadRelationshipsRequest(
        filter=graph.RelationshipFilter(resource_type=resource_type, resource_id=resource_id,
                                        relation=relation, subject_type=subject_type,
                                        subject_id=subject_id),
        consistency=level, page_size=page_size)
    return Paged(GRAPH + "ReadRelationships", request, graph.ReadRelationshipsResponse,
                 lambda m: [from_relationship(m.relationship)] if m.HasField("relationship")
                 else [])


def write_objects(put: Mapping[ObjectRef, Mapping[str, object]] | Iterable[
                      tuple[ObjectRef, Mapping[str, object]]],
                  delete: Iterable[ObjectRef]) -> Unary[graph.WriteObjectsResponse, str]:
    ops = graph.ObjectUpdate
    pairs = put.items() if isinstance(put, Mapping) else put
    updates = [ops(operation=ops.OPERATION_PUT, object=ref(obj, "put"),
                   attributes=struct(attrs, "put.attributes")) for obj, attrs in pairs]
    updates += [ops(operation=ops.OPERATION_DELETE, object=ref(obj, "delete")) for obj in delete]
    return Unary(GRAPH + "WriteObjects", graph.WriteObjectsRequest(updates=updates),
                 graph.WriteObjectsResponse, _revision, retry=False, write=True)


def read_object(obj: ObjectRef, *, level: authz.Consistency | None,
                ) -> Unary[graph.ReadObjectResponse, StoredObject]:
    request = graph.ReadObjectRequest(object=ref(obj, "object"), consistency=level)
    return Unary(GRAPH + "ReadObject", request, graph.ReadObjectResponse,
                 lambda r: StoredObject(r.object.type, r.object.id, from_struct(r.attributes),
                                        r.revision), retry=True)


# -- usage -------------------------------------------------------------------


def _metric(m: usage.MetricUsage) -> MetricUsage:
    return MetricUsage(name=m.name, value=m.value,
                       limit=m.limit if m.HasField("limit") else None, over=m.over,
                       by_workspace=dict(m.by_workspace), by_source_type=dict(m.by_source_type),
                       unit=m.unit, description=m.description)


def _usage(r: usage.ComputeUsageResponse) -> Usage:
    return Usage(organization_id=r.organization_id, workspace_id=r.workspace_id, plan=r.plan,
                 plan_is_fallback=r.plan_is_fallback, features=tuple(r.features),
                 metrics=tuple(_metric(m) for m in r.metrics), revision=r.revision,
                 period=r.period)


def compute_usage(organization: str, *, workspace: str | None, metrics: Sequence[str],
                  period: str | None, level: authz.Consistency | None,
                  ) -> Unary[usage.ComputeUsageResponse, Usage]:
    request = usage.ComputeUsageRequest(organization_id=organization,
                                        workspace_id=workspace or "", metrics=list(metrics),
                                        period=period or "", consistency=level)
    return Unary(USAGE + "ComputeUsage", request, usage.ComputeUsageResponse, _usage,
                 retry=True)


def _event(e: UsageEvent, i: int) -> usage.UsageEvent:
    if not isinstance(e, UsageEvent):
        raise invalid(f"events[{i}]: expected a UsageEvent")
    out = usage.UsageEvent(event_id=e.event_id, workspace_id=e.workspace_id, metric=e.metric,
                           amount=e.amount, dimension=e.dimension)
    if e.event_time is not None:
        out.event_time.FromDatetime(e.event_time)
    return out


def record_usage(organization: str, events: Iterable[UsageEvent],
                 ) -> Unary[usage.RecordUsageResponse, list[Recorded]]:
    request = usage.RecordUsageRequest(
        organization_id=organization, events=[_event(e, i) for i, e in enumerate(events)])
    return Unary(USAGE + "RecordUsage", request, usage.RecordUsageResponse,
                 lambda r: [Recorded(x.event_id, x.duplicate) for x in r.results], retry=True)


def _limit(r: usage.CheckLimitResponse) -> LimitDecision:
    checks = tuple(LimitCheck(c.metric, c.current, c.proposed,
                              c.limit if c.HasField("limit") else None, c.allowed)
                   for c in r.checks)
    return LimitDecision(r.allowed, r.reason, checks, r.plan, r.revision)


def check_limit(organization: str, change: Change, *, level: authz.Consistency | None,
                ) -> Unary[usage.CheckLimitResponse, LimitDecision]:
    request = usage.CheckLimitRequest(organization_id=organization, consistency=level)
    if isinstance(change, CreateWorkspace):
        request.create_workspace.SetInParent()
    elif isinstance(change, AddMember):
        request.add_member.CopyFrom(usage.AddMember(workspace_id=change.workspace_id,
                                                    email=change.email))
    elif isinstance(change, ConnectAccount):
        request.connect_account.CopyFrom(usage.ConnectAccount(
            workspace_id=change.workspace_id, source_type=change.source_type,
            credential_id=change.credential_id, tenants=list(change.tenants)))
    elif isinstance(change, RecordAmount):
        request.record.CopyFrom(usage.RecordAmount(
            workspace_id=change.workspace_id, metric=change.metric, amount=change.amount,
            dimension=change.dimension))
    else:
        raise invalid("change: expected CreateWorkspace, AddMember, ConnectAccount "
                         "or RecordAmount")
    return Unary(USAGE + "CheckLimit", request, usage.CheckLimitResponse, _limit, retry=True)


# -- tenancy -----------------------------------------------------------------


def _tenancy_write(method: str, request: Message, response_type: type[Resp],
                   parse: Callable[[Resp], T]) -> Unary[Resp, T]:
    return Unary(TENANCY + method, request, response_type, parse, retry=False, write=True)


def _tenancy_read(method: str, request: Message, response_type: type[Resp],
                  parse: Callable[[Resp], T]) -> Unary[Resp, T]:
    return Unary(TENANCY + method, request, response_type, parse, retry=True)


_INVITATION = {
    tenancy.INVITATION_PENDING: InvitationStatus.PENDING,
    tenancy.INVITATION_ACCEPTED: InvitationStatus.ACCEPTED,
    tenancy.INVITATION_REVOKED: InvitationStatus.REVOKED,
    tenancy.INVITATION_EXPIRED: InvitationStatus.EXPIRED,
}
_LINK = {
    tenancy.ACCESS_LINK_ACTIVE: AccessLinkStatus.ACTIVE,
    tenancy.ACCESS_LINK_USED: AccessLinkStatus.USED,
    tenancy.ACCESS_LINK_EXPIRED: AccessLinkStatus.EXPIRED,
}
_MODE = {
    tenancy.ENROLLMENT_AUTO_JOIN: EnrollmentMode.AUTO_JOIN,
    tenancy.ENROLLMENT_SUGGEST: EnrollmentMode.SUGGEST,
}
_MODE_WIRE = {v: k for k, v in _MODE.items()}


def _match(m: tenancy.SignupMatch) -> SignupMatch:
    return SignupMatch(m.organization_id, m.workspace_id, m.role,
                       _MODE.get(m.mode, EnrollmentMode.UNSPECIFIED))


def create_organization(actor: ObjectRef, name: str, organization_id: str, plan: str,
                        ) -> Unary[tenancy.CreateOrganizationResponse, CreatedOrganization]:
    return _tenancy_write("CreateOrganization", tenancy.CreateOrganizationRequest(
        actor=ref(actor, "actor"), organization_id=organization_id, name=name, plan=plan),
        tenancy.CreateOrganizationResponse,
        lambda r: CreatedOrganization(r.organization_id, r.workspace_id, r.revision))


def create_workspace(actor: ObjectRef, organization_id: str, name: str, slug: str,
                     ) -> Unary[tenancy.CreateWorkspaceResponse, CreatedWorkspace]:
    return _tenancy_write("CreateWorkspace", tenancy.CreateWorkspaceRequest(
        actor=ref(actor, "actor"), organization_id=organization_id, name=name, slug=slug),
        tenancy.CreateWorkspaceResponse,
        lambda r: CreatedWorkspace(r.workspace_id, r.slug, r.revision))


def check_slug(organization_id: str, slug: str) -> Unary[tenancy.CheckSlugResponse, SlugCheck]:
    return _tenancy_read("CheckSlug", tenancy.CheckSlugRequest(
        organization_id=organization_id, slug=slug), tenancy.CheckSlugResponse,
        lambda r: SlugCheck(r.available, r.reason))


def rename_workspace(actor: ObjectRef, workspace_id: str, name: str,
                     ) -> Unary[tenancy.RenameWorkspaceResponse, str]:
    return _tenancy_write("RenameWorkspace", tenancy.RenameWorkspaceRequest(
        actor=ref(actor, "actor"), workspace_id=workspace_id, name=name),
        tenancy.RenameWorkspaceResponse, _revision)


def delete_workspace(actor: ObjectRef, workspace_id: str, confirm_name: str,
                     ) -> Unary[tenancy.DeleteWorkspaceResponse, DeletedWorkspace]:
    return _tenancy_write("DeleteWorkspace", tenancy.DeleteWorkspaceRequest(
        actor=ref(actor, "actor"), workspace_id=workspace_id, confirm_name=confirm_name),
        tenancy.DeleteWorkspaceResponse, lambda r: DeletedWorkspace(r.revision, r.deleted))


def invite_member(actor: ObjectRef, scope: ObjectRef, email: str, role: str, ttl_seconds: int,
                  ) -> Unary[tenancy.InviteMemberResponse, InvitationToken]:
    return _tenancy_write("InviteMember", tenancy.InviteMemberRequest(
        actor=ref(actor, "actor"), scope=ref(scope, "scope"), email=email, role=role,
        ttl_seconds=ttl_seconds), tenancy.InviteMemberResponse,
        lambda r: InvitationToken(r.invitation_id, r.token, timestamp(r.expires_at),
                                  r.revision))


def accept_invitation(token: str, subject: ObjectRef,
                      ) -> Unary[tenancy.AcceptInvitationResponse, str]:
    return _tenancy_write("AcceptInvitation", tenancy.AcceptInvitationRequest(
        token=token, subject=ref(subject, "subject")), tenancy.AcceptInvitationResponse,
        _revision)


def revoke_invitation(actor: ObjectRef, invitation_id: str,
                      ) -> Unary[tenancy.RevokeInvitationResponse, str]:
    return _tenancy_write("RevokeInvitation", tenancy.RevokeInvitationRequest(
        actor=ref(actor, "actor"), invitation_id=invitation_id),
        tenancy.RevokeInvitationResponse, _revision)


def resend_invitation(actor: ObjectRef, invitation_id: str,
                      ) -> Unary[tenancy.ResendInvitationResponse, InvitationToken]:
    return _tenancy_write("ResendInvitation", tenancy.ResendInvitationRequest(
        actor=ref(actor, "actor"), invitation_id=invitation_id),
        tenancy.ResendInvitationResponse,
        lambda r: InvitationToken(invitation_id, r.token, timestamp(r.expires_at), r.revision))


def list_invitations(actor: ObjectRef, scope: ObjectRef,
                     ) -> Unary[tenancy.ListInvitationsResponse, list[Invitation]]:
    return _tenancy_read("ListInvitations", tenancy.ListInvitationsRequest(
        actor=ref(actor, "actor"), scope=ref(scope, "scope")), tenancy.ListInvitationsResponse,
        lambda r: [Invitation(i.invitation_id, i.email, i.role,
                              _INVITATION.get(i.status, InvitationStatus.UNSPECIFIED),
                              timestamp(i.expires_at)) for i in r.invitations])


def set_role(actor: ObjectRef, scope: ObjectRef, subject: ObjectRef, role: str,
             ) -> Unary[tenancy.SetRoleResponse, str]:
    return _tenancy_write("SetRole", tenancy.SetRoleRequest(
        actor=ref(actor, "actor"), scope=ref(scope, "scope"), subject=ref(subject, "subject"),
        role=role), tenancy.SetRoleResponse, _revision)


def remove_member(actor: ObjectRef, scope: ObjectRef, member: ObjectRef,
                  reassign_to: ObjectRef | None,
                  ) -> Unary[tenancy.RemoveMemberResponse, RemovedMember]:
    return _tenancy_write("RemoveMember", tenancy.RemoveMemberRequest(
        actor=ref(actor, "actor"), scope=ref(scope, "scope"), member=ref(member, "member"),
        reassign_to=opt_ref(reassign_to, "reassign_to")), tenancy.RemoveMemberResponse,
        lambda r: RemovedMember(r.revision, dict(r.reassigned)))


def create_access_link(actor: ObjectRef, workspace_id: str, source_type: str,
                       ) -> Unary[tenancy.CreateAccessLinkResponse, AccessLinkToken]:
    return _tenancy_write("CreateAccessLink", tenancy.CreateAccessLinkRequest(
        actor=ref(actor, "actor"), workspace_id=workspace_id, source_type=source_type),
        tenancy.CreateAccessLinkResponse,
        lambda r: AccessLinkToken(r.link_id, r.token, timestamp(r.expires_at), r.revision))


def list_access_links(actor: ObjectRef, workspace_id: str,
                      ) -> Unary[tenancy.ListAccessLinksResponse, list[AccessLink]]:
    return _tenancy_read("ListAccessLinks", tenancy.ListAccessLinksRequest(
        actor=ref(actor, "actor"), workspace_id=workspace_id), tenancy.ListAccessLinksResponse,
        lambda r: [AccessLink(x.link_id, x.source_type,
                              _LINK.get(x.status, AccessLinkStatus.UNSPECIFIED),
                              pair(x.created_by), timestamp(x.expires_at), x.connection_id)
                   for x in r.links])


def redeem_access_link(token: str, connection_id: str, attributes: Mapping[str, object] | None,
                       ) -> Unary[tenancy.RedeemAccessLinkResponse, RedeemedLink]:
    return _tenancy_write("RedeemAccessLink", tenancy.RedeemAccessLinkRequest(
        token=token, connection_id=connection_id,
        attributes=struct(attributes, "attributes")), tenancy.RedeemAccessLinkResponse,
        lambda r: RedeemedLink(r.connection_id, r.revision))


def delete_access_link(actor: ObjectRef, link_id: str,
                       ) -> Unary[tenancy.DeleteAccessLinkResponse, str]:
    return _tenancy_write("DeleteAccessLink", tenancy.DeleteAccessLinkRequest(
        actor=ref(actor, "actor"), link_id=link_id), tenancy.DeleteAccessLinkResponse,
        _revision)


def move_resource(actor: ObjectRef, resource: ObjectRef, to_workspace_id: str,
                  ) -> Unary[tenancy.MoveResourceResponse, str]:
    return _tenancy_write("MoveResource", tenancy.MoveResourceRequest(
        actor=ref(actor, "actor"), resource=ref(resource, "resource"),
        to_workspace_id=to_workspace_id), tenancy.MoveResourceResponse, _revision)


def add_domain(actor: ObjectRef, organization_id: str, domain: str, mode: EnrollmentMode | str,
               workspace_id: str, role: str) -> Unary[tenancy.AddDomainResponse, str]:
    try:
        wire_mode = _MODE_WIRE[EnrollmentMode(mode)]
    except (KeyError, ValueError):
        raise invalid(f"mode: expected 'auto_join' or 'suggest', got {str(mode)[:20]!r}",
                         ) from None
    return _tenancy_write("AddDomain", tenancy.AddDomainRequest(
        actor=ref(actor, "actor"), organization_id=organization_id, domain=domain,
        mode=wire_mode, workspace_id=workspace_id, role=role),
        tenancy.AddDomainResponse, _revision)


def resolve_signup(email: str) -> Unary[tenancy.ResolveSignupResponse, list[SignupMatch]]:
    return _tenancy_read("ResolveSignup", tenancy.ResolveSignupRequest(email=email),
                         tenancy.ResolveSignupResponse, lambda r: [_match(m) for m in r.matches])


def join_by_domain(subject: ObjectRef) -> Unary[tenancy.JoinByDomainResponse, Joined]:
    return _tenancy_write("JoinByDomain", tenancy.JoinByDomainRequest(
        subject=ref(subject, "subject")), tenancy.JoinByDomainResponse,
        lambda r: Joined(_match(r.joined), r.revision))
