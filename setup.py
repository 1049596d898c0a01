"""Build hook: generate gRPC code from protos/ before packaging."""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(Path(__file__).resolve().parent / "tools"))


class BuildWithProtos(build_py):
    def run(self) -> None:
        import genproto

        genproto.generate()
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
