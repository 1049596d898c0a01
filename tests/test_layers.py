"""Imports flow one way: names → policy → graph → engine → usage → tenancy → runtime →
api → server, with observe (metrics, probes, tracing) beside api: it reads the
runtime and hooks into the transport, and only server and cli import it.

The rule is data (``FORBIDDEN``): for each package, the modules it may not
import, directly or (for ``TRANSITIVE``) through anything it imports. Every
module under ``src/gatehouse`` is parsed with ``ast``; imports inside
functions and ``TYPE_CHECKING`` blocks count like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "gatehouse"
GENERATED = ("gatehouse.v1",)

_ABOVE_GRAPH = ("gatehouse.engine", "gatehouse.usage", "gatehouse.tenancy", "gatehouse.api",
                "gatehouse.runtime", "gatehouse.observe",
                "gatehouse.server", "gatehouse.workers", "gatehouse.cli", "gatehouse.transport",
                "gatehouse.policytest")

AUTH_EDGE = ("authenticator", "exposure", "keygen", "keys", "limiter", "reload", "scopes")
"""The modules of gatehouse.auth that authenticate calls (tenants.py reads the index)."""

# importer prefix -> module prefixes it must not import directly.
FORBIDDEN: Mapping[str, tuple[str, ...]] = {
    "gatehouse.names": ("gatehouse.policy", "gatehouse.graph", *_ABOVE_GRAPH),
    "gatehouse.errors": ("gatehouse.names", "gatehouse.policy", "gatehouse.graph", *_ABOVE_GRAPH),
    "gatehouse.policy": ("gatehouse.graph", *_ABOVE_GRAPH),
    "gatehouse.graph": _ABOVE_GRAPH,
    "gatehouse.engine": ("gatehouse.usage", "gatehouse.tenancy", "gatehouse.api",
                         "gatehouse.runtime", "gatehouse.observe",
                         "gatehouse.server", "gatehouse.workers", "gatehouse.cli",
                         "gatehouse.transport", "gatehouse.policytest"),
    "gatehouse.usage": ("gatehouse.tenancy", "gatehouse.api", "gatehouse.runtime",
                        "gatehouse.observe",
                        "gatehouse.server", "gatehouse.workers", "gatehouse.cli",
                        "gatehouse.transport"),
    # Decisions only: no store, no wire, no clock of its own (the runtime passes one).
    "gatehouse.tenancy": ("gatehouse.api", "gatehouse.runtime", "gatehouse.observe",
                          "gatehouse.server",
                          "gatehouse.workers", "gatehouse.cli", "gatehouse.transport",
                          "gatehouse.graph.redis", "gatehouse.graph.memory", "gatehouse.v1",
                          "grpc", "google.protobuf", "redis"),
    # The live state knows nothing of the wire: no protobuf, no grpc, no servicers.
    "gatehouse.runtime": ("gatehouse.api", "gatehouse.observe", "gatehouse.server",
                          "gatehouse.workers",
                          "gatehouse.cli", "gatehouse.transport", "gatehouse.v1", "grpc",
                          "google.protobuf"),
    "gatehouse.api": ("gatehouse.observe", "gatehouse.server", "gatehouse.workers",
                      "gatehouse.cli"),
    "gatehouse.transport": ("gatehouse.api", "gatehouse.observe", "gatehouse.server",
                            "gatehouse.workers", "gatehouse.cli"),
    # Observers (audit log, metrics, probes, traces) watch calls and the runtime; only the
    # composition root (server) and the command (cli) wire them in.
    "gatehouse.observe": ("gatehouse.api", "gatehouse.server", "gatehouse.workers",
                          "gatehouse.cli"),
    # Who calls and what a tenant-bound caller may name: read by runtime and api,
    # reading only the graph and the policy (no wire, no store client).
    "gatehouse.auth.tenants": (*_ABOVE_GRAPH, "gatehouse.graph.redis", "gatehouse.graph.memory",
                               "gatehouse.v1", "grpc", "google.protobuf", "redis"),
    "gatehouse.limits": ("gatehouse",),
    # Polling files for changes (policy, keys, certificates): used from every layer.
    "gatehouse.filewatch": ("gatehouse",),
    # Settings are read before anything is built: no server, store or policy behind them.
    "gatehouse.config": ("gatehouse.policy", "gatehouse.graph", *_ABOVE_GRAPH),
    # Authentication sits beside the transport: it sees calls, never the domain.
    **{f"gatehouse.auth.{edge}": ("gatehouse.api", "gatehouse.observe", "gatehouse.server",
                                  "gatehouse.workers", "gatehouse.cli", "gatehouse.runtime",
                                  "gatehouse.engine", "gatehouse.graph", "gatehouse.usage",
                                  "gatehouse.tenancy", "gatehouse.policy")
       for edge in AUTH_EDGE},
    # What a call's handlers read of its caller: importable anywhere, importing nothing.
    "gatehouse.auth.caller": ("gatehouse",),
}

# importer prefix -> modules it must not reach through any chain of gatehouse imports.
TRANSITIVE: Mapping[str, tuple[str, ...]] = {
    "gatehouse.engine": ("gatehouse.api", "gatehouse.graph.redis", "gatehouse.redisscript",
                         "gatehouse.redisconn", "redis", "yaml", "grpc", "google.protobuf",
                         "gatehouse.v1"),
}


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module named by an import statement in ``source`` (relative ones resolved)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # `from gatehouse.graph import redis` imports a module too.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def project_imports() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        name = module_name(path)
        if any(_matches(name, g) for g in GENERATED):
            continue
        out[name] = imports_of(path.read_text(encoding="utf-8"), name,
                               path.name == "__init__.py")
    return out


def violations(graph: Mapping[str, Iterable[str]],
               forbidden: Mapping[str, tuple[str, ...]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        for importer, banned in forbidden.items():
            if not _matches(module, importer):
                continue
            for target in sorted(targets):
                for ban in banned:
                    if _matches(target, ban):
                        out.append(f"{module} imports {target} ({importer} may not import {ban})")
    return out


def reachable(graph: Mapping[str, Iterable[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        module = stack.pop()
        for target in graph.get(module, ()):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


class TestLayers:
    def test_no_module_imports_against_the_direction(self) -> None:
        """No module imports a package its layer may not depend on."""
        assert violations(project_imports(), FORBIDDEN) == []

    def test_engine_reaches_no_transport_or_storage_client(self) -> None:
        """Nothing the engine imports, however indirectly, pulls in redis, yaml, grpc, protobuf."""
        graph = project_imports()
        problems = []
        for importer, banned in TRANSITIVE.items():
            for module in graph:
                if not _matches(module, importer):
                    continue
                for target in sorted(reachable(graph, module)):
                    if any(_matches(target, ban) for ban in banned):
                        problems.append(f"{module} reaches {target}")
        assert problems == []

    def test_every_rule_names_existing_modules(self) -> None:
        """Each importer in the rule exists, so a rename cannot make a rule silently vacuous."""
        names = set(project_imports())
        for importer in [*FORBIDDEN, *TRANSITIVE]:
            assert any(_matches(n, importer) for n in names), importer

    @pytest.mark.parametrize(("source", "module"), [
        ("from gatehouse.graph.model import ObjectRef\n", "gatehouse.policy.loader"),
        ("def f():\n    import gatehouse.runtime\n", "gatehouse.graph.plan"),
        ("from ..api import errors\n", "gatehouse.engine.check"),
        ("from gatehouse import policy\n", "gatehouse.names"),
    ])
    def test_the_checker_sees_a_wrong_import(self, source: str, module: str) -> None:
        """A forbidden import written in any form (nested, relative, from-package) is reported."""
        assert violations({module: imports_of(source, module)}, FORBIDDEN)
