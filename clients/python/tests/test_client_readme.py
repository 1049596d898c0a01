"""The README's example, run as written against the embedded default's setup."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import Gatehouse

README = Path(__file__).resolve().parent.parent / "README.md"
MARK = "<!-- client-example -->"


def example() -> str:
    block = re.search(re.escape(MARK) + r"\n```python\n(.*?)\n```", README.read_text(), re.S)
    assert block is not None, "the client README lost its example"
    return block.group(1)


class TestReadmeExample:
    def test_the_example_runs_and_prints_what_the_readme_says(
            self, own_gatehouse: Gatehouse, tmp_path: Path) -> None:
        """Each `# =>` line of the example appears in what it prints, in order."""
        code = example()
        assert "localhost:50051" in code
        script = tmp_path / "example.py"
        script.write_text(code.replace("localhost:50051", own_gatehouse.address))
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        printed = out.stdout.splitlines()
        expected = [line.strip()[len("# => "):] for line in code.splitlines()
                    if line.strip().startswith("# => ")]
        assert len(expected) >= 5
        assert printed == expected
