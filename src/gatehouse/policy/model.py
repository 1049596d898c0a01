"""The compiled policy: immutable tables the engine reads on every decision.

Constraint classes live in :mod:`gatehouse.policy.constraints` and the
rules every store enforces on a write in :mod:`gatehouse.policy.rules`,
each beside the code that compiles them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, Protocol

from gatehouse.errors import quote
from gatehouse.policy.rules import WriteRules

PARENT = "parent"
OWNER = "owner"


class Facts(Protocol):
    """What a condition may read about the graph (the index implements it)."""

    def attributes(self, key: str) -> Mapping[str, Any]: ...

    def holds(self, obj: str, relation: str, subject: str) -> bool: ...


# A compiled condition: (subject key, resource key, facts, request context) ->
# True, False, or None when unknown (a fact is missing); only True applies a rule.
Condition = Callable[[str, str, Facts, Mapping[str, Any]], bool | None]


class Effect(Enum):
    ALLOW = "allow"
    DENY = "deny"


ATTRIBUTE_TYPES = ("bool", "int", "number", "string", "list")


@dataclass(frozen=True, slots=True)
class Attribute:
    name: str
    type: str
    default: Any = None
    has_default: bool = False
    # Rules for string values (checked where objects are validated).
    min_length: int | None = None
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None  # fullmatch, ASCII
    # Rules every store enforces on every write (see policy.rules.AttributeRule).
    immutable: bool = False
    unique_within: str | None = None  # the tenant root type

    def accepts(self, value: Any) -> bool:
        if self.type == "bool":
            return isinstance(value, bool)
        if self.type == "int":
            return isinstance(value, int) and not isinstance(value, bool)
        if self.type == "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        if self.type == "string":
            return isinstance(value, str)
        if self.type == "list":
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        return False

    def rule_problem(self, value: str) -> str | None:
        """Which of min_length / max_length / pattern a string value breaks, if any."""
        if self.min_length is not None and len(value) < self.min_length:
            return f"is shorter than {self.min_length} characters"
        if self.max_length is not None and len(value) > self.max_length:
            return f"is longer than {self.max_length} characters"
        if self.pattern is not None and self.pattern.fullmatch(value) is None:
            return f"does not match the pattern {quote(self.pattern.pattern)}"
        return None


@dataclass(frozen=True, slots=True)
class TypeDef:
    """One declared object type."""

    name: str
    parent: str | None
    subject: bool
    owned: bool
    roles: frozenset[str]
    actions: tuple[str, ...]
    attributes: Mapping[str, Attribute]
    # Every relation an object of this type may have, with its allowed subject
    # types: parent, owner (if owned), each role, each declared relation.
    relations: Mapping[str, frozenset[str]]
    # This type and its ancestors' types, nearest first.
    lineage: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoleRef:
    """A role held on the resource itself or on one of its ancestors."""

    type: str
    relation: str

    def __str__(self) -> str:
        return f"{self.type}.{self.relation}"


@dataclass(frozen=True, slots=True)
class Rule:
    effect: Effect
    actions: frozenset[str]
    # Empty only for deny rules that apply to any subject.
    roles: tuple[RoleRef, ...]
    condition: Condition | None
    condition_text: str
    # "policy.yaml:31:7 permissions.data_flow[1]" — where the rule was written.
    source: str
    # The condition can only hold when the subject owns the resource (`owner`,
    # alone or inside all/a list): listings then start from what the subject owns.
    owner_required: bool = False


@dataclass(frozen=True, slots=True)
class ActionTable:
    """Everything needed to decide one (resource type, action) pair."""

    denies: tuple[Rule, ...]
    # Unconditional grants merged by ancestor type: ((type, relations, is the
    # resource's own type), ...).
    direct: tuple[tuple[str, frozenset[str], bool], ...]
    conditional: tuple[Rule, ...]
    # All allow rules in source order, for explanations.
    grants: tuple[Rule, ...]


# -- usage and plans ------------------------------------------------------------

# Metric kinds and what their workspace value is:
#   count      objects of a type in the workspace (the workspace itself counts 1)
#   members    distinct identities (a subject attribute, e.g. email) of subjects
#              holding any of the listed relations on the workspace, plus the
#              listed organization-level relations (counted in every workspace)
#   accounts   connected accounts, counted per source type: tenant-based (each
#              distinct selected tenant), connection-based (each distinct
#              credential), url-based (each connection)
#   distinct   distinct values of an attribute over objects of a type in the workspace
#   recorded   usage events recorded through RecordUsage, aggregated by
#              count / sum / max / distinct / latest
# Roll-up to the organization: count, accounts, recorded count/sum/latest sum
# across workspaces; members and distinct take the distinct union; max takes the max.

METRIC_KINDS = ("count", "members", "accounts", "distinct", "recorded")
AGGREGATES = ("count", "sum", "max", "distinct", "latest")
ACCOUNT_KINDS = ("tenant", "connection", "url")


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: str
    description: str = ""
    # count / distinct: the object type counted; accounts: the connection type
    object_type: str = ""
    # members: the identity attribute of the subject; distinct: the object attribute
    attribute: str = ""
    # members: relations on the workspace ("workspace.admin") and on the organization
    relations: tuple[tuple[str, str], ...] = ()
    # accounts: attribute names and source type -> kind
    source_attribute: str = "source_type"
    credential_attribute: str = "credential_id"
    tenants_attribute: str = "tenants"
    source_kinds: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    default_kind: str = "connection"
    # recorded: how events aggregate; "month" resets each calendar month (UTC)
    aggregate: str = ""
    period: str = ""
    unit: str = ""

    @property
    def rollup(self) -> str:
        if self.kind in ("members", "distinct") or self.aggregate == "distinct":
            return "distinct"
        if self.aggregate == "max":
            return "max"
        return "sum"


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    # metric name -> limit; a metric absent here is unlimited
    limits: Mapping[str, float]
    features: frozenset[str]
    description: str = ""


@dataclass(frozen=True, slots=True)
class UsageModel:
    """Plans and metrics of a policy set."""

    metrics: Mapping[str, Metric] = field(default_factory=lambda: MappingProxyType({}))
    plans: Mapping[str, Plan] = field(default_factory=lambda: MappingProxyType({}))
    fallback: str | None = None
    # The organization attribute that names its plan.
    plan_attribute: str = "plan"
    tenant_type: str = "organization"
    workspace_type: str = "workspace"

    def resolve_plan(self, name: Any) -> tuple[Plan | None, bool]:
        """The plan named, or the fallback (second value True) when unknown or missing."""
        if isinstance(name, str) and name in self.plans:
            return self.plans[name], False
        if self.fallback is not None:
            return self.plans[self.fallback], True
        return None, True


# -- tenancy (compiled by policy/tenancy.py) -------------------------------------


@dataclass(frozen=True, slots=True)
class Guard:
    """The action an operation needs: ``action`` on the object of ``type``
    the operation targets (``type`` empty: the resource's own type)."""

    type: str
    action: str

    def __str__(self) -> str:
        return f"{self.type}.{self.action}" if self.type else self.action


@dataclass(frozen=True, slots=True)
class InvitationRules:
    type: str
    ttl_seconds: int
    max_ttl_seconds: int
    roles: Mapping[str, frozenset[str]]
    """Scope type (organization or workspace) -> roles an invitation there may grant."""


@dataclass(frozen=True, slots=True)
class RemovalRules:
    receivers: frozenset[str] = frozenset()
    """Roles, as ``type.role``, of which ``reassign_to`` must hold one in the scope."""
    keep: frozenset[str] = frozenset()
    """Owned types that stay with their owner (never reassigned)."""


@dataclass(frozen=True, slots=True)
class AccessLinkRules:
    type: str
    creates: str
    ttl_seconds: int


@dataclass(frozen=True, slots=True)
class DomainRules:
    type: str
    public: frozenset[str]
    organization_role: str = ""
    """Organization role a person joining by domain also gets ("" none)."""


@dataclass(frozen=True, slots=True)
class TenancyModel:
    """The compiled ``tenancy:`` section."""

    organization: str
    workspace: str
    owner_role: str
    primary_workspace: str
    creator_role: str = ""
    guards: Mapping[str, Guard] = field(default_factory=lambda: MappingProxyType({}))
    features: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    invitations: InvitationRules | None = None
    removal: RemovalRules = RemovalRules()
    access_links: AccessLinkRules | None = None
    domains: DomainRules | None = None


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str
    version: str
    types: Mapping[str, TypeDef]
    subject_types: frozenset[str]
    tables: Mapping[str, Mapping[str, ActionTable]]
    files: tuple[str, ...]
    write_rules: WriteRules = field(default_factory=lambda: WriteRules({}))
    usage: UsageModel = UsageModel()
    tenancy: TenancyModel | None = None
    """The ``tenancy:`` section; None when the set declares none."""
