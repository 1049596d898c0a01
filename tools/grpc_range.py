"""Run the transport and end-to-end tests at both ends of the allowed grpcio range.

For each end (``lowest``, ``highest``; constraints in ``tools/grpc-range/``)
this builds a throwaway venv, installs the package the way a user does — a
wheel built in pip's isolated build environment, so the gRPC code comes from
the grpcio-tools pinned in ``[build-system] requires`` — and runs
tests/test_transport.py plus the end-to-end Check, graph, serve and grpcurl
tests, the TLS tests and the Python client's tests (clients/python, installed the same
way) against it. Not part of ``make test``: it downloads and installs two
grpcio stacks. Usage: ``python tools/grpc_range.py [lowest|highest ...]``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENDS = ("lowest", "highest")
TESTS = [
    "tests/test_transport.py",
    "tests/e2e/test_check.py",
    "tests/e2e/test_graph_service.py",
    "tests/e2e/test_serve.py",
    "tests/e2e/test_grpcurl.py",
    "tests/test_tls.py",
    "tests/e2e/test_tls.py",
    # The Python client, installed from its own wheel beside the server.
    "clients/python/tests/test_client_sync.py",
    "clients/python/tests/test_client_async.py",
    "clients/python/tests/test_client_resilience.py",
]
REPORT = r"""
import re, grpc, gatehouse
from importlib.metadata import version
from pathlib import Path
from gatehouse.transport import core_supports
from gatehouse.v1 import authorization_pb2, authorization_pb2_grpc
gencode = re.search(r"Protobuf Python Version: (\S+)", Path(authorization_pb2.__file__).read_text())
names = ("grpcio", "grpcio-health-checking", "grpcio-reflection", "grpcio-status",
         "protobuf", "googleapis-common-protos")
print("  " + ", ".join(f"{n} {version(n)}" for n in names))
print("  gatehouse from", gatehouse.__file__)
print("  stubs generated for protobuf", gencode and gencode.group(1),
      "and grpcio", authorization_pb2_grpc.GRPC_GENERATED_VERSION)
print("  core transport:", core_supports(grpc.__version__) or "in the tested range")
"""


def _run(*args: str | Path, cwd: Path | None = None) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], cwd=cwd, check=True)


def _copy_tree(dest: Path) -> None:
    """The checkout as git sees it (tracked and untracked, nothing ignored), no venv or stubs."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def check_end(end: str, work: Path) -> None:
    tree, env = work / "src", work / "venv"
    _copy_tree(tree)
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", "--upgrade", "pip")
    _run(python, "-m", "pip", "install", "-q", "-c", ROOT / "tools" / "grpc-range" / f"{end}.txt",
         f"{tree}[test]", tree / "clients" / "python")
    print(f"{end}:", flush=True)
    # From outside the tree, so the installed package (not src/) is what imports.
    _run(python, "-c", REPORT, cwd=work)
    _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, cwd=tree)


def main(argv: list[str]) -> int:
    ends = argv or list(ENDS)
    for end in ends:
        if end not in ENDS:
            print(f"unknown end {end!r}; one of {', '.join(ENDS)}", file=sys.stderr)
            return 2
    failed = []
    for end in ends:
        with tempfile.TemporaryDirectory(prefix=f"gatehouse-grpc-{end}-") as tmp:
            try:
                check_end(end, Path(tmp))
            except subprocess.CalledProcessError as exc:
                print(f"{end}: FAILED ({exc})", file=sys.stderr)
                failed.append(end)
    print("grpc range:", ", ".join(f"{e} {'FAILED' if e in failed else 'ok'}" for e in ends))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
