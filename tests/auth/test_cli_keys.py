"""`gatehouse keys new|hash` as an operator runs them, and the container files that use them."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import yaml

from gatehouse.auth.keys import load_keys
from tests.conftest import GATEHOUSE, ROOT


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
    def test_compose_mounts_a_keys_file_secret_where_the_server_reads_it(self) -> None:
        """compose.yaml parses, gives gatehouse a keys file secret, and points
        GATEHOUSE_API_KEYS at where that secret is mounted."""
        compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
        service = compose["services"]["gatehouse"]
        assert service["secrets"] == ["gatehouse_keys"]
        assert compose["secrets"]["gatehouse_keys"]["file"] == "./gatehouse-keys.yaml"
        assert service["environment"]["GATEHOUSE_API_KEYS"] == "/run/secrets/gatehouse_keys"
        assert "gatehouse keys new" in (ROOT / "compose.yaml").read_text()

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
