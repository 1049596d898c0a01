"""The README's production walkthrough (keys, a keyed server with metrics and an audit
log, calls with and without keys), run as written in a scratch folder."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, wait_serving
from tests.e2e.test_grpcurl import grpcurl

VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"


def block(mark: str) -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(re.escape(f"<!-- {mark} -->") + r"\n```sh\n(.*?)\n```", text, re.S)
    assert found is not None, f"README lost its {mark} block"
    return found.group(1)


def localise(script: str, port: int, metrics: int) -> str:
    """The script with this test's ports and the venv's gatehouse."""
    return (script.replace(".venv/bin/", f"{VENV_BIN}/")
            .replace(":50051", f":{port}").replace(":9464", f":{metrics}"))


def scratch(folder: Path) -> Path:
    """A folder that looks like the checkout (policies/, examples/) for the files the
    walkthrough makes (keys, audit log), so that the checkout itself stays clean."""
    for name in ("policies", "examples"):
        (folder / name).symlink_to(ROOT / name)
    return folder


def env() -> dict[str, str]:
    path = f"{Path(grpcurl()).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**{k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")},
            "PATH": path, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, int]]:
    folder = scratch(tmp_path_factory.mktemp("production"))
    port, metrics = free_port(), free_port()
    keys = subprocess.run(["bash", "-e", "-o", "pipefail", "-c",
                           localise(block("production-keys"), port, metrics)],
                          cwd=folder, env=env(), capture_output=True, text=True, timeout=60)
    assert keys.returncode == 0, keys.stderr
    log = folder / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", "-c", "exec " + localise(
            block("production-serve").replace("\\\n", " "), port, metrics)],
            cwd=folder, env=env(), stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        wait_serving(f"127.0.0.1:{port}", proc, log)
        yield folder, port, metrics
    finally:
        proc.terminate()
        proc.wait(30)


class TestReadmeProduction:
    def test_the_keys_file_holds_hashes_not_keys(self, served: tuple[Path, int, int]) -> None:
        """The keys block makes a keys file with both entries, and no key inside it."""
        folder, _, _ = served
        keys = (folder / "keys.yaml").read_text()
        assert "name: backend" in keys and "name: dashboard" in keys
        for name in ("backend", "dashboard"):
            key = (folder / f"{name}-key.txt").read_text().splitlines()[0]
            assert key and key not in keys

    def test_the_calls_say_what_the_readme_says(self, served: tuple[Path, int, int]) -> None:
        """Each `# =>` line of the calls block appears in what the commands print; the
        server's own log and the audit log hold no key."""
        folder, port, metrics = served
        script = block("production-calls")
        out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c",
                              localise(script, port, metrics)],
                             cwd=folder, env=env(), capture_output=True, text=True, timeout=120)
        printed = out.stdout + out.stderr
        assert out.returncode == 0, printed
        for line in script.splitlines():
            if line.startswith("# => "):
                assert line[len("# => "):] in printed, f"{line}\n{printed}"
        keys = [(folder / f"{n}-key.txt").read_text().splitlines()[0]
                for n in ("backend", "dashboard")]
        for path in (folder / "audit.log", folder / "server.log"):
            text = path.read_text()
            assert not any(key in text for key in keys), path
