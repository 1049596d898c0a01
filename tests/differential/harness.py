"""Running generated cases through the real runtime, in process.

A case is compiled by the real policy compiler, written to a real memory store
in two batches (one before the runtime starts, one it follows from the
changelog) and answered by the runtime's own Decisions and UsageOperations,
the objects the gRPC servicers call.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

from hypothesis import Phase

from gatehouse.graph.changes import Operation, PutObject, TouchRelationship
from gatehouse.graph.memory import MemoryGraphStore
from gatehouse.graph.model import ObjectRef, Relationship
from gatehouse.graph.schema import object_problems, relationship_problem
from gatehouse.policy.loader import compile_sources
from gatehouse.policy.model import CompiledPolicy
from gatehouse.runtime import FULLY_CONSISTENT, Runtime
from tests.differential.model import GraphCase, PolicyCase, Reference

# How many generated policy-and-graph examples each property runs; `make fuzz`
# raises it. Every example compares hundreds of single decisions.
EXAMPLES = int(os.environ.get("GATEHOUSE_DIFF_EXAMPLES", "0") or 0)

# Shrinking a failing case through a runtime takes minutes: it is off unless
# GATEHOUSE_DIFF_SHRINK=1 (the failing case is printed whole either way).
PHASES = (tuple(Phase) if os.environ.get("GATEHOUSE_DIFF_SHRINK") == "1"
          else (Phase.explicit, Phase.reuse, Phase.generate))

# Decisions compared in this process, by kind (printed in the docs' figures).
COUNTS: Counter[str] = Counter()

HELD = re.compile(r"(\w+)\.(\w+) on (\w+:\w+)")


def examples(default: int) -> int:
    return EXAMPLES or default


def compile_case(case: PolicyCase) -> CompiledPolicy:
    return compile_sources([("generated/policy.yaml", case.yaml())], "generated")


def operations(policy: CompiledPolicy, graph: GraphCase) -> list[Operation]:
    """The graph as write operations, each checked against the policy's types first."""
    ops: list[Operation] = []
    # Parents first (workspaces, then documents), as a store wants them.
    for res, rel, subj in sorted(graph.rels, key=lambda r: (r[1] != "parent",
                                                            r[0].startswith("doc:"), r)):
        if rel != "parent":
            continue
        relationship = Relationship.parse(f"{res}#{rel}@{subj}")
        assert relationship_problem(policy, relationship) is None
        ops.append(TouchRelationship(relationship))
    for key, attrs in sorted(graph.attrs.items()):
        ref = ObjectRef.parse(key)
        problems = object_problems(policy, ref, attrs)
        assert not problems, problems
        ops.append(PutObject(ref, attrs))
    for res, rel, subj in sorted(graph.rels):
        if rel == "parent":
            continue
        relationship = Relationship.parse(f"{res}#{rel}@{subj}")
        assert relationship_problem(policy, relationship) is None
        ops.append(TouchRelationship(relationship))
    return ops


async def start(policy: CompiledPolicy, ops: list[Operation]) -> Runtime:
    """A runtime over a memory store holding ``ops``: half in its start-up snapshot,
    half followed from the changelog."""
    store = MemoryGraphStore()
    half = len(ops) // 2
    if half:
        await store.write(ops[:half], rules=policy.write_rules)
    runtime = await Runtime.start(policy, store)
    if ops[half:]:
        await runtime.graph.write(ops[half:])
    await runtime.follower.ensure(FULLY_CONSISTENT, 5.0)
    return runtime


def check_trace(ref: Reference, subject: str, resource: str, trace: list[str]) -> None:
    """An explanation names only the resource's real ancestors and relationships that
    exist: every ``type.role on object`` it cites is held by the subject."""
    chain = ref.ancestors(resource)
    for line in trace:
        if line.startswith("ancestors: "):
            assert line == "ancestors: " + " -> ".join(chain.values()), (line, chain)
        if " held: " in line:
            for t, role, obj in HELD.findall(line.split(" held: ", 1)[1]):
                assert chain.get(t) == obj, (line, chain)
                assert (obj, role, subject) in ref.graph.rels, line


def resources(graph: GraphCase) -> list[str]:
    from tests.differential.model import DOCS, ORGS, WORKSPACES
    return [*ORGS, *WORKSPACES, *DOCS]


def describe(case: PolicyCase, graph: GraphCase, extra: Any = None) -> str:
    return f"\n--- policy ---\n{case.yaml()}\n--- graph ---\n{sorted(graph.rels)}\n" \
           f"{graph.attrs}\n{extra or ''}"
