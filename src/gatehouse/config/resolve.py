"""From the table to effective values: flags, environment, config file, defaults.

Precedence, highest first: a command-line flag, the environment variable, the
config file, the default. Every value is read by its setting's kind, and
every refusal names the setting and where the value came from, so an
operator reading one line knows what to change and where.
"""

from __future__ import annotations

import argparse
import difflib
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from gatehouse import sourcemap
from gatehouse.config.setting import ENV_PREFIX, Rule, Setting, Source
from gatehouse.config.table import RULES, SETTINGS
from gatehouse.errors import GatehouseError, Problem, quote

CONFIG_ENV = ENV_PREFIX + "CONFIG"
# A config file is a few dozen keys. The bounds keep a wrong path (a log file,
# a device) or a hostile file from costing more than a moment at start-up.
MAX_FILE_BYTES = 256 * 1024
MAX_FILE_VALUES = 10_000
RESERVED = frozenset({"config", "print_config", "command", "func"})
"""Names the ``serve`` parser uses itself; no setting may take one."""


class ConfigError(GatehouseError):
    """The configuration cannot be used; ``problems`` holds one line per finding, each
    naming the setting and where its value came from."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, slots=True)
class Effective:
    """The value in force for every setting, and where each came from."""

    values: Mapping[str, Any]
    sources: Mapping[str, Source]
    file: str | None
    """The config file read, as named, or None."""
    file_source: Source | None
    table: tuple[Setting, ...]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def server_fields(self) -> dict[str, Any]:
        """Keyword arguments for ``ServerConfig``: each setting with a field."""
        return {s.target: self.values[s.name] for s in self.table if s.target is not None}


def _help(s: Setting) -> str:
    default = "none" if s.default is None else s.kind.to_text(s.default)
    text = f"{s.help} (env {s.env}; default {default})"
    return text.replace("%", "%%")  # argparse formats help with %


def add_arguments(parser: argparse.ArgumentParser,
                  table: tuple[Setting, ...] = SETTINGS) -> None:
    """One flag per setting (two for a boolean), plus ``--config`` and ``--print-config``.

    Flags default to "not given" (absent from the namespace), so a flag given
    is told apart from a default and wins over the environment and the file.
    Values stay text here; ``resolve`` reads them, so a bad flag is reported
    like a bad environment variable, naming the setting.
    """
    parser.add_argument("--config", metavar="FILE", default=None,
                        help=f"YAML file of settings (env {CONFIG_ENV}); flags and environment "
                        "variables override it; see docs/configuration.md")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration as YAML (secrets masked, "
                        "each value's source as a comment) and exit")
    for s in table:
        if s.name in RESERVED:
            raise ValueError(f"setting name {s.name!r} is reserved")
        if s.is_bool:
            positive = [s.flag, *(a for a in s.aliases if not a.startswith("--no-"))]
            negative = [str(s.negative_flag), *(a for a in s.aliases if a.startswith("--no-"))]
            parser.add_argument(*positive, dest=s.name, action="store_const", const="true",
                                default=argparse.SUPPRESS, help=_help(s))
            parser.add_argument(*negative, dest=s.name, action="store_const", const="false",
                                default=argparse.SUPPRESS, help=f"do not: {s.flag}")
        else:
            parser.add_argument(s.flag, *s.aliases, dest=s.name, metavar=s.kind.metavar,
                                default=argparse.SUPPRESS, help=_help(s))


def _describe(name: str, source: Source, message: str) -> str:
    if source.kind == "file":
        return f"{source.where} {name}: {message}"
    return f"{name} ({source}): {message}"


def _suggest(key: str, names: Sequence[str]) -> str:
    normal = key.strip().lower().replace("-", "_")
    if normal.startswith(ENV_PREFIX.lower()):
        normal = normal[len(ENV_PREFIX):]
    if normal in names and normal != key:
        return f"; did you mean {normal!r}?"
    close = difflib.get_close_matches(normal, names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _read_file(path: str, source: Source, table: tuple[Setting, ...]
               ) -> tuple[dict[str, tuple[object, Source, Source]], list[str]]:
    """Each key of the file with (value, where the key is, where the value is); problems."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return {}, [f"config ({source}): cannot read {quote(path)}: {exc.strerror or exc}"]
    if len(raw) > MAX_FILE_BYTES:
        return {}, [f"{path}: config file is larger than {MAX_FILE_BYTES} bytes"]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return {}, [f"{path}: config file is not UTF-8 text (byte {exc.start})"]
    strict = sourcemap.Strictness(max_values=MAX_FILE_VALUES, plain_numbers=True)
    doc, smap, problems = sourcemap.load(text, path, strict)
    out = [str(p) for p in sorted(set(problems))]
    if doc is None:
        return {}, out  # a syntax error, or empty (only comments: nothing set)
    if not isinstance(doc, dict):
        line, col = smap.position(())
        return {}, [str(Problem(path, line, col, "", "a config file must be a mapping of "
                                "setting keys (e.g. listen: 127.0.0.1:50051)"))]
    names = [s.name for s in table]
    found: dict[str, tuple[object, Source, Source]] = {}
    for key, value in doc.items():
        kline, kcol = smap.key_position((key,))
        if key not in names:
            hint = (f"; a config file cannot name another (use --config or {CONFIG_ENV})"
                    if key == "config" else _suggest(key, names))
            out.append(str(Problem(path, kline, kcol, "",
                                   f"unknown key {quote(key)}{hint}")))
            continue
        if any(p.path == key or p.path.startswith((f"{key}.", f"{key}[")) for p in problems):
            continue  # already reported where the reader refused it (e.g. .nan)
        vline, vcol = smap.position((key,))
        found[key] = (value, Source("file", f"{path}:{kline}:{kcol}"),
                      Source("file", f"{path}:{vline}:{vcol}"))
    return found, out


def resolve(flags: Mapping[str, str], env: Mapping[str, str], config: str | None = None,
            config_source: Source | None = None, *, table: tuple[Setting, ...] = SETTINGS,
            rules: tuple[Rule, ...] = RULES) -> Effective:
    """Effective values from the given flags (text, by setting name), the environment and
    the config file; ``ConfigError`` listing every problem found."""
    problems: list[str] = []
    file_values: dict[str, tuple[object, Source, Source]] = {}
    if config is not None:
        file_values, problems = _read_file(config, config_source or Source("flag", "--config"),
                                           table)
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for s in table:
        value: Any = s.default
        source = Source("default")
        try:
            if s.name in flags:
                source = Source("flag", s.flag)
                text = flags[s.name]
                value = None if s.optional and text == "" else s.kind.from_text(text)
            elif s.env in env:
                source = Source("env", s.env)
                text = env[s.env]
                value = None if s.optional and text == "" else s.kind.from_text(text)
            elif s.name in file_values:
                raw, source, at = file_values[s.name]
                if raw is None and not s.optional:
                    raise ValueError("must be set (it has no 'none'); remove the line for the "
                                     "default")
                try:
                    value = None if raw is None else s.kind.from_yaml(raw)
                except ValueError:
                    source = at  # point at the value, not the key
                    raise
        except ValueError as exc:
            problems.append(_describe(s.name, source, str(exc)))
            continue
        values[s.name] = value
        sources[s.name] = source
    if not problems:
        for rule in rules:
            found = rule(values)
            if found is not None:
                name, message = found
                problems.append(_describe(name, sources[name], message))
    if problems:
        raise ConfigError(problems)
    return Effective(values, sources, config, config_source if config else None, table)


def from_arguments(args: argparse.Namespace, env: Mapping[str, str],
                   table: tuple[Setting, ...] = SETTINGS) -> Effective:
    """``resolve`` for a namespace built by a parser that ``add_arguments`` set up."""
    flags = {s.name: getattr(args, s.name) for s in table if hasattr(args, s.name)}
    config: str | None = args.config
    source = Source("flag", "--config")
    if config is None and env.get(CONFIG_ENV):
        config, source = env[CONFIG_ENV], Source("env", CONFIG_ENV)
    return resolve(flags, env, config, source, table=table)


def _yaml_value(value: object) -> str:
    """One YAML value on one line, quoted where YAML would read it as something else."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def render(effective: Effective) -> str:
    """The effective configuration as a YAML config file: each setting with its help as
    a comment above it and its source beside it; secrets masked."""
    lines = ["# gatehouse serve: effective configuration (precedence: flag > environment >",
             "# config file > default). This is a valid config file: gatehouse serve --config "
             "FILE."]
    if effective.file is not None:
        lines.append(f"# Config file read: {effective.file} (from {effective.file_source})")
    for s in effective.table:
        value = effective[s.name]
        shown = s.shown(value)
        source = effective.sources[s.name]
        note = "default" if source.kind == "default" else f"from {source}"
        if value is not None and shown != s.kind.to_yaml(value):
            note += ", masked"
        lines.append("")
        lines.extend(textwrap.wrap(s.help, 86, initial_indent="# ", subsequent_indent="# "))
        lines.append(f"{s.name}: {_yaml_value(shown)}  # {note}")
    return "\n".join(lines) + "\n"


def worker_invocation(effective: Effective, overrides: Mapping[str, Any]
                      ) -> tuple[list[str], dict[str, str | None]]:
    """A worker process's ``serve`` arguments and environment changes (None: remove).

    Every setting is passed explicitly, so a worker runs with exactly the
    parent's values; ``overrides`` replaces some (e.g. ``workers: 1``). A
    sensitive value (a secret, a URL that may hold a password) goes by
    environment, never on the command line where any local user can read
    it; the config file is not read again.
    """
    argv: list[str] = []
    env: dict[str, str | None] = {CONFIG_ENV: None}
    for s in effective.table:
        value = overrides[s.name] if s.name in overrides else effective[s.name]
        env[s.env] = None
        if value is None:
            continue
        if s.sensitive:
            env[s.env] = s.kind.to_text(value)
        elif s.is_bool:
            argv.append(s.flag if value else str(s.negative_flag))
        else:
            argv.append(f"{s.flag}={s.kind.to_text(value)}")
    return argv, env


def reference_table(table: tuple[Setting, ...] = SETTINGS) -> str:
    """The settings as the Markdown table in docs/configuration.md (a test compares them)."""
    rows = ["| key | flag | environment | default | type | meaning |",
            "|---|---|---|---|---|---|"]
    for s in table:
        flags = [s.flag, *([str(s.negative_flag)] if s.is_bool else []), *s.aliases]
        flag = " / ".join(f"`{f}`" for f in flags)
        default = "none" if s.default is None else f"`{s.kind.to_text(s.default)}`"
        cells = [f"`{s.name}`", flag, f"`{s.env}`", default, s.kind.describe(),
                 s.help + (" Secret: printed as `***`." if s.secret else "")]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"
