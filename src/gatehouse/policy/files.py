"""Reading policy files within bounds, before any YAML is parsed.

A policy set is read by ``gatehouse policy validate``, at server start and on
every hot reload; a test suite by ``gatehouse policy test``. So that none of
them can be made to spend seconds and gigabytes on one edit, the number of
files and their sizes are checked from the file system first (``stat``), each
file is read at most one byte past its cap, and each document is parsed with
a cap on its values and with strict numbers (``POLICY_STRICTNESS``). A file
past a cap is a problem like any other: the set does not load.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gatehouse.errors import Problem
from gatehouse.limits import LIMITS
from gatehouse.sourcemap import Strictness

POLICY_STRICTNESS = Strictness(max_values=LIMITS.policy_file_values, plain_numbers=True)
"""How policy files and test suites are parsed (see ``gatehouse.sourcemap.Strictness``)."""


def size_text(size: int) -> str:
    """``1 MiB``, ``8 MiB``, ``11.3 MiB`` or ``900 bytes``: a size as a person reads it."""
    if size < 1 << 20:
        return f"{size} bytes"
    mib = size / (1 << 20)
    return f"{mib:.0f} MiB" if mib.is_integer() else f"{mib:.1f} MiB"


def policy_files(directory: Path) -> list[Path]:
    """The files that make up the policy set in ``directory`` (tests excluded)."""
    files = [p for p in sorted(directory.iterdir()) if p.suffix in (".yaml", ".yml")]
    return [p for p in files if not p.stem.endswith("_test") and p.is_file()]


def size_problems(folder: Path, files: Sequence[Path], what: str) -> list[Problem]:
    """Every cap the ``files`` of ``folder`` break, from their sizes alone.

    ``what`` names the files in messages ("policy files", "test suites").
    """
    if len(files) > LIMITS.policy_files:
        return [Problem(str(folder), 0, 0, "", f"holds {len(files)} {what}, more than "
                        f"{LIMITS.policy_files} (the limit of one policy set)")]
    problems: list[Problem] = []
    total = 0
    for path in files:
        try:
            size = path.stat().st_size
        except OSError as exc:
            problems.append(Problem(str(path), 0, 0, "", f"cannot read: {exc}"))
            continue
        total += size
        if size > LIMITS.policy_file_bytes:
            problems.append(_too_large(path))
    if total > LIMITS.policy_total_bytes:
        problems.append(Problem(str(folder), 0, 0, "", f"holds {size_text(total)} of {what}, "
                                f"more than {size_text(LIMITS.policy_total_bytes)} (the limit "
                                "of one policy set)"))
    return problems


def read_capped(path: Path) -> tuple[str | None, Problem | None]:
    """The text of one policy or suite file, or the problem that stops it being read.

    Reads at most one byte past ``LIMITS.policy_file_bytes``, so a file that
    grew after it was measured still cannot be read whole.
    """
    try:
        if not path.is_file():  # a FIFO or device would block or never end
            return None, Problem(str(path), 0, 0, "", "cannot read: not a regular file")
        with path.open("rb") as handle:
            data = handle.read(LIMITS.policy_file_bytes + 1)
    except OSError as exc:
        return None, Problem(str(path), 0, 0, "", f"cannot read: {exc}")
    if len(data) > LIMITS.policy_file_bytes:
        return None, _too_large(path)
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, Problem(str(path), 0, 0, "", f"cannot read: {exc}")


def _too_large(path: Path) -> Problem:
    return Problem(str(path), 1, 1, "", f"file is larger than "
                   f"{size_text(LIMITS.policy_file_bytes)} (the limit of one policy file)")
