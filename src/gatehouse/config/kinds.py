"""Value kinds: how one setting's value is read, checked and written back.

A kind reads a value from text (a command-line flag or an environment
variable) and from a parsed YAML value (the config file), and writes it back
as text (for a worker's argv or environment) and as a plain YAML value (for
``--print-config``). Reading raises ``ValueError`` with a message that
completes "KEY: ..." (e.g. "must be between 1 and 64, not 100"); the caller
adds the key and where the value came from.

Strictness on purpose: a config file's ``workers: true`` or ``workers: 2.5``
is refused, not read as 1 or 2; ``.nan``, ``.inf`` and YAML 1.1's ``0x10``,
``1_000`` or ``1:30`` are refused before they reach a kind (the strict YAML
reader); text settings refuse numbers (quote them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit, urlunsplit

from gatehouse.errors import quote

MASK = "***"
"""What ``--print-config`` shows in place of a secret."""


class Kind(Protocol):
    """What a setting's type must provide (each class below is one)."""

    @property
    def metavar(self) -> str:
        """Placeholder for the flag's value in ``--help`` (e.g. ``N``, ``HOST:PORT``)."""
        ...

    @property
    def may_hold_secret(self) -> bool:
        """True when a value can carry a credential (a URL's password): such a value is
    masked when printed and handed to worker processes by environment, never argv."""
        ...

    def from_text(self, text: str) -> Any:
        """The value of a flag or an environment variable; ``ValueError`` if bad."""
        ...

    def from_yaml(self, value: object) -> Any:
        """The value of a config-file key as YAML built it; ``ValueError`` if bad."""
        ...

    def to_text(self, value: Any) -> str:
        """Text that ``from_text`` reads back as ``value``."""
        ...

    def to_yaml(self, value: Any) -> object:
        """A plain YAML value that ``from_yaml`` reads back as ``value``."""
        ...

    def mask(self, value: Any) -> object:
        """``to_yaml(value)`` with any credential inside replaced by ``***``."""
        ...

    def describe(self) -> str:
        """The type and bounds as the documentation table shows them."""
        ...


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "null"
    return type(value).__name__


class _Scalar:
    """Shared behaviour: a YAML value must be text, read like a flag's text."""

    metavar: str = "VALUE"
    may_hold_secret: ClassVar[bool] = False

    def from_text(self, text: str) -> Any:
        raise NotImplementedError

    def from_yaml(self, value: object) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"must be text, not {_type_name(value)} (quote it)")
        return self.from_text(value)

    def to_text(self, value: Any) -> str:
        return str(value)

    def to_yaml(self, value: Any) -> object:
        return self.to_text(value)

    def mask(self, value: Any) -> object:
        return self.to_yaml(value)


@dataclass(frozen=True, slots=True)
class Text(_Scalar):
    """Free text, bounded in length; ``pattern`` (a regex) when the value has a shape."""

    max_len: int = 256
    pattern: str | None = None
    shape: str = ""
    """The pattern in words, for messages and docs (e.g. "letters, digits, _ . : -")."""
    metavar: str = "TEXT"

    def from_text(self, text: str) -> str:
        if not text:
            raise ValueError("must not be empty")
        if len(text) > self.max_len:
            raise ValueError(f"must be at most {self.max_len} characters, not {len(text)}")
        if self.pattern is not None and not re.fullmatch(self.pattern, text):
            raise ValueError(f"must be {self.shape}, not {quote(text)}")
        return text

    def describe(self) -> str:
        return f"text ({self.shape})" if self.shape else "text"


@dataclass(frozen=True, slots=True)
class Choice(_Scalar):
    """One of a fixed set of words."""

    options: tuple[str, ...]

    @property
    def metavar(self) -> str:  # type: ignore[override]
        return "|".join(self.options)

    def from_text(self, text: str) -> str:
        if text not in self.options:
            listed = ", ".join(self.options[:-1]) + f" or {self.options[-1]}"
            raise ValueError(f"must be {listed}, not {quote(text)}")
        return text

    def describe(self) -> str:
        return " | ".join(f"`{o}`" for o in self.options)


@dataclass(frozen=True, slots=True)
class FilePath(_Scalar):
    """A file or folder path (not checked for existence here: its reader says what is
    wrong with it, with positions)."""

    metavar: str = "PATH"

    def from_text(self, text: str) -> Path:
        if not text:
            raise ValueError("must not be empty")
        if "\0" in text:
            raise ValueError("must not contain a NUL character")
        return Path(text)

    def describe(self) -> str:
        return "path"


_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+|):(?P<port>[0-9]{1,5})")


@dataclass(frozen=True, slots=True)
class Address(_Scalar):
    """``HOST:PORT`` (``[::1]:50051`` for IPv6; port 0 picks a free one), or ``unix:PATH``."""

    metavar: str = "HOST:PORT"

    def from_text(self, text: str) -> str:
        if text.startswith("unix:") and len(text) > len("unix:"):
            return text
        m = _HOST_PORT.fullmatch(text)
        if m is None or not m.group("host") or int(m.group("port")) > 65535:
            raise ValueError(f"must be HOST:PORT (port 0-65535) or unix:PATH, not {quote(text)}")
        return text

    def describe(self) -> str:
        return "`HOST:PORT`"


@dataclass(frozen=True, slots=True)
class Url(_Scalar):
    """A URL with a scheme; its password, if any, is masked when printed."""

    schemes: tuple[str, ...] = ()
    """Allowed schemes (any when empty)."""
    metavar: str = "URL"
    may_hold_secret: ClassVar[bool] = True

    def from_text(self, text: str) -> str:
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
        except ValueError:
            raise ValueError(f"is not a valid URL: {quote(self.mask(text))}") from None
        if not parts.scheme or "://" not in text:
            raise ValueError(f"must be a URL such as scheme://host/..., not "
                             f"{quote(self.mask(text))}")
        if self.schemes and parts.scheme not in self.schemes:
            raise ValueError(f"scheme must be one of {', '.join(self.schemes)}, not "
                             f"{quote(parts.scheme)}")
        return text

    def mask(self, value: Any) -> object:
        """The URL with the password of its user part, and any query parameter that
        names a credential (``?password=...``, which Redis clients also read), as ***."""
        text = str(value)
        base, mark, query = text.partition("?")
        try:
            parts = urlsplit(base)
            password = parts.password
        except ValueError:
            return MASK
        if password is not None:
            user = parts.username or ""
            host = parts.netloc.rsplit("@", 1)[1]
            base = urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))
        params = []
        for param in query.split("&") if query else ():
            key, sep, _ = param.partition("=")
            hidden = sep and any(w in key.lower() for w in _CREDENTIAL_WORDS)
            params.append(f"{key}={MASK}" if hidden else param)
        return base + mark + "&".join(params)

    def describe(self) -> str:
        return f"URL ({', '.join(s + '://' for s in self.schemes)})" if self.schemes else "URL"


@dataclass(frozen=True, slots=True)
class RedisUrl(_Scalar):
    """A Redis URL as the stores read it (gatehouse.redisconn: plain, TLS, unix, Sentinel
    with several hosts); a message names the part that is wrong, never a password."""

    metavar: str = "URL"
    may_hold_secret: ClassVar[bool] = True

    def from_text(self, text: str) -> str:
        from gatehouse.errors import InvalidArgument
        from gatehouse.redisconn import parse_url

        try:
            parse_url(text)
        except InvalidArgument as exc:
            raise ValueError(exc.reason) from None
        return text

    def mask(self, value: Any) -> object:
        from gatehouse.redisconn import redact

        return redact(str(value))

    def describe(self) -> str:
        return "Redis URL (redis://, rediss://, unix://, redis+sentinel://)"


_CREDENTIAL_WORDS = ("pass", "secret", "token", "key", "auth")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True, slots=True)
class Boolean:
    """true or false. Flags come in pairs (``--x`` / ``--no-x``); environment variables
    read true/false, 1/0, yes/no, on/off; a config file needs a YAML boolean."""

    metavar: str = ""
    may_hold_secret: ClassVar[bool] = False

    def from_text(self, text: str) -> bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"must be true or false, not {quote(text)}")

    def from_yaml(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {_type_name(value)}")
        return value

    def to_text(self, value: Any) -> str:
        return "true" if value else "false"

    def to_yaml(self, value: Any) -> object:
        return bool(value)

    def mask(self, value: Any) -> object:
        return bool(value)

    def describe(self) -> str:
        return "bool"


@dataclass(frozen=True, slots=True)
class Integer:
    """A whole number in ``[low, high]``."""

    low: int
    high: int
    metavar: str = "N"
    may_hold_secret: ClassVar[bool] = False

    def _check(self, value: int) -> int:
        if not self.low <= value <= self.high:
            raise ValueError(f"must be between {self.low} and {self.high}, not {value}")
        return value

    def from_text(self, text: str) -> int:
        if not re.fullmatch(r"[-+]?[0-9]{1,18}", text.strip()):
            raise ValueError(f"must be a whole number, not {quote(text)}")
        return self._check(int(text))

    def from_yaml(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, not {_type_name(value)}")
        return self._check(value)

    def to_text(self, value: Any) -> str:
        return str(value)

    def to_yaml(self, value: Any) -> object:
        return int(value)

    def mask(self, value: Any) -> object:
        return int(value)

    def describe(self) -> str:
        return f"int {self.low} to {self.high}"


@dataclass(frozen=True, slots=True)
class Number:
    """A finite number with ``low < value`` (``low <= value`` when ``low_inclusive``) and
    ``value <= high``."""

    low: float
    high: float
    low_inclusive: bool = True
    metavar: str = "X"
    may_hold_secret: ClassVar[bool] = False

    def _check(self, value: float) -> float:
        above = value >= self.low if self.low_inclusive else value > self.low
        if not math.isfinite(value) or not above or value > self.high:
            raise ValueError(f"must be {self.describe().removeprefix('number ')}, not "
                             f"{value:g}")
        return value

    def from_text(self, text: str) -> float:
        if not re.fullmatch(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?",
                            text.strip()) or len(text) > 40:
            raise ValueError(f"must be a decimal number, not {quote(text)}")
        return self._check(float(text))

    def from_yaml(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, not {_type_name(value)}")
        return self._check(float(value))

    def to_text(self, value: Any) -> str:
        return repr(float(value))

    def to_yaml(self, value: Any) -> object:
        return float(value)

    def mask(self, value: Any) -> object:
        return float(value)

    def describe(self) -> str:
        if self.low_inclusive:
            return f"number from {self.low:g} to {self.high:g}"
        return f"number above {self.low:g}, at most {self.high:g}"


@dataclass(frozen=True, slots=True)
class ListOf:
    """Several values of one kind: a YAML list in a file, comma-separated text in a flag
    or an environment variable."""

    item: Kind
    max_items: int = 64
    metavar: str = "A,B,..."

    @property
    def may_hold_secret(self) -> bool:
        return self.item.may_hold_secret

    def _each(self, items: Sequence[object], read: Callable[[Any], Any]) -> tuple[Any, ...]:
        if len(items) > self.max_items:
            raise ValueError(f"must have at most {self.max_items} entries, not {len(items)}")
        out = []
        for i, item in enumerate(items):
            try:
                out.append(read(item))
            except ValueError as exc:
                raise ValueError(f"entry {i + 1} {exc}") from None
        return tuple(out)

    def from_text(self, text: str) -> tuple[Any, ...]:
        items = [p.strip() for p in text.split(",")] if text.strip() else []
        return self._each(items, self.item.from_text)

    def from_yaml(self, value: object) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValueError(f"must be a list, not {_type_name(value)}")
        return self._each(value, self.item.from_yaml)

    def to_text(self, value: Any) -> str:
        return ",".join(self.item.to_text(v) for v in value)

    def to_yaml(self, value: Any) -> object:
        return [self.item.to_yaml(v) for v in value]

    def mask(self, value: Any) -> object:
        return [self.item.mask(v) for v in value]

    def describe(self) -> str:
        return f"list of {self.item.describe()}"
