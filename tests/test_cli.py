"""The `gatehouse policy` commands as a platform engineer uses them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import GATEHOUSE, ROOT, ServerProcess


def gatehouse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATEHOUSE, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


class TestPolicyCommands:
    def test_validate_ok(self) -> None:
        """A good policy set validates with exit 0 and prints its version."""
        out = gatehouse("policy", "validate", "policies/coupler")
        assert out.returncode == 0, out.stderr
        assert "ok" in out.stdout and "sha256:" in out.stdout

    def test_validate_reports_every_problem_with_position(self, tmp_path: Path) -> None:
        """A broken set exits 1 and lists each problem as file:line:col path: message."""
        policy = tmp_path / "p"
        shutil.copytree(ROOT / "policies/coupler", policy)
        text = (policy / "policy.yaml").read_text()
        text = text.replace("actions: [view, manage_members, request_accounts]",
                            "actions: [view, manage_members, request_accounts]\n"
                            "    colour: blue", 1)
        text = text.replace("roles: [workspace.guest]\n      when: owner",
                            "roles: [workspace.guest]\n      when: resource.colour == 'x'", 1)
        (policy / "policy.yaml").write_text(text)
        out = gatehouse("policy", "validate", str(policy))
        assert out.returncode == 1
        lines = out.stderr.splitlines()
        assert any(line.startswith(f"{policy}/policy.yaml:") and "unknown key 'colour'" in line
                   for line in lines), out.stderr
        assert any("has no attribute 'colour'" in line and ".when:" in line
                   for line in lines), out.stderr
        assert "2 problem(s)" in out.stderr

    def test_test_runs_suites_and_reports_counts(self) -> None:
        """`policy test` runs the suites, counts the cases of each kind and ends with the
        pass/fail count."""
        out = gatehouse("policy", "test", "policies/coupler")
        assert out.returncode == 0, out.stdout + out.stderr
        *_, kinds, summary = out.stdout.strip().splitlines()
        assert summary.endswith(" passed, 0 failed")
        counts = dict(reversed(part.split(" ")) for part in kinds.removeprefix("cases: ")
                      .split(", "))
        assert set(counts) == {"check", "usage", "limits", "writes", "operations"}
        assert sum(int(n) for n in counts.values()) == int(summary.split(" ")[0])

    def test_test_fails_on_a_wrong_expectation(self, tmp_path: Path) -> None:
        """A suite whose expectation the policy contradicts fails with the rule trace."""
        policy = tmp_path / "p"
        shutil.copytree(ROOT / "policies/coupler", policy, ignore=shutil.ignore_patterns("tests"))
        (policy / "wrong_test.yaml").write_text(
            "data:\n"
            "  relationships:\n"
            "    - workspace:w#parent@organization:o\n"
            "    - workspace:w#user@user:u\n"
            "    - data_flow:f#parent@workspace:w\n"
            "tests:\n"
            "  - name: users delete others' flows (wrong on purpose)\n"
            "    subject: user:u\n"
            "    resource: data_flow:f\n"
            "    allow: [delete]\n"
            "    deny: [view]\n"
        )
        out = gatehouse("policy", "test", str(policy))
        assert out.returncode == 1
        assert "FAIL wrong_test.yaml:7 users delete others' flows (wrong on purpose) " \
            "[delete: allow]" in out.stdout
        assert "FAIL wrong_test.yaml:7" in out.stdout and "[view: deny]" in out.stdout
        assert out.stdout.strip().splitlines()[-2:] == ["cases: 2 check", "0 passed, 2 failed"]


class TestCheckCommand:
    def test_prints_the_decision_and_exits_by_it(self, coupler_server: ServerProcess) -> None:
        """`gatehouse check` prints ALLOW/DENY with revision and policy, exit 0 or 1."""
        deny = gatehouse("check", "user:uma", "delete", "data_flow:acme-sales-pipeline",
                         "--address", coupler_server.address)
        assert deny.returncode == 1, deny.stderr
        assert deny.stdout.startswith("DENY  user:uma delete data_flow:acme-sales-pipeline")
        assert "policy sha256:" in deny.stdout
        allow = gatehouse("check", "user:ben", "delete", "data_flow:acme-sales-pipeline",
                          "--address", coupler_server.address, "--fully-consistent")
        assert allow.returncode == 0 and allow.stdout.startswith("ALLOW")

    def test_explain_prints_the_trace_as_a_tree(self, coupler_server: ServerProcess) -> None:
        """--explain adds the summary and one tree line per trace entry."""
        out = gatehouse("check", "user:uma", "edit", "data_flow:acme-sales-pipeline",
                        "--explain", "--address", coupler_server.address)
        lines = out.stdout.splitlines()
        assert out.returncode == 0 and lines[1].startswith("why: ")
        assert lines[-1].startswith("  └─ ") and all(
            line.startswith(("  ├─ ", "  └─ ")) for line in lines[2:])

    def test_errors_exit_2_with_the_status(self, coupler_server: ServerProcess) -> None:
        """An invalid request prints the status and the field; a malformed ref never calls."""
        out = gatehouse("check", "user:uma", "fly", "data_flow:acme-sales-pipeline",
                        "--address", coupler_server.address)
        assert out.returncode == 2 and "INVALID_ARGUMENT: action:" in out.stderr
        out = gatehouse("check", "uma", "view", "data_flow:x", "--address",
                        coupler_server.address)
        assert out.returncode == 2 and "subject must be type:id" in out.stderr


class TestServeRedisFlags:
    def test_bad_redis_settings_exit_2_naming_the_flag(self) -> None:
        """Out-of-range pool sizes, timeouts and replica counts, and WAIT without Redis, stop
        serve before it starts, naming the flag."""
        cases = [
            (["--redis-url", "redis://127.0.0.1:1/0", "--redis-pool-size", "-1"],
             "redis_pool_size (--redis-pool-size): must be between 0 and 10000"),
            (["--redis-url", "redis://127.0.0.1:1/0", "--redis-socket-timeout", "0"],
             "redis_socket_timeout (--redis-socket-timeout): must be above 0"),
            (["--redis-url", "redis://127.0.0.1:1/0", "--redis-connect-timeout", "nan"],
             "redis_connect_timeout (--redis-connect-timeout): "),
            (["--redis-url", "redis://127.0.0.1:1/0", "--redis-wait-replicas", "101"],
             "redis_wait_replicas (--redis-wait-replicas): must be between 0 and 100"),
            (["--redis-wait-replicas", "1"], "redis_wait_replicas (--redis-wait-replicas): "
             "needs redis_url"),
            (["--redis-url", "redis://:hunter2@127.0.0.1:1/x"],
             "redis_url (--redis-url): the path must be the database number"),
        ]
        for args, message in cases:
            out = gatehouse("serve", "--listen", "127.0.0.1:0", *args)
            assert out.returncode == 2, (args, out.stderr)
            assert message in out.stderr, (args, out.stderr)
            assert "hunter2" not in out.stderr
