"""The package itself: it stands apart from the server, its generated modules
live beside the server's in one process, and its exports are complete."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import zipfile
from pathlib import Path

import gatehouse_client
import pytest
from gatehouse_client import errors, types
from gatehouse_client.aio import AsyncClient, AsyncTenancy
from gatehouse_client.client import Client, Tenancy

PACKAGE_DIR = Path(gatehouse_client.__file__).resolve().parent
CLIENT_ROOT = PACKAGE_DIR.parent.parent


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


class TestIndependence:
    def test_no_module_imports_the_server(self) -> None:
        """No file of gatehouse_client (generated ones included) imports `gatehouse`."""
        offenders = []
        for path in PACKAGE_DIR.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                offenders += [f"{path.name}: {n}" for n in names
                              if n == "gatehouse" or n.startswith("gatehouse.")]
        assert offenders == []

    def test_importing_the_client_loads_nothing_of_the_server(self) -> None:
        """A process that imports the client (sync and asyncio) has no gatehouse module."""
        out = _python("import sys, gatehouse_client, gatehouse_client.aio; "
                      "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gatehouse'))")
        assert out.strip() == "[]"

    @pytest.mark.parametrize("first", ["client", "server"])
    def test_generated_modules_coexist_with_the_servers(self, first: str) -> None:
        """Both sets of generated modules load in one process, in either order, and read
        each other's bytes (the descriptor pool accepts the identical files twice)."""
        client = ("from gatehouse_client._pb.gatehouse.v1 import authorization_pb2 as c, "
                  "graph_pb2, tenancy_pb2, usage_pb2")
        server = ("from gatehouse.v1 import authorization_pb2 as s, graph_pb2 as sg, "
                  "tenancy_pb2 as st, usage_pb2 as su")
        imports = [client, server] if first == "client" else [server, client]
        out = _python("\n".join([*imports,
                                 "r = c.CheckRequest(action='view')",
                                 "print(s.CheckRequest.FromString(r.SerializeToString()).action)",
                                 "print(c.DESCRIPTOR.name == s.DESCRIPTOR.name)"]))
        assert out.split() == ["view", "True"]

    def test_the_generated_modules_are_not_committed(self) -> None:
        """The build generates them; git ignores them."""
        out = subprocess.run(["git", "ls-files", str(PACKAGE_DIR / "_pb")], cwd=CLIENT_ROOT,
                             capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout == ""

    def test_a_wheel_ships_the_generated_modules(self, tmp_path: Path) -> None:
        """Building a wheel generates the modules and ships them, typed, under
        gatehouse_client._pb only."""
        out = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", str(tmp_path), str(CLIENT_ROOT)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        [wheel] = tmp_path.glob("gatehouse_client-*.whl")
        names = set(zipfile.ZipFile(wheel).namelist())
        for stem in ("authorization", "graph", "tenancy", "usage"):
            assert f"gatehouse_client/_pb/gatehouse/v1/{stem}_pb2.py" in names
            assert f"gatehouse_client/_pb/gatehouse/v1/{stem}_pb2.pyi" in names
        assert "gatehouse_client/py.typed" in names
        assert {n.split("/")[0] for n in names} <= {"gatehouse_client",
                                                    *(n.split("/")[0] for n in names
                                                      if ".dist-info" in n)}


class TestPublicApi:
    def test_every_public_type_and_error_is_exported(self) -> None:
        """What types and errors define publicly is importable from gatehouse_client."""
        for module in (types, errors):
            for name, value in vars(module).items():
                if name.startswith("_") or not inspect.isclass(value):
                    continue
                if value.__module__ != module.__name__:
                    continue
                assert name in gatehouse_client.__all__, name
        for name in gatehouse_client.__all__:
            assert hasattr(gatehouse_client, name), name

    @pytest.mark.parametrize(("sync", "asyn"), [(Client, AsyncClient), (Tenancy, AsyncTenancy)])
    def test_sync_and_async_have_the_same_methods(self, sync: type, asyn: type) -> None:
        """Same public methods with the same parameters; the async ones are coroutines or
        async iterators."""
        def public(cls: type) -> dict[str, inspect.Signature]:
            return {n: inspect.signature(f) for n, f in vars(cls).items()
                    if not n.startswith("_") and inspect.isfunction(f)}

        s, a = public(sync), public(asyn)
        assert s.keys() == a.keys()
        for name in s:
            assert list(s[name].parameters) == list(a[name].parameters), name
            fn = getattr(asyn, name)
            if name in {"list_accessible", "read_relationships"}:
                assert not inspect.iscoroutinefunction(fn), name
            elif name not in {"observe_revision", "close"}:
                assert inspect.iscoroutinefunction(fn), name
        assert inspect.iscoroutinefunction(AsyncClient.close)
