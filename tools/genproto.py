"""Generate the Python protobuf/gRPC modules from ``protos/``.

The generated package ``gatehouse.v1`` mirrors the proto package
``gatehouse.v1`` so that generated cross-file imports resolve without any
post-processing. The output is never edited by hand and never committed;
``setup.py`` runs this on every build and the Makefile runs it for the
development checkout.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _include_dirs() -> list[str]:
    import grpc_tools

    dirs = [str(Path(grpc_tools.__file__).parent / "_proto")]
    spec = importlib.util.find_spec("google.rpc.status_pb2")
    if spec is None or spec.origin is None:
        raise SystemExit("googleapis-common-protos is required to build (google/rpc/status.proto)")
    dirs.append(str(Path(spec.origin).parent.parent.parent))
    return dirs


def generate(out_dir: Path | None = None) -> list[Path]:
    """Compile every proto under protos/ into ``out_dir`` (default: src/)."""
    from grpc_tools import protoc

    proto_root = ROOT / "protos"
    out = out_dir or ROOT / "src"
    protos = sorted(proto_root.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_root}")
    args = ["protoc", f"-I{proto_root}", *(f"-I{d}" for d in _include_dirs())]
    args += [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    args += [str(p.relative_to(proto_root)) for p in protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: " + " ".join(args))
    generated: list[Path] = []
    for pkg in {p.parent.relative_to(proto_root) for p in protos}:
        init = out / pkg / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from protos/ at build time; never edit."""\n')
        generated.append(out / pkg)
    return generated


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    for path in generate(target):
        print(f"generated {path}")
