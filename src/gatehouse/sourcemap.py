"""YAML with positions.

Policy files, test suites and data files are read through here so that every
later error can point at ``file:line:column`` and a path such as
``permissions.connection[2].roles[0]``. The loader never raises on bad input:
syntax errors, duplicate keys and non-scalar keys come back as problems.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gatehouse.errors import Problem, quote

DocPath = tuple[str | int, ...]
"""Where a value sits inside one document: keys and list indexes, outermost first."""

MAX_DEPTH = 64
# Values built again because an alias (``*name``) repeats them. Caps the
# "billion laughs" document, whose few lines of aliases expand exponentially.
MAX_ALIAS_VALUES = 100_000
# The largest whole number a strict document may hold: the range a double (the
# wire's number, protobuf Struct) represents exactly.
MAX_EXACT_INT = 2**53
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
# Numbers as a person writes them. YAML 1.1 also reads 0x1f, 017 (octal: 15),
# 0b101, 1_000, 1:30 (sexagesimal: 90) and .nan / .inf as numbers; a strict
# document refuses those.
_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_PLAIN_FLOAT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


class _TooManyAliasValues(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Strictness:
    """Extra bounds on one document, beyond what every document gets.

    Policy files and test suites are read strictly: their numbers are limits
    and attribute defaults, where a silent ``.nan`` or a ``1:30`` read as 90
    would change what the policy means, and their size must stay bounded
    before a single value is built (a reloading server parses them).
    Bootstrap data files keep YAML's own reading.
    """

    max_values: int | None = None
    """Refuse a document with more values (scalars, lists, mappings, keys) than this."""
    plain_numbers: bool = False
    """Numbers must be plain decimal, finite and at most MAX_EXACT_INT in size."""


LENIENT = Strictness()


def render_path(path: DocPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(slots=True)
class SourceMap:
    """Maps a path inside one document to where it was written."""

    file: str
    values: dict[DocPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[DocPath, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: DocPath) -> tuple[int, int]:
        """Line and column (1-based) of ``path``, or of its nearest written ancestor."""
        probe = path
        while True:
            if probe in self.keys and probe == path and probe not in self.values:
                return self.keys[probe]
            if probe in self.values:
                return self.values[probe]
            if probe in self.keys:
                return self.keys[probe]
            if not probe:
                return (1, 1)
            probe = probe[:-1]

    def key_position(self, path: DocPath) -> tuple[int, int]:
        return self.keys.get(path) or self.position(path)

    def problem(self, path: DocPath, message: str, *, at_key: bool = False) -> Problem:
        line, col = self.key_position(path) if at_key else self.position(path)
        return Problem(self.file, line, col, render_path(path), message)


class _Builder:
    def __init__(self, smap: SourceMap, problems: list[Problem], plain_numbers: bool) -> None:
        self.smap = smap
        self.problems = problems
        self.plain_numbers = plain_numbers
        self.constructor = SafeConstructor()
        self.built: set[int] = set()
        self.repeated = 0

    def build(self, node: Node, path: DocPath, depth: int = 0) -> Any:
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        if id(node) in self.built:
            self.repeated += 1
            if self.repeated > MAX_ALIAS_VALUES:
                raise _TooManyAliasValues
        else:
            self.built.add(id(node))
        self.smap.values[path] = (line, col)
        if depth > MAX_DEPTH:
            self.problems.append(self.smap.problem(path, f"nested deeper than {MAX_DEPTH} levels"))
            return None
        if isinstance(node, ScalarNode):
            if self.plain_numbers and node.tag in (_INT_TAG, _FLOAT_TAG):
                return self._number(node, path)
            try:
                return self.constructor.construct_object(node, deep=True)
            except Exception as exc:  # e.g. a timestamp or binary that does not parse
                self.problems.append(self.smap.problem(path, f"cannot read value: {exc}"))
                return None
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    kline, kcol = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                    self.problems.append(Problem(
                        self.smap.file, kline, kcol, render_path(path), "keys must be plain"
                    ))
                    continue
                key = str(key_node.value)
                kpath = (*path, key)
                if key in out:
                    kline, kcol = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                    self.problems.append(
                        Problem(
                            self.smap.file, kline, kcol, render_path(kpath),
                            f"duplicate key {key!r} (first written at line "
                            f"{self.smap.keys[kpath][0]})",
                        )
                    )
                    continue
                mark = key_node.start_mark
                self.smap.keys[kpath] = (mark.line + 1, mark.column + 1)
                out[key] = self.build(value_node, kpath, depth + 1)
            return out
        self.problems.append(self.smap.problem(path, "unsupported YAML node"))
        return None

    def _number(self, node: ScalarNode, path: DocPath) -> int | float | None:
        """A number written in plain decimal, finite and exactly representable; else a problem."""
        text = str(node.value)
        plain = _PLAIN_INT if node.tag == _INT_TAG else _PLAIN_FLOAT
        if not plain.fullmatch(text):
            self.problems.append(self.smap.problem(
                path, f"{quote(text)} is not a plain decimal number (write digits 0-9, "
                "e.g. 90 or 2.5; quote it if it is text)"))
            return None
        if len(text) > 40:  # far past 2**53; int() of a long digit string is itself slow
            value: float = math.inf
        else:
            value = int(text) if node.tag == _INT_TAG else float(text)
        if not math.isfinite(value) or abs(value) > MAX_EXACT_INT:
            self.problems.append(self.smap.problem(
                path, f"{quote(text)} is out of range (numbers are at most {MAX_EXACT_INT} "
                "in size)"))
            return None
        return value


def _prescan(text: str, file: str, max_values: int | None, loader: Any) -> Problem | None:
    """Walk the parser's events (no recursion, nothing built) for the first bound broken.

    Composing a too-deep document recurses once per level and a too-long one
    builds every node before anything can be refused; this pass refuses both
    at the position where the bound is crossed.
    """
    depth = 0
    values = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            continue
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                return Problem(file, *_where(event.start_mark), "",
                               f"nested deeper than {MAX_DEPTH} levels")
        elif not isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
            continue
        values += 1
        if max_values is not None and values > max_values:
            return Problem(file, *_where(event.start_mark), "",
                           f"more than {max_values} values in one file")
    return None


def _where(mark: Any) -> tuple[int, int]:
    """1-based line and column of a parser mark (1, 1 when the parser gave none)."""
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(text: str, file: str, strictness: Strictness = LENIENT
         ) -> tuple[Any, SourceMap, list[Problem]]:
    """Parse one YAML document. Returns (value, source map, problems).

    On a syntax error the value is None and the problem carries the position
    the YAML parser reported. Nesting past MAX_DEPTH, and more values than
    ``strictness.max_values``, are refused before the document is built.
    """
    smap = SourceMap(file)
    problems: list[Problem] = []
    try:
        try:
            # libyaml is several times faster and keeps line/column marks ...
            too_big = _prescan(text, file, strictness.max_values, _FAST_LOADER)
            if too_big is not None:
                return None, smap, [too_big]
            node = yaml.compose(text, Loader=_FAST_LOADER)
        except yaml.YAMLError:
            # ... but the pure-Python parser words its errors better: use it to report
            # (its event pass is iterative too, so deep nesting is still refused first).
            too_big = _prescan(text, file, strictness.max_values, yaml.SafeLoader)
            if too_big is not None:
                return None, smap, [too_big]
            node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = str(exc.problem or "invalid YAML")
        if exc.context:  # e.g. "while parsing a flow sequence", which may begin lines earlier
            began = f" (line {exc.context_mark.line + 1})" if exc.context_mark else ""
            reason = f"{exc.context}{began}: {reason}"
        return None, smap, [Problem(file, line, col, "", f"YAML syntax error: {reason}")]
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        return None, smap, [Problem(file, 1, 1, "", f"YAML error: {exc}")]
    if node is None:
        return None, smap, []
    try:
        value = _Builder(smap, problems, strictness.plain_numbers).build(node, ())
    except RecursionError:
        return None, smap, [Problem(file, 1, 1, "", "document is nested too deeply")]
    except _TooManyAliasValues:
        return None, smap, [Problem(file, 1, 1, "", "aliases (*name) expand to more than "
                                    f"{MAX_ALIAS_VALUES} values")]
    return value, smap, problems
