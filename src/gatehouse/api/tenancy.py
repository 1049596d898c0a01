"""gatehouse.v1.TenancyService: protobuf in, tenancy decisions run by the runtime,
protobuf out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from gatehouse.api import convert
from gatehouse.api.errors import translate_errors
from gatehouse.auth.tenants import NOT_YOURS, OutsideTenants, TenantGuard, organizations_of
from gatehouse.errors import InvalidArgument
from gatehouse.graph.model import ObjectRef
from gatehouse.limits import LIMITS
from gatehouse.names import object_key, validate_id, validate_type
from gatehouse.runtime import TenancyOperations
from gatehouse.tenancy import domains, invitations, links, members, moves, tokens, workspaces
from gatehouse.tenancy.commit import Commit
from gatehouse.tenancy.context import Context as Tenancy
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


# -- what a tenant-bound caller's request names ----------------------------------
#
# One function per RPC: given the caller's guard and the operation's view, refuse
# (OutsideTenants) what the request names outside the caller's organizations. They
# run before the operation decides, so a refusal never depends on, nor tells,
# what is in another organization; the operation itself then runs unchanged.

T = TypeVar("T")
Scope = Callable[[TenantGuard, Tenancy, Any], None]


def _actor(g: TenantGuard, ctx: Tenancy, ref: Any, field: str = "actor") -> None:
    g.require(ctx.subject(ref, field).key, field)


def _workspace(g: TenantGuard, ctx: Tenancy, ws_id: str, field: str = "workspace_id") -> None:
    validate_id(ws_id, field)
    g.require(object_key(ctx.rules.workspace, ws_id), field)


def _scope(g: TenantGuard, ctx: Tenancy, ref: Any, field: str = "scope") -> None:
    type_ = validate_type(ref.type, f"{field}.type")
    if type_ in (ctx.rules.organization, ctx.rules.workspace):
        g.require_ref(type_, ref.id, field)
    # any other type: the operation refuses it as INVALID_ARGUMENT


def _record(g: TenantGuard, type_: str | None, record_id: str, field: str) -> None:
    """An invitation or access link named by id (no such records: the operation says so)."""
    if type_ is not None:
        validate_id(record_id, field)
        g.require(object_key(type_, record_id), field)


def _token(g: TenantGuard, ctx: Tenancy, type_: str | None, text: str, what: str) -> None:
    """The record of a valid token decides; an invalid token is the operation's NOT_FOUND."""
    if type_ is None:
        return
    record_id, secret = tokens.parse(text)
    key = object_key(type_, record_id)
    if (tokens.matches(secret, ctx.index.attributes(key).get("secret_sha256"))
            and not g.scoped_inside(key)):
        raise OutsideTenants("token", f"the organization of this {what} {NOT_YOURS}")


def _invitation_type(ctx: Tenancy) -> str | None:
    return ctx.rules.invitations.type if ctx.rules.invitations is not None else None


def _link_type(ctx: Tenancy) -> str | None:
    return ctx.rules.access_links.type if ctx.rules.access_links is not None else None


def _create_organization(g: TenantGuard, ctx: Tenancy, req: Any) -> None:
    # The actor is a newcomer: the organization it creates decides.
    if not req.organization_id:
        raise OutsideTenants("organization_id", "a key bound to organizations creates only "
                             "those; name one of them")
    g.require_organization(req.organization_id, "organization_id")


def _organization(g: TenantGuard, ctx: Tenancy, req: Any) -> None:
    g.require_organization(req.organization_id, "organization_id")


def _in_organization(g: TenantGuard, ctx: Tenancy, req: Any) -> None:
    _organization(g, ctx, req)
    _actor(g, ctx, req.actor)


def _in_workspace(g: TenantGuard, ctx: Tenancy, req: Any) -> None:
    _workspace(g, ctx, req.workspace_id)
    _actor(g, ctx, req.actor)


def _in_scope(g: TenantGuard, ctx: Tenancy, req: Any) -> None:
    _scope(g, ctx, req.scope)
    _actor(g, ctx, req.actor)


def _remove_member(g: TenantGuard, ctx: Tenancy, req: Any) -> None:
    _in_scope(g, ctx, req)
    _actor(g, ctx, req.member, "member")
    if req.reassign_to.type or req.reassign_to.id:
        _actor(g, ctx, req.reassign_to, "reassign_to")


def _invitation(g: TenantGuard, ctx: Tenancy, req: Any) -> None:
    _record(g, _invitation_type(ctx), req.invitation_id, "invitation_id")
    _actor(g, ctx, req.actor)


def _access_link(g: TenantGuard, ctx: Tenancy, req: Any) -> None:
    _record(g, _link_type(ctx), req.link_id, "link_id")
    _actor(g, ctx, req.actor)


def _accept_invitation(g: TenantGuard, ctx: Tenancy, req: Any) -> None:
    # The subject is a newcomer: the invitation's organization decides.
    _token(g, ctx, _invitation_type(ctx), req.token, "invitation")


def _redeem_access_link(g: TenantGuard, ctx: Tenancy, req: Any) -> None:
    _token(g, ctx, _link_type(ctx), req.token, "access link")


def _move_resource(g: TenantGuard, ctx: Tenancy, req: Any) -> None:
    g.require_ref(req.resource.type, req.resource.id, "resource")
    _workspace(g, ctx, req.to_workspace_id, "to_workspace_id")
    _actor(g, ctx, req.actor)


def _add_domain(g: TenantGuard, ctx: Tenancy, req: Any) -> None:
    _in_organization(g, ctx, req)
    if req.workspace_id:
        _workspace(g, ctx, req.workspace_id)


def _join_by_domain(g: TenantGuard, ctx: Tenancy, req: Any) -> None:
    # The subject is a newcomer: the organization its email's domain joins decides.
    if ctx.rules.domains is None:
        return
    email = ctx.email_of(ctx.subject(req.subject, "subject").key)
    if not email:
        return
    joins = [m for m in domains.resolve_signup(ctx, email) if m.mode == domains.AUTO_JOIN]
    if joins and joins[0].organization_id not in g.organizations:
        raise OutsideTenants("subject", "the organization this subject's email domain "
                             f"joins {NOT_YOURS}")


def _guarded(organizations: frozenset[str], scope: Scope, request: Any,
             decide: Callable[[Tenancy], Commit[T]]) -> Callable[[Tenancy], Commit[T]]:
    """``decide`` for a tenant-bound caller: what the request names first, then, as a
    backstop, every organization the decided commit would change."""
    def run(ctx: Tenancy) -> Commit[T]:
        guard = TenantGuard(organizations, ctx.policy, ctx.index)
        scope(guard, ctx, request)
        commit = decide(ctx)
        if any(t not in guard.roots for t in commit.tenants):
            raise OutsideTenants("request", "the operation would change an organization "
                                 "this key may not use")
        return commit
    return run


class TenancyServicer(pb_grpc.TenancyServiceServicer):  # type: ignore[misc]
    """A tenant-bound caller (``Caller.organizations``) may act only in its own
    organizations: the one named, or the one of the workspace, invitation,
    access link or domain named (docs/tenancy.md, "Tenant-bound keys");
    ResolveSignup shows it only matches in those organizations."""

    def __init__(self, tenancy: TenancyOperations) -> None:
        self.ops = tenancy

    async def _run(self, context: Context, scope: Scope, request: Any,
                   decide: Callable[[Tenancy], Commit[T]]) -> T:
        organizations = organizations_of(context.call_info())
        if organizations is not None:
            decide = _guarded(organizations, scope, request, decide)
        return await self.ops.run(decide)

    async def _read(self, context: Context, scope: Scope, request: Any,
                    decide: Callable[[Tenancy], T]) -> T:
        organizations = organizations_of(context.call_info())
        if organizations is None:
            return await self.ops.read(decide)
        bound = organizations

        def run(ctx: Tenancy) -> T:
            scope(TenantGuard(bound, ctx.policy, ctx.index), ctx, request)
            return decide(ctx)
        return await self.ops.read(run)

    @translate_errors
    async def CreateOrganization(self, request: pb.CreateOrganizationRequest,
                                 context: Context) -> pb.CreateOrganizationResponse:
        out = await self._run(context, _create_organization, request,
            lambda ctx: workspaces.create_organization(
                ctx, request.actor, request.organization_id, request.name, request.plan))
        return pb.CreateOrganizationResponse(organization_id=out.organization_id,
                                             workspace_id=out.workspace_id,
                                             revision=str(out.revision))

    @translate_errors
    async def CreateWorkspace(self, request: pb.CreateWorkspaceRequest,
                              context: Context) -> pb.CreateWorkspaceResponse:
        out = await self._run(context, _in_organization, request,
            lambda ctx: workspaces.create_workspace(
                ctx, request.actor, request.organization_id, request.name, request.slug))
        return pb.CreateWorkspaceResponse(workspace_id=out.workspace_id, slug=out.slug,
                                          revision=str(out.revision))

    @translate_errors
    async def CheckSlug(self, request: pb.CheckSlugRequest,
                        context: Context) -> pb.CheckSlugResponse:
        available, reason = await self._read(context, _organization, request,
            lambda ctx: workspaces.check_slug(
                ctx, request.organization_id, request.slug))
        return pb.CheckSlugResponse(available=available, reason=reason)

    @translate_errors
    async def RenameWorkspace(self, request: pb.RenameWorkspaceRequest,
                              context: Context) -> pb.RenameWorkspaceResponse:
        revision = await self._run(context, _in_workspace, request,
            lambda ctx: workspaces.rename_workspace(
                ctx, request.actor, request.workspace_id, request.name))
        return pb.RenameWorkspaceResponse(revision=str(revision))

    @translate_errors
    async def DeleteWorkspace(self, request: pb.DeleteWorkspaceRequest,
                              context: Context) -> pb.DeleteWorkspaceResponse:
        out = await self._run(context, _in_workspace, request,
            lambda ctx: workspaces.delete_workspace(
                ctx, request.actor, request.workspace_id, request.confirm_name))
        return pb.DeleteWorkspaceResponse(revision=str(out.revision), deleted=out.deleted)

    @translate_errors
    async def InviteMember(self, request: pb.InviteMemberRequest,
                           context: Context) -> pb.InviteMemberResponse:
        out = await self._run(context, _in_scope, request, lambda ctx: invitations.invite_member(
            ctx, request.actor, request.scope, request.email, request.role,
            request.ttl_seconds))
        return pb.InviteMemberResponse(invitation_id=out.record_id, token=out.token,
                                       expires_at=_ts(out.expires_at),
                                       revision=str(out.revision))

    @translate_errors
    async def AcceptInvitation(self, request: pb.AcceptInvitationRequest,
                               context: Context) -> pb.AcceptInvitationResponse:
        revision = await self._run(context, _accept_invitation, request,
            lambda ctx: invitations.accept_invitation(
                ctx, request.token, request.subject))
        return pb.AcceptInvitationResponse(revision=str(revision))

    @translate_errors
    async def RevokeInvitation(self, request: pb.RevokeInvitationRequest,
                               context: Context) -> pb.RevokeInvitationResponse:
        revision = await self._run(context, _invitation, request,
            lambda ctx: invitations.revoke_invitation(
                ctx, request.actor, request.invitation_id))
        return pb.RevokeInvitationResponse(revision=str(revision))

    @translate_errors
    async def ResendInvitation(self, request: pb.ResendInvitationRequest,
                               context: Context) -> pb.ResendInvitationResponse:
        out = await self._run(context, _invitation, request,
            lambda ctx: invitations.resend_invitation(
                ctx, request.actor, request.invitation_id))
        return pb.ResendInvitationResponse(token=out.token, expires_at=_ts(out.expires_at),
                                           revision=str(out.revision))

    @translate_errors
    async def ListInvitations(self, request: pb.ListInvitationsRequest,
                              context: Context) -> pb.ListInvitationsResponse:
        found = await self._read(context, _in_scope, request,
            lambda ctx: (invitations.list_invitations(
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
        revision = await self._run(context, _in_scope, request, lambda ctx: members.set_role(
            ctx, request.actor, request.scope, request.subject, request.role))
        return pb.SetRoleResponse(revision=str(revision))

    @translate_errors
    async def RemoveMember(self, request: pb.RemoveMemberRequest,
                           context: Context) -> pb.RemoveMemberResponse:
        out = await self._run(context, _remove_member, request, lambda ctx: members.remove_member(
            ctx, request.actor, request.scope, request.member, request.reassign_to))
        resp = pb.RemoveMemberResponse(revision=str(out.revision))
        resp.reassigned.update(out.reassigned)
        return resp

    @translate_errors
    async def CreateAccessLink(self, request: pb.CreateAccessLinkRequest,
                               context: Context) -> pb.CreateAccessLinkResponse:
        out = await self._run(context, _in_workspace, request, lambda ctx: links.create_access_link(
            ctx, request.actor, request.workspace_id, request.source_type))
        return pb.CreateAccessLinkResponse(link_id=out.record_id, token=out.token,
                                           expires_at=_ts(out.expires_at),
                                           revision=str(out.revision))

    @translate_errors
    async def ListAccessLinks(self, request: pb.ListAccessLinksRequest,
                              context: Context) -> pb.ListAccessLinksResponse:
        views, revision = await self._read(context, _in_workspace, request,
            lambda ctx: (links.list_access_links(
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

        out = await self._run(context, _redeem_access_link, request,
            lambda ctx: links.redeem_access_link(
                ctx, request.token, request.connection_id, attrs))
        return pb.RedeemAccessLinkResponse(connection_id=out.connection_id,
                                           revision=str(out.revision))

    @translate_errors
    async def DeleteAccessLink(self, request: pb.DeleteAccessLinkRequest,
                               context: Context) -> pb.DeleteAccessLinkResponse:
        revision = await self._run(context, _access_link, request,
            lambda ctx: links.delete_access_link(
                ctx, request.actor, request.link_id))
        return pb.DeleteAccessLinkResponse(revision=str(revision))

    @translate_errors
    async def MoveResource(self, request: pb.MoveResourceRequest,
                           context: Context) -> pb.MoveResourceResponse:
        revision = await self._run(context, _move_resource, request,
            lambda ctx: moves.move_resource(
                ctx, request.actor, request.resource, request.to_workspace_id))
        return pb.MoveResourceResponse(revision=str(revision))

    @translate_errors
    async def AddDomain(self, request: pb.AddDomainRequest,
                        context: Context) -> pb.AddDomainResponse:
        mode = _MODES.get(request.mode)
        if mode is None:
            raise InvalidArgument("mode", "must be ENROLLMENT_AUTO_JOIN or ENROLLMENT_SUGGEST")
        revision = await self._run(context, _add_domain, request, lambda ctx: domains.add_domain(
            ctx, request.actor, request.organization_id, request.domain, mode,
            request.workspace_id, request.role))
        return pb.AddDomainResponse(revision=str(revision))

    @translate_errors
    async def ResolveSignup(self, request: pb.ResolveSignupRequest,
                            context: Context) -> pb.ResolveSignupResponse:
        found, revision = await self.ops.read(lambda ctx: (domains.resolve_signup(
            ctx, request.email), ctx.revision))
        organizations = organizations_of(context.call_info())
        if organizations is not None:  # a tenant-bound caller sees its own matches only
            found = [m for m in found if m.organization_id in organizations]
        resp = pb.ResolveSignupResponse(revision=str(revision))
        resp.matches.extend(_match(m) for m in found)
        return resp

    @translate_errors
    async def JoinByDomain(self, request: pb.JoinByDomainRequest,
                           context: Context) -> pb.JoinByDomainResponse:
        out = await self._run(context, _join_by_domain, request,
            lambda ctx: domains.join_by_domain(ctx, request.subject))
        return pb.JoinByDomainResponse(joined=_match(out.match), revision=str(out.revision))
