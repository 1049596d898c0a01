"""The synchronous client: one gRPC channel, typed helpers, deadlines,
retries of idempotent calls, and read-your-writes consistency.

A ``Client`` is safe to share between threads; create one per process and
reuse it (a channel is expensive to open, cheap to use).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from gatehouse_client import _core, _env, _ops
from gatehouse_client._core import DEFAULT_RETRY
from gatehouse_client.errors import Internal, from_rpc_error
from gatehouse_client.types import (
    TLS,
    AccessLink,
    AccessLinkToken,
    Change,
    Consistency,
    CreatedOrganization,
    CreatedWorkspace,
    Decision,
    Deleted,
    DeletedWorkspace,
    EnrollmentMode,
    Error,
    Invitation,
    InvitationToken,
    Joined,
    LimitDecision,
    ObjectRef,
    Recorded,
    RedeemedLink,
    Relationship,
    RemovedMember,
    Retry,
    SignupMatch,
    SlugCheck,
    StoredObject,
    Usage,
    UsageEvent,
)

T = TypeVar("T")
Resp = TypeVar("Resp", bound=Message)
Rel = Relationship | str


def _open_channel(settings: _core.Settings) -> grpc.Channel:
    if settings.tls is None:
        return grpc.insecure_channel(settings.address, options=list(settings.options))
    return grpc.secure_channel(settings.address, settings.tls.credentials(),
                               options=list(settings.options))


class Client:
    """A connection to a gatehouse server.

    ``timeout`` is every call's default deadline in seconds, retries
    included (``timeout=`` on a call overrides it). ``retries`` applies to
    reads and RecordUsage only (see ``Retry``; an int is an attempt count,
    None or 0 turns retries off). With ``read_your_writes``
    (the default) reads ask for at least the revision of this client's
    latest write, so a check right after a write sees it.
    """

    def __init__(self, address: str, *, api_key: str | None = None, tls: TLS | None = None,
                 timeout: float = 5.0, retries: Retry | int | None = DEFAULT_RETRY,
                 read_your_writes: bool = True,
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        self._settings = _core.Settings.make(address, api_key, tls, timeout,
                                             retries,
                                             read_your_writes, options)
        self._metadata = self._settings.metadata()
        self._channel = _open_channel(self._settings)
        self._revisions = _core.Revisions()
        self._calls: dict[str, Callable[..., Any]] = {}
        self.tenancy = Tenancy(self)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, timeout: float = 5.0,
                 retries: Retry | int | None = DEFAULT_RETRY, read_your_writes: bool = True,
                 options: Sequence[tuple[str, Any]] = ()) -> Client:
        """A client configured like ``gatehouse check``: address, key and TLS from
        ``GATEHOUSE_*`` variables (``os.environ`` unless ``env`` is given); see the README.

        A bad value (an unreadable key file, a certificate without its key) raises
        ValueError naming the variable.
        """
        found = _env.from_env(os.environ if env is None else env)
        return cls(found.address, api_key=found.api_key, tls=found.tls, timeout=timeout,
                   retries=retries, read_your_writes=read_your_writes, options=options)

    # -- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self._settings.address!r})"

    @property
    def revision(self) -> str | None:
        """The highest revision a write through this client returned (None before any)."""
        return self._revisions.current()

    def observe_revision(self, revision: str | int) -> None:
        """Read at least at ``revision`` from now on (e.g. a token another service wrote)."""
        _core.observe_revision(self._revisions, revision)

    # -- the call loop ----------------------------------------------------------

    def _multicallable(self, method: str, response_type: type[Message],
                       stream: bool) -> Callable[..., Any]:
        fn = self._calls.get(method)
        if fn is None:
            factory = self._channel.unary_stream if stream else self._channel.unary_unary
            fn = factory(method, request_serializer=_ops.serialize,
                         response_deserializer=response_type.FromString)
            self._calls[method] = fn
        return fn

    def _deadline(self, timeout: float | None) -> float:
        limit = self._settings.timeout if timeout is None else _core.check_timeout(timeout)
        return time.monotonic() + limit

    def _unary(self, op: _ops.Unary[Resp, T], timeout: float | None) -> T:
        fn = self._multicallable(op.method, op.response_type, stream=False)
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            try:
                response = fn(op.request, timeout=max(deadline - time.monotonic(), 0.001),
                              metadata=self._metadata)
            except grpc.RpcError as exc:
                err = from_rpc_error(exc, op.name)
                wait = _core.pause(self._settings.retry, attempt, err, op.retry, deadline)
                if wait is None:
                    raise err from None
                time.sleep(wait)
                attempt += 1
                continue
            _core.observe_write(op, response, self._revisions)
            return op.parse(response)

    def _paged(self, op: _ops.Paged[Resp, T], timeout: float | None) -> Iterator[T]:
        if timeout is not None:
            _core.check_timeout(timeout)  # refuse a bad timeout now, not at the first page
        return self._pages(op, timeout)

    def _pages(self, op: _ops.Paged[Resp, T], timeout: float | None) -> Iterator[T]:
        fn = self._multicallable(op.method, op.response_type, stream=True)
        cursor = ""
        last: str | None = None
        while True:
            deadline = self._deadline(timeout)
            attempt = 0
            yielded = False
            while True:
                request = op.with_cursor(cursor) if cursor else op.request
                call = fn(request, timeout=max(deadline - time.monotonic(), 0.001),
                          metadata=self._metadata)
                end: Any = None
                try:
                    for message in call:
                        for item in op.items(message):
                            if op.resume_key is not None:
                                key = op.resume_key(item)
                                if last is not None and key <= last:
                                    continue  # already yielded before a retry
                                last = key
                            yielded = True
                            yield item
                        if message.next_cursor or message.complete:
                            end = message
                except grpc.RpcError as exc:
                    err = from_rpc_error(exc, op.name)
                    resumable = op.resume_key is not None or not yielded
                    wait = _core.pause(self._settings.retry, attempt, err,
                                       resumable, deadline)
                    if wait is None:
                        raise err from None
                    time.sleep(wait)
                    attempt += 1
                    continue
                finally:
                    call.cancel()
                break
            if end is None:
                raise Internal(grpc.StatusCode.INTERNAL,
                               "the page ended without a cursor or completion", op.name)
            if end.complete:
                return
            cursor = end.next_cursor

    def _level(self, consistency: Consistency | None) -> Any:
        return _core.level(consistency, self._revisions, self._settings.read_your_writes)

    # -- authorization ----------------------------------------------------------

    def check(self, subject: ObjectRef, action: str, resource: ObjectRef, *,
              context: Mapping[str, object] | None = None, explain: bool = False,
              consistency: Consistency | None = None, timeout: float | None = None) -> Decision:
        """May ``subject`` do ``action`` on ``resource``? A denial is a Decision, not an error."""
        return self._unary(_ops.check(subject, action, resource, context=context,
                                      explain=explain, level=self._level(consistency)), timeout)

    def check_bulk(self, items: Sequence[_ops.BulkItem], *,
                   consistency: Consistency | None = None,
                   timeout: float | None = None) -> list[Decision | Error]:
        """Many checks at one revision, answered in order; a bad item gets an ``Error``."""
        return self._unary(_ops.check_bulk(items, level=self._level(consistency)), timeout)

    def list_accessible(self, subject: ObjectRef, action: str, resource_type: str,
                        within: ObjectRef | None = None, *,
                        context: Mapping[str, object] | None = None, page_size: int = 0,
                        consistency: Consistency | None = None,
                        timeout: float | None = None) -> Iterator[str]:
        """Every id of ``resource_type`` the subject may ``action``, in id order, across pages.

        ``timeout`` applies to each page (the time the loop spends on a page's
        ids included). A page that fails UNAVAILABLE is asked again from its
        cursor; ids already yielded are not repeated.
        """
        op = _ops.list_accessible(subject, action, resource_type, within=within,
                                  page_size=page_size, context=context,
                                  level=self._level(consistency))
        return self._paged(op, timeout)

    # -- graph -------------------------------------------------------------------

    def write_relationships(self, *, touch: Iterable[Rel] = (), create: Iterable[Rel] = (),
                            delete: Iterable[Rel] = (), must_exist: Iterable[Rel] = (),
                            must_not_exist: Iterable[Rel] = (),
                            timeout: float | None = None) -> str:
        """One atomic write; returns its revision (remembered for read-your-writes).

        Never retried: an UNAVAILABLE may follow a commit, and CREATE is not idempotent.
        """
        return self._unary(_ops.write_relationships(touch, create, delete, must_exist,
                                                    must_not_exist), timeout)

    def delete_relationships(self, resource_type: str, *, resource_id: str = "",
                             relation: str = "", subject_type: str = "", subject_id: str = "",
                             must_exist: Iterable[Rel] = (), must_not_exist: Iterable[Rel] = (),
                             timeout: float | None = None) -> Deleted:
        """Delete every relationship matching the filter (never retried)."""
        return self._unary(_ops.delete_relationships(resource_type, resource_id, relation,
                                                     subject_type, subject_id, must_exist,
                                                     must_not_exist), timeout)

    def read_relationships(self, resource_type: str, *, resource_id: str = "",
                           relation: str = "", subject_type: str = "", subject_id: str = "",
                           page_size: int = 0, consistency: Consistency | None = None,
                           timeout: float | None = None) -> Iterator[Relationship]:
        """The relationships matching the filter, across pages (``timeout`` per page)."""
        return self._paged(_ops.read_relationships(
            resource_type, resource_id, relation, subject_type, subject_id,
            page_size=page_size, level=self._level(consistency)), timeout)

    def write_objects(self, *, put: Mapping[ObjectRef, Mapping[str, object]] | None = None,
                      delete: Iterable[ObjectRef] = (), timeout: float | None = None) -> str:
        """Put (replace all attributes) or delete objects in one write (never retried)."""
        return self._unary(_ops.write_objects(put or {}, delete), timeout)

    def read_object(self, obj: ObjectRef, *, consistency: Consistency | None = None,
                    timeout: float | None = None) -> StoredObject:
        return self._unary(_ops.read_object(obj, level=self._level(consistency)), timeout)

    # -- usage -------------------------------------------------------------------

    def compute_usage(self, organization: str, *, workspace: str | None = None,
                      metrics: Sequence[str] = (), period: str | None = None,
                      consistency: Consistency | None = None,
                      timeout: float | None = None) -> Usage:
        """The organization's (or one workspace's) usage against its plan."""
        return self._unary(_ops.compute_usage(organization, workspace=workspace, metrics=metrics,
                                              period=period, level=self._level(consistency)),
                           timeout)

    def check_limit(self, organization: str, change: Change, *,
                    consistency: Consistency | None = None,
                    timeout: float | None = None) -> LimitDecision:
        """Would ``change`` exceed the organization's plan? A refusal is an answer."""
        return self._unary(_ops.check_limit(organization, change,
                                            level=self._level(consistency)), timeout)

    def record_usage(self, organization: str, events: Iterable[UsageEvent], *,
                     timeout: float | None = None) -> list[Recorded]:
        """Record usage events. Retried on UNAVAILABLE: each event id counts once."""
        return self._unary(_ops.record_usage(organization, events), timeout)


class Tenancy:
    """TenancyService, one method per RPC: ``client.tenancy.invite_member(...)``.

    ``actor`` is the person on whose behalf the product acts. Operations that
    change anything return their revision (remembered for read-your-writes)
    and are never retried; the lookups (check_slug, list_invitations,
    list_access_links, resolve_signup) are.
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    def _run(self, op: _ops.Unary[Resp, T], timeout: float | None) -> T:
        return self._client._unary(op, timeout)

    def create_organization(self, actor: ObjectRef, name: str, *, organization_id: str = "",
                            plan: str = "", timeout: float | None = None) -> CreatedOrganization:
        return self._run(_ops.create_organization(actor, name, organization_id, plan), timeout)

    def create_workspace(self, actor: ObjectRef, organization_id: str, name: str, *,
                         slug: str = "", timeout: float | None = None) -> CreatedWorkspace:
        return self._run(_ops.create_workspace(actor, organization_id, name, slug), timeout)

    def check_slug(self, organization_id: str, slug: str, *,
                   timeout: float | None = None) -> SlugCheck:
        return self._run(_ops.check_slug(organization_id, slug), timeout)

    def rename_workspace(self, actor: ObjectRef, workspace_id: str, name: str, *,
                         timeout: float | None = None) -> str:
        return self._run(_ops.rename_workspace(actor, workspace_id, name), timeout)

    def delete_workspace(self, actor: ObjectRef, workspace_id: str, *, confirm_name: str,
                         timeout: float | None = None) -> DeletedWorkspace:
        return self._run(_ops.delete_workspace(actor, workspace_id, confirm_name), timeout)

    def invite_member(self, actor: ObjectRef, scope: ObjectRef, email: str, role: str, *,
                      ttl_seconds: int = 0, timeout: float | None = None) -> InvitationToken:
        return self._run(_ops.invite_member(actor, scope, email, role, ttl_seconds), timeout)

    def accept_invitation(self, token: str, subject: ObjectRef, *,
                          timeout: float | None = None) -> str:
        return self._run(_ops.accept_invitation(token, subject), timeout)

    def revoke_invitation(self, actor: ObjectRef, invitation_id: str, *,
                          timeout: float | None = None) -> str:
        return self._run(_ops.revoke_invitation(actor, invitation_id), timeout)

    def resend_invitation(self, actor: ObjectRef, invitation_id: str, *,
                          timeout: float | None = None) -> InvitationToken:
        return self._run(_ops.resend_invitation(actor, invitation_id), timeout)

    def list_invitations(self, actor: ObjectRef, scope: ObjectRef, *,
                         timeout: float | None = None) -> list[Invitation]:
        return self._run(_ops.list_invitations(actor, scope), timeout)

    def set_role(self, actor: ObjectRef, scope: ObjectRef, subject: ObjectRef, role: str, *,
                 timeout: float | None = None) -> str:
        return self._run(_ops.set_role(actor, scope, subject, role), timeout)

    def remove_member(self, actor: ObjectRef, scope: ObjectRef, member: ObjectRef, *,
                      reassign_to: ObjectRef | None = None,
                      timeout: float | None = None) -> RemovedMember:
        return self._run(_ops.remove_member(actor, scope, member, reassign_to), timeout)

    def create_access_link(self, actor: ObjectRef, workspace_id: str, source_type: str, *,
                           timeout: float | None = None) -> AccessLinkToken:
        return self._run(_ops.create_access_link(actor, workspace_id, source_type), timeout)

    def list_access_links(self, actor: ObjectRef, workspace_id: str, *,
                          timeout: float | None = None) -> list[AccessLink]:
        return self._run(_ops.list_access_links(actor, workspace_id), timeout)

    def redeem_access_link(self, token: str, *, connection_id: str = "",
                           attributes: Mapping[str, object] | None = None,
                           timeout: float | None = None) -> RedeemedLink:
        return self._run(_ops.redeem_access_link(token, connection_id, attributes), timeout)

    def delete_access_link(self, actor: ObjectRef, link_id: str, *,
                           timeout: float | None = None) -> str:
        return self._run(_ops.delete_access_link(actor, link_id), timeout)

    def move_resource(self, actor: ObjectRef, resource: ObjectRef, to_workspace_id: str, *,
                      timeout: float | None = None) -> str:
        return self._run(_ops.move_resource(actor, resource, to_workspace_id), timeout)

    def add_domain(self, actor: ObjectRef, organization_id: str, domain: str,
                   mode: EnrollmentMode | str, *, workspace_id: str = "", role: str = "",
                   timeout: float | None = None) -> str:
        return self._run(_ops.add_domain(actor, organization_id, domain, mode, workspace_id,
                                         role), timeout)

    def resolve_signup(self, email: str, *, timeout: float | None = None) -> list[SignupMatch]:
        return self._run(_ops.resolve_signup(email), timeout)

    def join_by_domain(self, subject: ObjectRef, *, timeout: float | None = None) -> Joined:
        return self._run(_ops.join_by_domain(subject), timeout)


__all__ = ["Client", "Tenancy"]
