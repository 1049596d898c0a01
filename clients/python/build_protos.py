"""Build step: generate this package's protobuf modules from the repository's protos/.

The modules land in ``gatehouse_client._pb`` under the proto files' own names
(``gatehouse_client/_pb/gatehouse/v1/authorization_pb2.py`` for
``gatehouse/v1/authorization.proto``), so the descriptors they register are
byte-identical to the server's: protobuf's default pool accepts an identical
file twice, and both sets of modules work in one process.

protoc writes cross-file imports by proto package (``from gatehouse.v1
import ...``), which would load the server's package. The one transformation
applied to the output maps that prefix to this package's copy; nothing else
is changed. The output is git-ignored: generated on every build, never
edited by hand, never committed.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "src" / "gatehouse_client" / "_pb"
PACKAGE = "gatehouse_client._pb"
_IMPORT = re.compile(r"^from gatehouse\.v1 import ", re.M)


def proto_root() -> Path:
    """The repository's protos/ (a build from a checkout or a git URL)."""
    for candidate in (HERE / "protos", HERE.parent.parent / "protos"):
        if (candidate / "gatehouse" / "v1").is_dir():
            return candidate
    raise SystemExit(f"gatehouse-client: no protos/ found beside {HERE} or at the repository "
                     "root; build from a checkout of the repository")


def _include_dirs() -> list[str]:
    import grpc_tools

    dirs = [str(Path(grpc_tools.__file__).parent / "_proto")]
    spec = importlib.util.find_spec("google.rpc.status_pb2")
    if spec is None or spec.origin is None:
        raise SystemExit("googleapis-common-protos is required to build (google/rpc/status.proto)")
    dirs.append(str(Path(spec.origin).parent.parent.parent))
    return dirs


def generate(out: Path = OUT) -> Path:
    """Compile every proto under protos/ into ``out`` and make it a package."""
    from grpc_tools import protoc

    root = proto_root()
    protos = sorted(root.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{root}", *(f"-I{d}" for d in _include_dirs()),
            f"--python_out={out}", f"--pyi_out={out}",
            *(str(p.relative_to(root)) for p in protos)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: " + " ".join(args))
    for path in [*out.rglob("*_pb2.py"), *out.rglob("*_pb2.pyi")]:
        text = path.read_text()
        path.write_text(_IMPORT.sub(f"from {PACKAGE}.gatehouse.v1 import ", text))
    note = '"""Generated from protos/ at build time; never edit."""\n'
    packages = {out}
    for module in out.rglob("*_pb2.py"):
        packages.update(d for d in module.parents if d.is_relative_to(out))
    for pkg in packages:
        if not (pkg / "__init__.py").exists():
            (pkg / "__init__.py").write_text(note)
    return out


if __name__ == "__main__":
    print(f"generated {generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)}")
