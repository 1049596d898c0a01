"""Load a bootstrap data file (``serve --data FILE``) into a store: all or nothing.

A file may be far larger than one write batch, so it is written in chunks;
a chunk that failed half way through the file would leave the first ones
committed. So the whole file is checked first, as one batch, against the
policy's write rules *and the store's current state* (a snapshot), and only
then written. Data files only add (touch relationships, put objects), and
every rule a store enforces is monotone in what is added, so when the whole
file passes, every chunk (parents before children) passes too. The one
exception, ``requires``, holds too because relationships on tenant roots
(what it requires) are written before the others.

What remains: a writer that commits between the check and the chunks (at
boot, another server process or a caller of GraphService) can still make a
later chunk fail; the log then says how far the load got. Loading is
idempotent, so starting again with the same file completes it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gatehouse.errors import FailedPrecondition, GatehouseError
from gatehouse.graph.changes import Operation, PutObject, TouchRelationship
from gatehouse.graph.datafile import load_data_file
from gatehouse.graph.plan import MemoryState, plan_batch
from gatehouse.graph.store import GraphStore
from gatehouse.policy.model import PARENT, CompiledPolicy

log = logging.getLogger("gatehouse.graph.bootstrap")

CHUNK = 2000


def load_order(policy: CompiledPolicy, op: Operation) -> tuple[int, int]:
    """Parent edges first, shallowest types first, then other relationships (those on
    tenant roots first), then objects: a chunk never refers to an object a later chunk
    places, and a relationship a ``requires`` constraint needs (a role on the tenant
    root) is written no later than the ones that need it."""
    if isinstance(op, TouchRelationship):
        tdef = policy.types.get(op.relationship.resource.type)
        depth = len(tdef.lineage) if tdef else 0
        return (1 if op.relationship.relation == PARENT else 2, depth)
    tdef = policy.types.get(op.ref.type) if isinstance(op, PutObject) else None
    return (3, len(tdef.lineage) if tdef else 0)


async def check_against_store(store: GraphStore, policy: CompiledPolicy,
                              ops: list[Operation]) -> None:
    """Raise what the store would raise for ``ops`` as one batch on its current state."""
    snapshot = await store.snapshot()

    def check() -> None:
        state = MemoryState.from_snapshot(snapshot, policy.write_rules)
        plan_batch(state, ops, (), policy.write_rules)

    await asyncio.to_thread(check)


async def load_data(store: GraphStore, policy: CompiledPolicy, path: Path,
                    chunk: int = CHUNK) -> int:
    """Load a data file into ``store``; return the revision after it.

    Raises DataFileError (a bad line, with its position) or FailedPrecondition
    (a write rule or constraint, with nothing written) before writing
    anything. Idempotent: loading the same file again commits nothing.
    """
    ops = await asyncio.to_thread(load_data_file, path, policy)
    ops.sort(key=lambda op: load_order(policy, op))
    try:
        await check_against_store(store, policy, ops)
    except FailedPrecondition as exc:
        raise FailedPrecondition(exc.rule, f"data file {path}: {exc.reason}; nothing from it "
                                 "was written") from None
    revision = await store.head_revision()
    written = 0
    for i in range(0, len(ops), chunk):
        try:
            change = await store.write(ops[i:i + chunk], (), policy.write_rules)
        except GatehouseError:
            log.error("data file load interrupted; load it again to complete it", extra={
                "file": str(path), "written": written, "operations": len(ops)})
            raise
        revision = change.revision
        written = min(i + chunk, len(ops))
    log.info("data file loaded", extra={"file": str(path), "operations": len(ops),
                                        "revision": revision})
    return revision
