"""What a tenancy operation decides: one write batch and the answer it gives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gatehouse.graph.changes import Operation, Precondition

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Commit(Generic[T]):
    """A decided operation: write ``ops`` if the ``tenants`` are unchanged since the
    revision the decision read, then answer ``answer(revision)``.

    ``ops`` may be empty (a read-only operation, or one with nothing to change):
    nothing is written and the answer gets the revision the decision read at.
    """

    ops: tuple[Operation, ...]
    tenants: tuple[str, ...]
    answer: Callable[[int], T]
    preconditions: tuple[Precondition, ...] = ()


def answer_only(value: T) -> Commit[T]:
    """A decision that writes nothing."""
    return Commit((), (), lambda _revision: value)
