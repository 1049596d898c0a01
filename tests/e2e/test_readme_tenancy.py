"""The README's tenancy walkthrough, run as written against `make serve`'s setup."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerProcess, start_server
from tests.e2e.test_grpcurl import grpcurl

MARK = "<!-- tenancy-walkthrough -->"


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(re.escape(MARK) + r"\n```sh\n(.*?)\n```", text, re.S)
    assert block is not None, "README lost its tenancy walkthrough"
    return block.group(1)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("readme"), "--policy", "policies/coupler",
                          "--data", "examples/coupler.data.yaml")
    yield server
    server.stop()


class TestReadmeTenancy:
    def test_the_walkthrough_runs_and_says_what_the_readme_says(self,
                                                                sample: ServerProcess) -> None:
        """Each `# =>` line of the README's block appears in what the commands print."""
        script = walkthrough().replace("localhost:50051", sample.address)
        env = {**os.environ,
               "PATH": f"{Path(grpcurl()).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        printed = out.stdout + out.stderr
        assert '"organization_id": "globex"' in printed
        for line in walkthrough().splitlines():
            if line.startswith("# => "):
                expected = line[len("# => "):].split("...")[0]
                assert expected in printed, (expected, printed)
