"""Every bound a caller (or a policy author) can push against, in one place.

A request that goes past one of these is refused with ``INVALID_ARGUMENT``
naming the field and the bound; nothing is written. The bounds exist so that
no single call can hold a thread, the event loop or memory for long: each is
an attack surface otherwise. The README's "Limits" table lists them; a test
keeps that table and this module in step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """The service's bounds; ``LIMITS`` holds the values in force."""

    # -- the wire ---------------------------------------------------------
    message_bytes: int = 4 << 20
    """Largest request message accepted (gRPC receive limit)."""
    id_chars: int = 256
    """Longest object id."""
    type_chars: int = 64
    """Longest type, relation or action name."""
    quote_chars: int = 48
    """Error messages quote at most this many characters of a bad value."""

    # -- decisions --------------------------------------------------------
    context_bytes: int = 16 << 10
    """Largest ``context`` Struct of one Check (or of one CheckBulk item), serialized."""
    context_depth: int = 8
    """Deepest nesting of lists and structs inside a ``context``."""
    bulk_items: int = 1000
    """Checks in one CheckBulk call."""
    bulk_context_bytes: int = 256 << 10
    """All the ``context`` Structs of one CheckBulk call together, serialized."""
    list_page_default: int = 1000
    """ListAccessible page size when the request gives none."""
    list_page_max: int = 10_000
    """Largest ListAccessible page."""
    list_time_budget_seconds: float = 2.0
    """A ListAccessible page ends (incomplete, with a cursor) after this long."""
    freshness_wait_seconds: float = 10.0
    """A read without a deadline waits at most this long for the revision it asks for."""
    cursor_chars: int = 2048
    """Longest cursor accepted (cursors this service returns are far shorter)."""

    # -- the graph --------------------------------------------------------
    write_batch: int = 1000
    """Updates (and, separately, preconditions) in one write call."""
    read_page_max: int = 1000
    """Largest ReadRelationships page (also its default)."""
    delete_matches_max: int = 10_000
    """Relationships one DeleteRelationships call may remove."""
    attributes_bytes: int = 64 << 10
    """Largest attribute Struct of one object, serialized."""
    watch_streams: int = 256
    """Open Watch streams per server process; more are refused RESOURCE_EXHAUSTED."""

    # -- the audit log ----------------------------------------------------
    audit_queue_lines: int = 10_000
    """Audited calls waiting to be written; beyond this they are dropped and counted."""

    # -- usage ------------------------------------------------------------
    events_per_call: int = 1000
    """Usage events in one RecordUsage call."""
    event_id_chars: int = 200
    """Longest usage event id."""
    dimension_chars: int = 256
    """Longest usage event dimension."""
    metrics_per_request: int = 100
    """Metric names in one ComputeUsage request."""
    amount_max: float = 1e12
    """Largest amount of one usage event (or CheckLimit record)."""
    counter_max: float = float(2**53)
    """A recorded counter never grows past this (the largest exactly representable integer)."""

    # -- policy files -----------------------------------------------------
    policy_file_bytes: int = 1 << 20
    """Largest single policy (or test suite) file."""
    policy_total_bytes: int = 8 << 20
    """All files of one policy set together."""
    policy_files: int = 500
    """Files in one policy set (and, separately, test suites below it)."""
    policy_file_values: int = 100_000
    """Values (scalars, lists, mappings, keys) in one policy or test suite file."""
    policy_parent_depth: int = 16
    """Types in one parent chain (organization -> workspace -> data_flow is 3)."""
    policy_names_per_type: int = 256
    """Roles, and separately actions, that one type declares."""
    policy_rules: int = 10_000
    """Permission rules in one policy set (each action's table holds its rules)."""

    # -- bootstrap data ---------------------------------------------------
    data_file_bytes: int = 64 << 20
    """Largest bootstrap data file (``--data``); a device or FIFO is refused unread."""

    # -- callers ----------------------------------------------------------
    api_keys_file_bytes: int = 1 << 20
    """Largest API keys file (``--api-keys``)."""
    api_keys: int = 10_000
    """Keys (entries) in one API keys file."""
    api_key_chars: int = 512
    """Longest bearer key a caller may send; a longer one is refused unread."""
    api_key_rate_max: float = 1e6
    """Largest requests per second, burst or in-flight cap a key may be given."""


LIMITS = Limits()
