"""Build hook: generate the gRPC code (package ``gatehouse.v1``) from protos/.

Generation runs when this file is loaded — before setuptools discovers
packages — so every build (wheel, editable install, sdist) sees the
generated package. The output is git-ignored and never edited.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import find_namespace_packages, setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))

import genproto  # noqa: E402 - needs the path above

genproto.generate()

# Namespace discovery also picks up the data folders (lua/) as packages, so
# their files ship as package data.
setup(
    packages=find_namespace_packages(where="src", include=["gatehouse", "gatehouse.*"]),
    package_dir={"": "src"},
)
