"""Every RPC every gatehouse service declares has exactly one scope in the table."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import gatehouse.v1
from gatehouse.auth.scopes import METHOD_SCOPES, is_open, scope_of

# DESIGN §11, written out independently of the table it checks.
DESIGN = {
    "check": {"Check", "CheckBulk", "ListAccessible", "ComputeUsage", "CheckLimit",
              "ResolveSignup"},
    "read": {"ReadRelationships", "ReadObject", "Watch"},
    "admin": {"GetPolicyStatus", "ReloadPolicy"},
}


def declared_methods() -> set[str]:
    """``/package.Service/Method`` of every RPC in every generated gatehouse.v1 module."""
    out: set[str] = set()
    for info in pkgutil.iter_modules(gatehouse.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"gatehouse.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            out.update(f"/{service.full_name}/{m.name}" for m in service.methods)
    return out


class TestScopeTable:
    def test_every_declared_rpc_has_a_scope_and_nothing_else_does(self) -> None:
        """A new RPC without a scope (or a stale table entry) fails here."""
        declared = declared_methods()
        assert "/gatehouse.v1.AdminService/ReloadPolicy" in declared
        assert set(METHOD_SCOPES) == declared

    def test_scopes_follow_the_design(self) -> None:
        """check/read/admin cover DESIGN §11's lists; every other RPC writes."""
        for method, scope in METHOD_SCOPES.items():
            name = method.rpartition("/")[2]
            expected = next((s for s, names in DESIGN.items() if name in names), "write")
            assert scope == expected, method

    def test_only_health_and_reflection_are_open(self) -> None:
        """No gatehouse method is open; health and both reflection versions are."""
        assert not any(is_open(m) for m in METHOD_SCOPES)
        assert is_open("/grpc.health.v1.Health/Check")
        assert is_open("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        assert is_open("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
        assert scope_of("/gatehouse.v1.GraphService/Nope") is None
        assert not is_open("/grpc.health.v1.Healthy/Check")

    def test_the_docs_table_lists_every_rpc_with_its_scope(self) -> None:
        """docs/auth.md's scopes table says what the table enforces, RPC by RPC."""
        doc = (Path(__file__).resolve().parents[2] / "docs" / "auth.md").read_text()
        rows = dict(re.findall(r"^\| `(\w+/\w+)` \| `(\w+)` \|$", doc, re.MULTILINE))
        expected = {m.removeprefix("/gatehouse.v1."): s for m, s in METHOD_SCOPES.items()}
        assert rows == expected
