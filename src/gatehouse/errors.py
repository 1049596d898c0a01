"""Domain errors. Each knows what went wrong in domain terms; the API layer
maps them to gRPC status codes in one table (``gatehouse.api.errors``).

::

    GatehouseError
    ├── InvalidArgument        bad input; names the offending field
    ├── NotFound               a named object does not exist
    ├── AlreadyExists          an id or a unique value (a slug) is taken
    ├── PermissionDenied       the actor may not do the operation (names action and resource)
    ├── FailedPrecondition     a rule, constraint or limit says no
    ├── Aborted                a write's own precondition did not hold (retry after re-reading)
    ├── Unavailable            the store cannot be reached
    ├── ResourceExhausted      a per-process bound on open work (streams, in-flight calls)
    ├── Internal               a part of one request failed unexpectedly (a CheckBulk item)
    ├── PolicyError            a policy set failed to load (all problems, with positions)
    ├── DataFileError          a bootstrap data file failed to load (all problems, with lines)
    └── KeysFileError          an API keys file failed to load (all problems, with positions)
"""

from __future__ import annotations

from dataclasses import dataclass

from gatehouse.limits import LIMITS


def quote(value: object, limit: int = LIMITS.quote_chars) -> str:
    """``repr`` of a (possibly hostile) value, cut to a short prefix.

    Error messages travel in ``grpc-message`` metadata and in logs; quoting
    a 12,000-character id whole would break the client's metadata limit.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def shown(value: object, limit: int = LIMITS.quote_chars) -> str:
    """``repr`` of a (possibly hostile) value of any type, cut to a short prefix: what
    ``quote`` is for strings, for the numbers, lists and mappings of files and Structs."""
    text = repr(value)
    if len(text) <= limit + 2:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class GatehouseError(Exception):
    """Base class of every error gatehouse raises on purpose."""


class InvalidArgument(GatehouseError):
    """The request is malformed; ``field`` names the part that is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(GatehouseError):
    """A named object does not exist."""


class AlreadyExists(GatehouseError):
    """An id or a value that must be unique (a workspace slug) is taken."""


class PermissionDenied(GatehouseError):
    """The policy does not grant the actor the action an operation needs."""

    def __init__(self, action: str, resource: str, actor: str) -> None:
        super().__init__(f"{actor} may not {action} on {resource}")
        self.action = action
        self.resource = resource
        self.actor = actor


class FailedPrecondition(GatehouseError):
    """A policy rule, constraint or limit refuses the operation."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"{rule}: {reason}")
        self.rule = rule
        self.reason = reason


class Aborted(GatehouseError):
    """A write's precondition did not hold at commit time; nothing was written."""


class Unavailable(GatehouseError):
    """The backing store cannot serve the request right now."""


class ResourceExhausted(GatehouseError):
    """A bound on concurrent work is reached; ``what`` names it. Retry later."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


class Internal(GatehouseError):
    """Something failed that no rule foresaw, for one part of a request (a CheckBulk
    item) while the rest is answered; the part is an error, never an allow. The cause
    is logged, not told: its text may name what the caller may not see."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field}: internal error; not decided (no access follows from it)")
        self.field = field


@dataclass(frozen=True, slots=True, order=True)
class Problem:
    """One finding in a source file, ordered by position."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where} {self.path}: {self.message}" if self.path else f"{where} {self.message}"


class _ProblemsError(GatehouseError):
    """Carries every problem found, sorted and de-duplicated."""

    kind = "source"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(set(problems))
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{self.kind} has {len(self.problems)} problem(s):\n{lines}")


class PolicyError(_ProblemsError):
    """A policy set is invalid; the previous policy (if any) stays in force."""

    kind = "policy"


class DataFileError(_ProblemsError):
    """A bootstrap data file is invalid; nothing from it was loaded."""

    kind = "data file"


class KeysFileError(_ProblemsError):
    """An API keys file is invalid; the previous key table (if any) stays in force."""

    kind = "keys file"
