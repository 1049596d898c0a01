"""The values the client takes and returns: frozen dataclasses, never protobuf.

Object references are written ``"type:id"`` (``"user:uma"``) or as a
``(type, id)`` tuple; relationships as ``"resource#relation@subject"``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import grpc

from gatehouse_client.errors import GatehouseError, error_for, invalid

ObjectRef = str | tuple[str, str]
"""``"type:id"`` or ``(type, id)``."""

_REVISION = re.compile(r"[0-9]{1,20}")


def split_ref(value: ObjectRef, name: str) -> tuple[str, str]:
    """``(type, id)`` of a reference; InvalidArgument naming ``name`` when it is not one."""
    if isinstance(value, tuple):
        if len(value) == 2 and all(isinstance(p, str) and p for p in value):
            return value[0], value[1]
        raise invalid(f"{name}: expected (type, id) of two non-empty strings")
    if isinstance(value, str):
        kind, sep, ident = value.partition(":")
        if sep and kind and ident:
            return kind, ident
        raise invalid(f"{name}: expected 'type:id', got {value[:40]!r}")
    raise invalid(f"{name}: expected 'type:id' or (type, id), got {type(value).__name__}")


def check_revision(value: str, name: str = "revision") -> str:
    if not isinstance(value, str) or not _REVISION.fullmatch(value):
        raise invalid(f"{name}: expected a decimal revision, got {str(value)[:40]!r}")
    return value


@dataclass(frozen=True, slots=True)
class Consistency:
    """How fresh the graph behind a read must be.

    ``minimize_latency()`` answers from the server's index as it is;
    ``at_least(rev)`` waits until the index has applied ``rev`` (a revision a
    write returned); ``full()`` catches up with the store first.
    """

    mode: Literal["minimize_latency", "at_least", "full"]
    revision: str = ""

    def __post_init__(self) -> None:
        if self.mode not in ("minimize_latency", "at_least", "full"):
            raise invalid(f"consistency: unknown mode {str(self.mode)[:20]!r}")
        if self.mode == "at_least":
            check_revision(self.revision, "consistency.revision")
        elif self.revision:
            raise invalid(f"consistency: {self.mode} takes no revision")

    @staticmethod
    def minimize_latency() -> Consistency:
        return Consistency("minimize_latency")

    @staticmethod
    def at_least(revision: str | int) -> Consistency:
        return Consistency("at_least", check_revision(str(revision)))

    @staticmethod
    def full() -> Consistency:
        return Consistency("full")


def _read(value: str | bytes | Path | None, name: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ValueError(f"tls.{name}: cannot read {value}: {exc.strerror}") from None


@dataclass(frozen=True, slots=True)
class TLS:
    """Transport security: PEM data or paths to PEM files.

    ``ca`` verifies the server (default: the system's roots); ``cert`` and
    ``key`` together present a client certificate (mTLS); ``server_name``
    overrides the name checked against the server's certificate.
    """

    ca: str | bytes | Path | None = None
    cert: str | bytes | Path | None = None
    key: str | bytes | Path | None = field(default=None, repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls: cert and key go together (both or neither)")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "ca"),
            private_key=_read(self.key, "key"),
            certificate_chain=_read(self.cert, "cert"),
        )


@dataclass(frozen=True, slots=True)
class Retry:
    """Retries of idempotent calls answered UNAVAILABLE, with full-jitter backoff.

    ``attempts`` counts the first try: 1 means never retry. The pause before
    retry n is uniform in [0, min(max_backoff, initial_backoff * multiplier**n)],
    and never runs past the call's deadline.
    """

    attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("retries: attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("retries: backoffs must be >= 0 and the multiplier >= 1")


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a decision came out as it did: a summary line and the rules considered."""

    summary: str
    trace: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """A Check answer. ``allowed`` is True only for an explicit ALLOW."""

    allowed: bool
    revision: str
    policy_version: str
    explanation: Explanation | None = None

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, slots=True)
class Error:
    """A CheckBulk item the server refused (the other items still have answers)."""

    code: grpc.StatusCode
    message: str

    def exception(self) -> GatehouseError:
        return error_for(self.code, self.message, "CheckBulk")

    def __bool__(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class CheckItem:
    """One item of a CheckBulk call (a plain tuple ``(subject, action, resource)`` also works)."""

    subject: ObjectRef
    action: str
    resource: ObjectRef
    context: Mapping[str, object] | None = None
    explain: bool = False


@dataclass(frozen=True, slots=True)
class Relationship:
    """``resource#relation@subject``."""

    resource: tuple[str, str]
    relation: str
    subject: tuple[str, str]

    @staticmethod
    def parse(text: str) -> Relationship:
        left, at, subject = text.partition("@")
        resource, hash_, relation = left.partition("#")
        if not (at and hash_ and relation):
            raise invalid(f"relationship: expected 'type:id#relation@type:id', "
                             f"got {text[:60]!r}")
        return Relationship(split_ref(resource, "relationship.resource"), relation,
                            split_ref(subject, "relationship.subject"))

    def __str__(self) -> str:
        return (f"{self.resource[0]}:{self.resource[1]}#{self.relation}"
                f"@{self.subject[0]}:{self.subject[1]}")


@dataclass(frozen=True, slots=True)
class Deleted:
    """What DeleteRelationships removed, and the revision to read at."""

    revision: str
    deleted: int


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object's attributes, read at ``revision``."""

    type: str
    id: str
    attributes: Mapping[str, object]
    revision: str


# -- usage ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricUsage:
    name: str
    value: float
    limit: float | None
    over: bool
    by_workspace: Mapping[str, float]
    by_source_type: Mapping[str, float]
    unit: str
    description: str


@dataclass(frozen=True, slots=True)
class Usage:
    """An organization's (or one workspace's) usage against its plan."""

    organization_id: str
    workspace_id: str
    plan: str
    plan_is_fallback: bool
    features: tuple[str, ...]
    metrics: tuple[MetricUsage, ...]
    revision: str
    period: str

    def metric(self, name: str) -> MetricUsage:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One usage event for RecordUsage; ``event_id`` makes a retry count once."""

    event_id: str
    metric: str
    amount: float = 0.0
    workspace_id: str = ""
    dimension: str = ""
    event_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    event_id: str
    duplicate: bool


@dataclass(frozen=True, slots=True)
class CreateWorkspace:
    """CheckLimit change: one more workspace."""


@dataclass(frozen=True, slots=True)
class AddMember:
    """CheckLimit change: a member (counted by email) joins a workspace."""

    workspace_id: str
    email: str


@dataclass(frozen=True, slots=True)
class ConnectAccount:
    """CheckLimit change: a new connection of a source type."""

    workspace_id: str
    source_type: str
    credential_id: str = ""
    tenants: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordAmount:
    """CheckLimit change: an amount of a recorded metric."""

    workspace_id: str
    metric: str
    amount: float = 1.0
    dimension: str = ""


Change = CreateWorkspace | AddMember | ConnectAccount | RecordAmount


@dataclass(frozen=True, slots=True)
class LimitCheck:
    metric: str
    current: float
    proposed: float
    limit: float | None
    allowed: bool


@dataclass(frozen=True, slots=True)
class LimitDecision:
    """Would the change fit the plan? ``reason`` names the metric and limit when not."""

    allowed: bool
    reason: str
    checks: tuple[LimitCheck, ...]
    plan: str
    revision: str

    def __bool__(self) -> bool:
        return self.allowed


# -- tenancy ----------------------------------------------------------------


class InvitationStatus(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    PENDING = "pending"
    ACCEPTED = "accepted"
    REVOKED = "revoked"
    EXPIRED = "expired"


class AccessLinkStatus(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    ACTIVE = "active"
    USED = "used"
    EXPIRED = "expired"


class EnrollmentMode(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    AUTO_JOIN = "auto_join"
    SUGGEST = "suggest"


@dataclass(frozen=True, slots=True)
class CreatedOrganization:
    organization_id: str
    workspace_id: str
    revision: str


@dataclass(frozen=True, slots=True)
class CreatedWorkspace:
    workspace_id: str
    slug: str
    revision: str


@dataclass(frozen=True, slots=True)
class SlugCheck:
    available: bool
    reason: str


@dataclass(frozen=True, slots=True)
class DeletedWorkspace:
    revision: str
    deleted: int


@dataclass(frozen=True, slots=True)
class InvitationToken:
    """A new (or resent) invitation; the token is shown only here."""

    invitation_id: str
    token: str = field(repr=False)
    expires_at: datetime
    revision: str


@dataclass(frozen=True, slots=True)
class Invitation:
    invitation_id: str
    email: str
    role: str
    status: InvitationStatus
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class RemovedMember:
    revision: str
    reassigned: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class AccessLinkToken:
    """A new access link; the token is shown only here."""

    link_id: str
    token: str = field(repr=False)
    expires_at: datetime
    revision: str


@dataclass(frozen=True, slots=True)
class AccessLink:
    link_id: str
    source_type: str
    status: AccessLinkStatus
    created_by: tuple[str, str]
    expires_at: datetime
    connection_id: str


@dataclass(frozen=True, slots=True)
class RedeemedLink:
    connection_id: str
    revision: str


@dataclass(frozen=True, slots=True)
class SignupMatch:
    organization_id: str
    workspace_id: str
    role: str
    mode: EnrollmentMode


@dataclass(frozen=True, slots=True)
class Joined:
    match: SignupMatch
    revision: str
