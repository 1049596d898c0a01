"""YAML with positions.

Policy files, test suites and data files are read through here so that every
later error can point at ``file:line:column`` and a path such as
``permissions.connection[2].roles[0]``. The loader never raises on bad input:
syntax errors, duplicate keys and non-scalar keys come back as problems.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gatehouse.errors import Problem

Path = tuple[str | int, ...]
MAX_DEPTH = 64
# Values built again because an alias (``*name``) repeats them. Caps the
# "billion laughs" document, whose few lines of aliases expand exponentially.
MAX_ALIAS_VALUES = 100_000


class _TooManyAliasValues(Exception):
    pass


def render_path(path: Path) -> str:
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
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: Path) -> tuple[int, int]:
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

    def key_position(self, path: Path) -> tuple[int, int]:
        return self.keys.get(path) or self.position(path)

    def problem(self, path: Path, message: str, *, at_key: bool = False) -> Problem:
        line, col = self.key_position(path) if at_key else self.position(path)
        return Problem(self.file, line, col, render_path(path), message)


class _Builder:
    def __init__(self, smap: SourceMap, problems: list[Problem]) -> None:
        self.smap = smap
        self.problems = problems
        self.constructor = SafeConstructor()
        self.built: set[int] = set()
        self.repeated = 0

    def build(self, node: Node, path: Path, depth: int = 0) -> Any:
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


_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(text: str, file: str) -> tuple[Any, SourceMap, list[Problem]]:
    """Parse one YAML document. Returns (value, source map, problems).

    On a syntax error the value is None and the problem carries the position
    the YAML parser reported.
    """
    smap = SourceMap(file)
    problems: list[Problem] = []
    try:
        try:
            # libyaml is several times faster and keeps line/column marks ...
            node = yaml.compose(text, Loader=_FAST_LOADER)
        except yaml.YAMLError:
            # ... but the pure-Python parser words its errors better: use it to report.
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
        value = _Builder(smap, problems).build(node, ())
    except RecursionError:
        return None, smap, [Problem(file, 1, 1, "", "document is nested too deeply")]
    except _TooManyAliasValues:
        return None, smap, [Problem(file, 1, 1, "", "aliases (*name) expand to more than "
                                    f"{MAX_ALIAS_VALUES} values")]
    return value, smap, problems


def walk_mapping(value: Any) -> Iterator[tuple[str, Any]]:
    """Items of a mapping value, or nothing if it is not one."""
    if isinstance(value, dict):
        yield from value.items()
