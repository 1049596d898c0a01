"""Build hook: generate the protobuf modules (``gatehouse_client._pb``) first.

Generation runs when this file is loaded, before setuptools discovers
packages, so every build (wheel, editable install) ships them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build_protos  # noqa: E402 - needs the path above

build_protos.generate()

setup(
    packages=find_namespace_packages(where="src", include=["gatehouse_client",
                                                           "gatehouse_client.*"]),
    package_dir={"": "src"},
)
