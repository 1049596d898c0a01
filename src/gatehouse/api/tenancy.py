"""gatehouse.v1.TenancyService: protobuf in, tenancy decisions run by the runtime,
protobuf out."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from gatehouse.api import convert
from gatehouse.api.errors import translate_errors
from gatehouse.errors import InvalidArgument
from gatehouse.graph.model import ObjectRef
from gatehouse.limits import LIMITS
from gatehouse.runtime import TenancyOperations
from gatehouse.tenancy import domains, invitations, links, members, moves, workspaces
from gatehouse.transport import ServicerContext
from gatehouse.v1 import authorization_pb2 as apb
from gatehouse.v1 import tenancy_pb2 as pb
from gatehouse.v1 import tenancy_pb2_grpc as pb_grpc

Context = ServicerContext

_INVITATION_STATUS = {
    invitations.PENDING: pb.INVITATION_PENDING,
    invitations.ACCEPTED: pb.INVITATION_ACCEPTED,
    invitations.REVOKED: pb.INVITATION_REVOKED,
    invitations.EXPIRED: pb.INVITATION_EXPIRED,
}
_LINK_STATUS = {
    links.ACTIVE: pb.ACCESS_LINK_ACTIVE,
    links.USED: pb.ACCESS_LINK_USED,
    links.EXPIRED: pb.ACCESS_LINK_EXPIRED,
}
_MODES: dict[pb.EnrollmentMode, str] = {pb.ENROLLMENT_AUTO_JOIN: domains.AUTO_JOIN,
                                         pb.ENROLLMENT_SUGGEST: domains.SUGGEST}
_MODE_MSG: dict[str, pb.EnrollmentMode] = {v: k for k, v in _MODES.items()}


def _ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def _ref(key: str) -> apb.ObjectReference:
    ref = ObjectRef.from_key(key)
    return apb.ObjectReference(type=ref.type, id=ref.id)


def _match(m: domains.Match) -> pb.SignupMatch:
    return pb.SignupMatch(organization_id=m.organization_id, workspace_id=m.workspace_id,
                          role=m.role,
                          mode=_MODE_MSG.get(m.mode, pb.ENROLLMENT_MODE_UNSPECIFIED))


class TenancyServicer(pb_grpc.TenancyServiceServicer):  # type: ignore[misc]
    def __init__(self, tenancy: TenancyOperations) -> None:
        self.ops = tenancy

    @translate_errors
    async def CreateOrganization(self, request: pb.CreateOrganizationRequest,
                                 context: Context) -> pb.CreateOrganizationResponse:
        out = await self.ops.run(lambda ctx: workspaces.create_organization(
            ctx, request.actor, request.organization_id, request.name, request.plan))
        return pb.CreateOrganizationResponse(organization_id=out.organization_id,
                                             workspace_id=out.workspace_id,
                                             revision=str(out.revision))

    @translate_errors
    async def CreateWorkspace(self, request: pb.CreateWorkspaceRequest,
                              context: Context) -> pb.CreateWorkspaceResponse:
        out = await self.ops.run(lambda ctx: workspaces.create_workspace(
            ctx, request.actor, request.organization_id, request.name, request.slug))
        return pb.CreateWorkspaceResponse(workspace_id=out.workspace_id, slug=out.slug,
                                          revision=str(out.revision))

    @translate_errors
    async def CheckSlug(self, request: pb.CheckSlugRequest,
                        context: Context) -> pb.CheckSlugResponse:
        available, reason = await self.ops.read(lambda ctx: workspaces.check_slug(
            ctx, request.organization_id, request.slug))
        return pb.CheckSlugResponse(available=available, reason=reason)

    @translate_errors
    async def RenameWorkspace(self, request: pb.RenameWorkspaceRequest,
                              context: Context) -> pb.RenameWorkspaceResponse:
        revision = await self.ops.run(lambda ctx: workspaces.rename_workspace(
            ctx, request.actor, request.workspace_id, request.name))
        return pb.RenameWorkspaceResponse(revision=str(revision))

    @translate_errors
    async def DeleteWorkspace(self, request: pb.DeleteWorkspaceRequest,
                              context: Context) -> pb.DeleteWorkspaceResponse:
        out = await self.ops.run(lambda ctx: workspaces.delete_workspace(
            ctx, request.actor, request.workspace_id, request.confirm_name))
        return pb.DeleteWorkspaceResponse(revision=str(out.revision), deleted=out.deleted)

    @translate_errors
    async def InviteMember(self, request: pb.InviteMemberRequest,
                           context: Context) -> pb.InviteMemberResponse:
        out = await self.ops.run(lambda ctx: invitations.invite_member(
            ctx, request.actor, request.scope, request.email, request.role,
            request.ttl_seconds))
        return pb.InviteMemberResponse(invitation_id=out.record_id, token=out.token,
                                       expires_at=_ts(out.expires_at),
                                       revision=str(out.revision))

    @translate_errors
    async def AcceptInvitation(self, request: pb.AcceptInvitationRequest,
                               context: Context) -> pb.AcceptInvitationResponse:
        revision = await self.ops.run(lambda ctx: invitations.accept_invitation(
            ctx, request.token, request.subject))
        return pb.AcceptInvitationResponse(revision=str(revision))

    @translate_errors
    async def RevokeInvitation(self, request: pb.RevokeInvitationRequest,
                               context: Context) -> pb.RevokeInvitationResponse:
        revision = await self.ops.run(lambda ctx: invitations.revoke_invitation(
            ctx, request.actor, request.invitation_id))
        return pb.RevokeInvitationResponse(revision=str(revision))

    @translate_errors
    async def ResendInvitation(self, request: pb.ResendInvitationRequest,
                               context: Context) -> pb.ResendInvitationResponse:
        out = await self.ops.run(lambda ctx: invitations.resend_invitation(
            ctx, request.actor, request.invitation_id))
        return pb.ResendInvitationResponse(token=out.token, expires_at=_ts(out.expires_at),
                                           revision=str(out.revision))

    @translate_errors
    async def ListInvitations(self, request: pb.ListInvitationsRequest,
                              context: Context) -> pb.ListInvitationsResponse:
        found = await self.ops.read(lambda ctx: (invitations.list_invitations(
            ctx, request.actor, request.scope), ctx.revision))
        views, revision = found
        resp = pb.ListInvitationsResponse(revision=str(revision))
        for v in views:
            resp.invitations.add(invitation_id=v.invitation_id, email=v.email, role=v.role,
                                 status=_INVITATION_STATUS.get(v.status, 0),
                                 expires_at=_ts(v.expires_at))
        return resp

    @translate_errors
    async def SetRole(self, request: pb.SetRoleRequest, context: Context) -> pb.SetRoleResponse:
        revision = await self.ops.run(lambda ctx: members.set_role(
            ctx, request.actor, request.scope, request.subject, request.role))
        return pb.SetRoleResponse(revision=str(revision))

    @translate_errors
    async def RemoveMember(self, request: pb.RemoveMemberRequest,
                           context: Context) -> pb.RemoveMemberResponse:
        out = await self.ops.run(lambda ctx: members.remove_member(
            ctx, request.actor, request.scope, request.member, request.reassign_to))
        resp = pb.RemoveMemberResponse(revision=str(out.revision))
        resp.reassigned.update(out.reassigned)
        return resp

    @translate_errors
    async def CreateAccessLink(self, request: pb.CreateAccessLinkRequest,
                               context: Context) -> pb.CreateAccessLinkResponse:
        out = await self.ops.run(lambda ctx: links.create_access_link(
            ctx, request.actor, request.workspace_id, request.source_type))
        return pb.CreateAccessLinkResponse(link_id=out.record_id, token=out.token,
                                           expires_at=_ts(out.expires_at),
                                           revision=str(out.revision))

    @translate_errors
    async def ListAccessLinks(self, request: pb.ListAccessLinksRequest,
                              context: Context) -> pb.ListAccessLinksResponse:
        views, revision = await self.ops.read(lambda ctx: (links.list_access_links(
            ctx, request.actor, request.workspace_id), ctx.revision))
        resp = pb.ListAccessLinksResponse(revision=str(revision))
        for v in views:
            resp.links.add(link_id=v.link_id, source_type=v.source_type,
                           status=_LINK_STATUS.get(v.status, 0),
                           created_by=_ref(v.created_by) if v.created_by else None,
                           expires_at=_ts(v.expires_at), connection_id=v.connection_id)
        return resp

    @translate_errors
    async def RedeemAccessLink(self, request: pb.RedeemAccessLinkRequest,
                               context: Context) -> pb.RedeemAccessLinkResponse:
        attrs = (convert.struct(request.attributes, "attributes", LIMITS.attributes_bytes)
                 if request.HasField("attributes") else {})

        out = await self.ops.run(lambda ctx: links.redeem_access_link(
            ctx, request.token, request.connection_id, attrs))
        return pb.RedeemAccessLinkResponse(connection_id=out.connection_id,
                                           revision=str(out.revision))

    @translate_errors
    async def DeleteAccessLink(self, request: pb.DeleteAccessLinkRequest,
                               context: Context) -> pb.DeleteAccessLinkResponse:
        revision = await self.ops.run(lambda ctx: links.delete_access_link(
            ctx, request.actor, request.link_id))
        return pb.DeleteAccessLinkResponse(revision=str(revision))

    @translate_errors
    async def MoveResource(self, request: pb.MoveResourceRequest,
                           context: Context) -> pb.MoveResourceResponse:
        revision = await self.ops.run(lambda ctx: moves.move_resource(
            ctx, request.actor, request.resource, request.to_workspace_id))
        return pb.MoveResourceResponse(revision=str(revision))

    @translate_errors
    async def AddDomain(self, request: pb.AddDomainRequest,
                        context: Context) -> pb.AddDomainResponse:
        mode = _MODES.get(request.mode)
        if mode is None:
            raise InvalidArgument("mode", "must be ENROLLMENT_AUTO_JOIN or ENROLLMENT_SUGGEST")
        revision = await self.ops.run(lambda ctx: domains.add_domain(
            ctx, request.actor, request.organization_id, request.domain, mode,
            request.workspace_id, request.role))
        return pb.AddDomainResponse(revision=str(revision))

    @translate_errors
    async def ResolveSignup(self, request: pb.ResolveSignupRequest,
                            context: Context) -> pb.ResolveSignupResponse:
        found, revision = await self.ops.read(lambda ctx: (domains.resolve_signup(
            ctx, request.email), ctx.revision))
        resp = pb.ResolveSignupResponse(revision=str(revision))
        resp.matches.extend(_match(m) for m in found)
        return resp

    @translate_errors
    async def JoinByDomain(self, request: pb.JoinByDomainRequest,
                           context: Context) -> pb.JoinByDomainResponse:
        out = await self.ops.run(lambda ctx: domains.join_by_domain(ctx, request.subject))
        return pb.JoinByDomainResponse(joined=_match(out.match), revision=str(out.revision))
