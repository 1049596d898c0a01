"""Decisions: pure functions of (compiled policy, graph index, request).

No I/O, YAML or protobuf here; everything the engine reads was precomputed.
"""

from gatehouse.engine.check import Explanation, check, explain, validate_request

__all__ = ["Explanation", "check", "explain", "validate_request"]
