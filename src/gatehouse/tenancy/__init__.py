"""Tenancy operations as pure decisions.

Each operation is a function of a :class:`Context` — one view of the graph,
the clock and the policy's ``tenancy:`` rules — returning a :class:`Commit`:
the write batch and the answer. Nothing here writes; the runtime's
``TenancyOperations`` commits a decision only if the organization is
unchanged since the view it was decided from (docs/tenancy.md).

::

    workspaces   CreateOrganization, CreateWorkspace, CheckSlug, Rename, Delete
    invitations  InviteMember, AcceptInvitation, Revoke, Resend, ListInvitations
    members      SetRole, RemoveMember (with reassignment)
    links        CreateAccessLink, ListAccessLinks, RedeemAccessLink, DeleteAccessLink
    domains      AddDomain, ResolveSignup, JoinByDomain
    moves        MoveResource
"""

from gatehouse.tenancy.commit import Commit
from gatehouse.tenancy.context import Context

__all__ = ["Commit", "Context"]
