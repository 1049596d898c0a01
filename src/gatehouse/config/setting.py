"""One setting of ``gatehouse serve``, and where an effective value came from."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gatehouse.config.kinds import Boolean, Kind

ENV_PREFIX = "GATEHOUSE_"
_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


@dataclass(frozen=True, slots=True)
class Setting:
    """A setting, declared once; its flag, environment variable and config key follow.

    ``name`` is the config-file key; the flag is ``--`` + name with ``-`` for ``_``
    (plus ``--no-...`` for a boolean) and the environment variable ``GATEHOUSE_`` +
    NAME. ``default`` None makes the setting optional: ``null`` in a file, or an empty
    flag or environment value, means "none".
    """

    name: str
    kind: Kind
    default: Any
    help: str
    """One or two sentences: what it does, and what changes when it is set."""
    secret: bool = False
    """The whole value is a credential: printed as ``***``, given to workers by environment."""
    field: str | None = ""
    """The ``ServerConfig`` field it fills: "" for the same name as the setting, None
    for a setting the ``serve`` command uses itself (``workers``, ``log_level``)."""
    aliases: tuple[str, ...] = ()
    """Older flag spellings still accepted; for a boolean, one starting ``--no-`` sets false."""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"setting name {self.name!r} must be snake_case")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def negative_flag(self) -> str | None:
        return "--no-" + self.name.replace("_", "-") if self.is_bool else None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def is_bool(self) -> bool:
        return isinstance(self.kind, Boolean)

    @property
    def optional(self) -> bool:
        return self.default is None

    @property
    def sensitive(self) -> bool:
        """Masked when printed; never put on a command line."""
        return self.secret or self.kind.may_hold_secret

    @property
    def target(self) -> str | None:
        """The ``ServerConfig`` field name, or None."""
        return self.name if self.field == "" else self.field

    def shown(self, value: Any) -> object:
        """The value as ``--print-config`` writes it: plain YAML, secrets masked."""
        if value is None:
            return None
        if self.secret:
            return "***"
        return self.kind.mask(value)


@dataclass(frozen=True, slots=True)
class Source:
    """Where a value came from: ``default``, ``file`` (with its position), ``env`` or
    ``flag`` (with the variable or flag name)."""

    kind: str
    where: str = ""

    def __str__(self) -> str:
        if self.kind == "default":
            return "default"
        if self.kind == "env":
            return f"env {self.where}"
        return self.where


Rule = Callable[[Mapping[str, Any]], "tuple[str, str] | None"]
"""A check across settings: given every effective value by name, None when fine, else
(the setting to blame, the message completing "KEY: ...")."""
