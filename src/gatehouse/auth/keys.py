"""The API keys file: who may call, with which scopes, for which tenants, how fast.

::

    keys:
      - name: billing-service
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        scopes: [check, read]
        organizations: [acme]          # optional: only these tenants
        rate:                          # optional
          requests_per_second: 200
          burst: 400
          in_flight: 32
        client_certificates:           # optional: mTLS subjects that stand in for the key
          - CN=billing,O=Acme

Only the sha256 of a key is stored, never the key. The file is read within
bounds (``LIMITS.api_keys_file_bytes``, ``LIMITS.api_keys``) and parsed
strictly: an unknown field, a malformed hash, an unknown scope or a number
that is not plainly a number is a problem reported at ``file:line:column``,
and a file with any problem loads nothing (``KeysFileError``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gatehouse.auth.caller import SCOPES, Caller
from gatehouse.errors import KeysFileError, Problem, quote
from gatehouse.limits import LIMITS
from gatehouse.names import ID_RE
from gatehouse.sourcemap import DocPath, SourceMap, Strictness, load

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
"""A key's name: what logs, metrics and the audit trail show instead of the key."""
SHA256_RE = re.compile(r"[0-9a-f]{64}")
SUBJECT_CHARS = 1024
"""Longest client certificate subject a key may name."""

_TOP_FIELDS = ("keys",)
_KEY_FIELDS = ("name", "sha256", "scopes", "organizations", "rate", "client_certificates")
_RATE_FIELDS = ("requests_per_second", "burst", "in_flight")
_SHA256_WANTED = ("must be 64 lowercase hex digits, the sha256 of the key (`gatehouse keys "
                  "hash` prints it)")
_STRICT = Strictness(max_values=LIMITS.api_keys * 64, plain_numbers=True)


@dataclass(frozen=True, slots=True)
class Rate:
    """How fast one key may call: a token bucket and a cap on calls in flight."""

    requests_per_second: float | None = None
    """Tokens added per second; None: no rate limit."""
    burst: int = 1
    """Bucket size: calls that may arrive at once after a quiet spell."""
    in_flight: int | None = None
    """Calls of this key running at once; None: no cap."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One entry of the keys file, as the authenticator uses it."""

    name: str
    digest: bytes
    """sha256 of the key (32 bytes)."""
    caller: Caller
    rate: Rate | None = None
    client_certificates: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyTable:
    """Every key of one keys file, indexed for an O(1) lookup per call."""

    source: str
    keys: tuple[ApiKey, ...]
    by_digest: Mapping[bytes, ApiKey]
    by_subject: Mapping[str, ApiKey]

    @classmethod
    def of(cls, source: str, keys: tuple[ApiKey, ...]) -> KeyTable:
        return cls(
            source, keys,
            MappingProxyType({k.digest: k for k in keys}),
            MappingProxyType({s: k for k in keys for s in k.client_certificates}),
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)


class _Reader:
    """Checks one parsed document, collecting every problem with its position."""

    def __init__(self, smap: SourceMap, parsed: list[Problem]) -> None:
        self.smap = smap
        self.problems: list[Problem] = list(parsed)
        # A value the parser already refused (a `.nan`, a duplicate key) is read as
        # None; it gets no second problem.
        self._reported = {p.path for p in parsed}

    def problem(self, path: DocPath, message: str, *, at_key: bool = False) -> None:
        found = self.smap.problem(path, message, at_key=at_key)
        if found.path not in self._reported or not found.path:
            self.problems.append(found)

    def fields(self, value: dict[str, Any], path: DocPath, known: tuple[str, ...]) -> None:
        for key in value:
            if key not in known:
                self.problem((*path, key), f"unknown field {quote(key)} (known: "
                             f"{', '.join(known)})", at_key=True)

    def mapping(self, value: Any, path: DocPath, what: str) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.problem(path, f"{what} must be a mapping")
        return None

    def strings(self, value: Any, path: DocPath, what: str) -> list[tuple[DocPath, str]]:
        if not isinstance(value, list):
            self.problem(path, f"{what} must be a list")
            return []
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(((*path, i), item))
            else:
                self.problem((*path, i), f"{what} must hold strings, not {quote(item)}")
        return out

    def number(self, value: Any, path: DocPath, *, whole: bool) -> float | None:
        bound = LIMITS.api_key_rate_max
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(path, f"must be a number, not {quote(value)}")
            return None
        if whole and not isinstance(value, int):
            self.problem(path, f"must be a whole number, not {quote(value)}")
            return None
        if not math.isfinite(value) or not 0 < value <= bound:
            self.problem(path, f"must be above 0 and at most {bound:,.0f}, not {quote(value)}")
            return None
        return value

    def rate(self, value: Any, path: DocPath) -> Rate | None:
        spec = self.mapping(value, path, "rate")
        if spec is None:
            return None
        self.fields(spec, path, _RATE_FIELDS)
        if not any(f in spec for f in _RATE_FIELDS):
            self.problem(path, "give requests_per_second, in_flight or both")
            return None
        rps = burst = in_flight = None
        if "requests_per_second" in spec:
            rps = self.number(spec["requests_per_second"], (*path, "requests_per_second"),
                              whole=False)
        if "burst" in spec:
            burst = self.number(spec["burst"], (*path, "burst"), whole=True)
            if "requests_per_second" not in spec:
                self.problem((*path, "burst"), "a burst needs requests_per_second",
                             at_key=True)
        if "in_flight" in spec:
            in_flight = self.number(spec["in_flight"], (*path, "in_flight"), whole=True)
        default_burst = max(1, math.ceil(rps)) if rps is not None else 1
        return Rate(rps, int(burst) if burst is not None else default_burst,
                    int(in_flight) if in_flight is not None else None)

    def key(self, value: Any, path: DocPath) -> ApiKey | None:
        entry = self.mapping(value, path, "each key")
        if entry is None:
            return None
        self.fields(entry, path, _KEY_FIELDS)
        before = len(self.problems)
        for required in ("name", "sha256", "scopes"):
            if required not in entry:
                self.problem(path, f"{required} is required")
        name = entry.get("name")
        if "name" in entry and (not isinstance(name, str) or not NAME_RE.fullmatch(name)):
            self.problem((*path, "name"), f"{quote(name)} is not a key name (1-64 letters, "
                         "digits, '_', '.', '-', starting with a letter or digit)")
        digest = entry.get("sha256")
        if "sha256" in entry and (not isinstance(digest, str)
                                  or not SHA256_RE.fullmatch(digest)):
            # Never quoted: a key pasted here by mistake must not reach a log.
            got = f"{len(digest)} characters" if isinstance(digest, str) \
                else f"a value of type {type(digest).__name__}"
            self.problem((*path, "sha256"), f"{_SHA256_WANTED}; got {got}")
        scopes: set[str] = set()
        if "scopes" in entry:
            for where, scope in self.strings(entry["scopes"], (*path, "scopes"), "scopes"):
                if scope not in SCOPES:
                    self.problem(where, f"unknown scope {quote(scope)} (known: "
                                 f"{', '.join(SCOPES)})")
                scopes.add(scope)
        organizations: frozenset[str] | None = None
        if "organizations" in entry:
            found = self.strings(entry["organizations"], (*path, "organizations"),
                                 "organizations")
            for where, org in found:
                if not ID_RE.fullmatch(org):
                    self.problem(where, f"{quote(org)} is not an organization id")
            organizations = frozenset(org for _, org in found)
        rate = self.rate(entry["rate"], (*path, "rate")) if "rate" in entry else None
        subjects: tuple[str, ...] = ()
        if "client_certificates" in entry:
            found = self.strings(entry["client_certificates"],
                                 (*path, "client_certificates"), "client_certificates")
            for where, subject in found:
                if not subject.strip() or len(subject) > SUBJECT_CHARS:
                    self.problem(where, f"a certificate subject must be 1-{SUBJECT_CHARS} "
                                 "characters")
            subjects = tuple(s for _, s in found)
        # A value the parser refused (a `.nan` name, a hash YAML reads as a number) is
        # None here and already a problem, with no second one counted above.
        if len(self.problems) > before or not isinstance(name, str) \
                or not isinstance(digest, str):
            return None
        caller = Caller(name, frozenset(scopes), organizations)
        return ApiKey(name, bytes.fromhex(digest), caller, rate, subjects)

    def table(self, doc: Any, file: str) -> KeyTable | None:
        top = self.mapping(doc, (), "the keys file") if doc is not None else None
        if top is None:
            if doc is None:
                self.problem((), "the keys file is empty (write `keys:` and a list of keys)")
            return None
        self.fields(top, (), _TOP_FIELDS)
        entries = top.get("keys")
        if not isinstance(entries, list):
            self.problem(("keys",), "keys must be a list (`keys: []` lets nobody in)")
            return None
        if len(entries) > LIMITS.api_keys:
            self.problem(("keys",), f"{len(entries)} keys; at most {LIMITS.api_keys}")
            return None
        keys: list[ApiKey] = []
        names: dict[str, int] = {}
        digests: dict[bytes, int] = {}
        subjects: dict[str, int] = {}
        for i, value in enumerate(entries):
            key = self.key(value, ("keys", i))
            if key is None:
                continue
            if key.name in names:
                self.problem(("keys", i, "name"), f"name {quote(key.name)} is also key "
                             f"[{names[key.name]}]'s; names must be unique")
            if key.digest in digests:
                self.problem(("keys", i, "sha256"), f"the same hash as key "
                             f"[{digests[key.digest]}]; each key must be different")
            for j, subject in enumerate(key.client_certificates):
                if subject in subjects:
                    self.problem(("keys", i, "client_certificates", j),
                                 f"subject {quote(subject)} is also key [{subjects[subject]}]'s")
                subjects.setdefault(subject, i)
            names.setdefault(key.name, i)
            digests.setdefault(key.digest, i)
            keys.append(key)
        return KeyTable.of(file, tuple(keys))


def _unquoted(problem: Problem) -> Problem:
    """A parser problem at a hash says so without quoting the value: a hash YAML reads
    as a number may be a key pasted by mistake, which must not reach a log."""
    if problem.path.endswith(".sha256"):
        return dataclasses.replace(problem, message=_SHA256_WANTED + "; got a number")
    return problem


def parse_keys(text: str, file: str) -> KeyTable:
    """The key table written in ``text``; KeysFileError with every problem otherwise."""
    doc, smap, problems = load(text, file, _STRICT)
    problems = [_unquoted(p) for p in problems]
    if doc is None and problems:  # a syntax error or a bound: nothing to check
        raise KeysFileError(problems)
    reader = _Reader(smap, problems)
    table = reader.table(doc, file)
    if reader.problems or table is None:
        raise KeysFileError(reader.problems or [Problem(file, 1, 1, "", "no keys")])
    return table


def read_keys_text(path: Path) -> str:
    """The file's text, refused past ``LIMITS.api_keys_file_bytes`` before it is parsed."""
    cap = LIMITS.api_keys_file_bytes
    try:
        with path.open("rb") as f:
            raw = f.read(cap + 1)
    except OSError as exc:
        raise KeysFileError([Problem(str(path), 0, 0, "", f"cannot read: {exc.strerror}")]) \
            from None
    if len(raw) > cap:
        raise KeysFileError([Problem(str(path), 0, 0, "", f"larger than {cap:,} bytes")])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KeysFileError([Problem(str(path), 0, 0, "",
                                     f"not UTF-8 text (byte {exc.start})")]) from None


def load_keys(path: Path) -> KeyTable:
    """Read and check a keys file (``--api-keys``); KeysFileError lists every problem."""
    return parse_keys(read_keys_text(path), str(path))


__all__ = ["NAME_RE", "ApiKey", "KeyTable", "Rate", "load_keys", "parse_keys",
           "read_keys_text"]
