"""`gatehouse keys new|hash` as an operator runs them, and the container files that use them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from gatehouse.auth.keys import load_keys
from gatehouse.config import CONFIG_ENV, SETTINGS
from tests.conftest import GATEHOUSE, ROOT, free_port, start_server
from tests.tls_certs import TlsCerts

COMPOSE_FILES = ("compose.yaml", "compose.sentinel.yaml")
IMAGE_DIRS = ("policies", "examples")
"""What the Dockerfile copies into the image's working directory /app."""


def gatehouse(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATEHOUSE, *args], cwd=ROOT, input=stdin, capture_output=True,
                          text=True, timeout=30)


class TestKeysNew:
    def test_prints_a_key_once_and_an_entry_that_loads(self, tmp_path: Path) -> None:
        """Line 1 is a fresh key; the rest, under `keys:`, is a keys file that accepts it."""
        out = gatehouse("keys", "new", "billing", "--scopes", "check,read",
                        "--organizations", "acme,initech")
        assert out.returncode == 0, out.stderr
        key, *rest = out.stdout.splitlines()
        assert re.fullmatch(r"gh_[A-Za-z0-9_\-]{43}", key)
        assert out.stdout.count(key) == 1 and key not in out.stderr
        path = tmp_path / "keys.yaml"
        path.write_text("keys:\n" + "\n".join(rest) + "\n")
        table = load_keys(path)
        entry = table.by_digest[hashlib.sha256(key.encode()).digest()]
        assert entry.caller.name == "billing"
        assert entry.caller.scopes == frozenset({"check", "read"})
        assert entry.caller.organizations == frozenset({"acme", "initech"})

    def test_two_keys_differ(self) -> None:
        """Every call makes a new random key."""
        first = gatehouse("keys", "new", "a", "--scopes", "check").stdout.splitlines()[0]
        second = gatehouse("keys", "new", "a", "--scopes", "check").stdout.splitlines()[0]
        assert first != second

    def test_a_bad_scope_or_name_is_refused_without_a_key(self) -> None:
        """A typo exits 2 naming the field, and prints no key."""
        out = gatehouse("keys", "new", "billing", "--scopes", "check,superuser")
        assert out.returncode == 2 and out.stdout == ""
        assert "--scopes: unknown scope 'superuser'" in out.stderr
        out = gatehouse("keys", "new", "bad name", "--scopes", "check")
        assert out.returncode == 2 and "name: 'bad name' is not a key name" in out.stderr


class TestKeysHash:
    def test_hashes_the_key_read_from_stdin(self) -> None:
        """The printed hash is the sha256 of the key, trailing newline ignored."""
        out = gatehouse("keys", "hash", stdin="gh_example_key\n")
        assert out.returncode == 0
        assert out.stdout.strip() == hashlib.sha256(b"gh_example_key").hexdigest()

    def test_an_empty_stdin_is_refused(self) -> None:
        """No key on stdin exits 2 rather than printing the hash of nothing."""
        assert gatehouse("keys", "hash", stdin="").returncode == 2


class TestContainerFiles:
    @pytest.mark.parametrize("name", COMPOSE_FILES)
    def test_compose_mounts_a_keys_file_secret_where_the_server_reads_it(
            self, name: str) -> None:
        """Each compose file parses, gives gatehouse a keys file secret, and points
        GATEHOUSE_API_KEYS at where that secret is mounted."""
        compose = yaml.safe_load((ROOT / name).read_text())
        service = compose["services"]["gatehouse"]
        assert service["secrets"] == ["gatehouse_keys"]
        assert compose["secrets"]["gatehouse_keys"]["file"] == "./gatehouse-keys.yaml"
        assert service["environment"]["GATEHOUSE_API_KEYS"] == "/run/secrets/gatehouse_keys"
        assert "gatehouse keys new" in (ROOT / name).read_text()

    def test_the_image_reads_keys_from_the_secret_path(self) -> None:
        """The Dockerfile listens publicly only with GATEHOUSE_API_KEYS set to the secret."""
        dockerfile = (ROOT / "Dockerfile").read_text()
        assert "GATEHOUSE_LISTEN=0.0.0.0:50051" in dockerfile
        assert "GATEHOUSE_API_KEYS=/run/secrets/gatehouse_keys" in dockerfile
        assert "--insecure-no-auth" not in dockerfile

    def test_the_documented_recipe_makes_a_loadable_keys_file(self, tmp_path: Path) -> None:
        """`(echo 'keys:'; tail -n +4 app-key.txt)` as the comments say yields a valid file."""
        out = gatehouse("keys", "new", "app", "--scopes", "check,read,write,admin")
        (tmp_path / "app-key.txt").write_text(out.stdout)
        made = subprocess.run(["sh", "-c", "(echo 'keys:'; tail -n +4 app-key.txt)"],
                              cwd=tmp_path, capture_output=True, text=True, check=True)
        (tmp_path / "gatehouse-keys.yaml").write_text(made.stdout)
        assert load_keys(tmp_path / "gatehouse-keys.yaml").names == ("app",)


def interpolate(value: object) -> str:
    """A compose environment value as the container sees it when the host sets nothing:
    ``${VAR:-default}`` becomes the default."""
    text = str(value)
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV lines, as NAME -> value."""
    text = (ROOT / "Dockerfile").read_text().split("AS runtime", 1)[1]
    block = re.search(r"\nENV ((?:.*\\\n)*.*)\n", text)
    assert block is not None
    return dict(re.findall(r"([A-Z_]+)=(\S+)", block.group(1)))


def container_env(compose_file: str) -> dict[str, str]:
    """What `gatehouse serve` sees in the gatehouse service: the image's ENV, then the
    compose file's environment."""
    service = yaml.safe_load((ROOT / compose_file).read_text())["services"]["gatehouse"]
    return {**dockerfile_env(),
            **{k: interpolate(v) for k, v in service["environment"].items()}}


def print_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`gatehouse serve` as the image's CMD runs it, with --print-config, in ``env`` alone."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    return subprocess.run([*GATEHOUSE, "serve", "--listen", "0.0.0.0:50051", "--print-config"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**clean, **env})


class TestDeploymentFiles:
    """The Dockerfile and compose files hold only real settings, real paths and real ports.

    Docker is not needed: the files are parsed, and what they hand the server is
    given to the real `gatehouse serve --print-config`.
    """

    @pytest.mark.parametrize("name", COMPOSE_FILES)
    def test_every_variable_is_a_setting_and_the_server_accepts_them(self, name: str) -> None:
        """Each GATEHOUSE_* variable the image or compose file sets is a setting of the
        config table, and serve accepts the lot (exit 0) with the values intended."""
        env = container_env(name)
        known = {s.env for s in SETTINGS} | {CONFIG_ENV}
        assert sorted(k for k in env if k.startswith("GATEHOUSE_") and k not in known) == []
        out = print_config(env)
        assert out.returncode == 0, out.stderr
        printed = yaml.safe_load(out.stdout)
        assert printed["metrics_listen"] == "0.0.0.0:9464"
        assert printed["api_keys"] == "/run/secrets/gatehouse_keys"
        assert printed["audit_log"] is None  # off unless the host asks for it
        with_audit = print_config({**env, "GATEHOUSE_AUDIT_LOG": "-"})
        assert yaml.safe_load(with_audit.stdout)["audit_log"] == "-"

    @pytest.mark.parametrize("name", COMPOSE_FILES)
    def test_every_path_exists_in_the_image_layout(self, name: str) -> None:
        """Relative paths name files the Dockerfile copies to /app; /run/secrets/X is a
        secret the service mounts; nothing else is named."""
        env = container_env(name)
        service = yaml.safe_load((ROOT / name).read_text())["services"]["gatehouse"]
        dockerfile = (ROOT / "Dockerfile").read_text()
        for directory in IMAGE_DIRS:
            assert f"COPY {directory}/ {directory}/" in dockerfile
        paths = {s.env for s in SETTINGS if s.kind.__class__.__name__ == "FilePath"}
        named = {k: v for k, v in env.items() if k in paths and v}
        assert named, "no path at all: the test would prove nothing"
        for variable, path in named.items():
            if path.startswith("/run/secrets/"):
                assert path.removeprefix("/run/secrets/") in service["secrets"], variable
            else:
                assert not path.startswith("/") and path.split("/")[0] in IMAGE_DIRS, variable
                assert (ROOT / path).exists(), f"{variable}={path}"

    @pytest.mark.parametrize("name", COMPOSE_FILES)
    def test_the_ports_published_are_the_ports_served(self, name: str) -> None:
        """gRPC and metrics ports: served (CMD, GATEHOUSE_METRICS_LISTEN), exposed by the
        image and published by compose."""
        env = container_env(name)
        service = yaml.safe_load((ROOT / name).read_text())["services"]["gatehouse"]
        metrics_port = env["GATEHOUSE_METRICS_LISTEN"].rsplit(":", 1)[1]
        exposed = re.search(r"\nEXPOSE ([0-9 ]+)\n", (ROOT / "Dockerfile").read_text())
        assert exposed is not None
        assert {"50051", metrics_port} <= set(exposed.group(1).split())
        assert {"50051:50051", f"{metrics_port}:{metrics_port}"} <= set(service["ports"])

    def test_the_sentinel_deployment_fits_together(self) -> None:
        """compose.sentinel.yaml: gatehouse asks every Sentinel service, by the master name
        they monitor; a majority quorum of three; replicas of the primary; every data node
        fsyncs each write; WAIT 1 with a replica to spare after a failover."""
        compose = yaml.safe_load((ROOT / "compose.sentinel.yaml").read_text())
        services = compose["services"]
        env = container_env("compose.sentinel.yaml")
        url = env["GATEHOUSE_REDIS_URL"]
        found = re.fullmatch(r"redis\+sentinel://([^/]+)/([^/]+)/0", url)
        assert found is not None, url
        hosts, master = found.group(1).split(","), found.group(2)
        sentinels = sorted(n for n in services if n.startswith("sentinel-"))
        assert sorted(h.rsplit(":", 1)[0] for h in hosts) == sentinels
        assert len(sentinels) == 3
        for name in sentinels:
            script = services[name]["command"][0]
            monitor = re.search(r"sentinel monitor (\S+) (\S+) (\d+) (\d+)", script)
            assert monitor is not None
            assert monitor.group(1) == master
            assert monitor.group(2) == "redis-primary" and monitor.group(3) == "6379"
            assert len(sentinels) // 2 < int(monitor.group(4)) <= len(sentinels)
            assert "sentinel resolve-hostnames yes" in script
            assert "port 26379" in script
        assert all(h.endswith(":26379") for h in hosts)
        replicas = [n for n in services if n.startswith("redis-replica-")]
        for name in ["redis-primary", *replicas]:
            command = services[name]["command"]
            assert command[command.index("--appendfsync") + 1] == "always", name
            assert command[command.index("--replica-announce-ip") + 1] == name
        for name in replicas:
            command = services[name]["command"]
            assert command[command.index("--replicaof") + 1:][:2] == ["redis-primary", "6379"]
        wait = int(env["GATEHOUSE_REDIS_WAIT_REPLICAS"])
        assert wait == 1 and len(replicas) >= wait + 1
        out = print_config(env)
        assert out.returncode == 0, out.stderr
        assert yaml.safe_load(out.stdout)["redis_wait_replicas"] == 1

    def test_the_image_health_check_asks_readyz_also_over_tls(
            self, tmp_path: Path, tls_certs: TlsCerts) -> None:
        """The HEALTHCHECK command, run as written: exit 0 against a ready server whose gRPC
        port speaks mTLS; not 0 where nothing listens, or with the metrics port unset."""
        import grpc

        dockerfile = (ROOT / "Dockerfile").read_text()
        found = re.search(r"HEALTHCHECK .*\\\n\s*CMD (\[.*\])\n", dockerfile)
        assert found is not None
        command = json.loads(found.group(1))
        metrics = f"127.0.0.1:{free_port()}"
        creds = grpc.ssl_channel_credentials(tls_certs.ca.issued.cert_pem,
                                             tls_certs.client.key_pem, tls_certs.client.cert_pem)
        server = start_server(
            tmp_path, "--policy", "policies/coupler", "--tls-cert", str(tls_certs.server.cert),
            "--tls-key", str(tls_certs.server.key), "--tls-client-ca",
            str(tls_certs.ca.issued.cert), "--metrics-listen", metrics, credentials=creds)
        try:
            def probe(value: str | None) -> subprocess.CompletedProcess[str]:
                env = {k: v for k, v in os.environ.items()
                       if not k.startswith("GATEHOUSE_")}
                if value is not None:
                    env["GATEHOUSE_METRICS_LISTEN"] = value
                return subprocess.run(command, capture_output=True, text=True, timeout=30,
                                      env=env)

            assert probe(f"0.0.0.0:{metrics.rsplit(':', 1)[1]}").returncode == 0
        finally:
            server.stop()
        assert probe(metrics).returncode != 0
        unset = probe(None)
        assert unset.returncode != 0 and "GATEHOUSE_METRICS_LISTEN is unset" in unset.stderr
