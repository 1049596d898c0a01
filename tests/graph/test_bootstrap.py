"""Loading a data file into a store (`serve --data`): all or nothing, whatever its size."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gatehouse.errors import FailedPrecondition
from gatehouse.graph.bootstrap import load_data
from gatehouse.graph.changes import TouchRelationship
from gatehouse.graph.conformance import Backend, MemoryBackend, RedisBackend
from gatehouse.graph.model import Relationship
from gatehouse.graph.store import GraphStore
from gatehouse.policy.loader import compile_sources, load_policy
from gatehouse.policy.model import CompiledPolicy
from tests.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]
POLICY: CompiledPolicy = load_policy(REPO / "policies" / "coupler")
EXAMPLE = REPO / "examples" / "coupler.data.yaml"


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each kind of store, the Redis one on the session's private server."""
    if request.param == "memory":
        return MemoryBackend()
    server: RedisServer = request.getfixturevalue("redis_server")
    return RedisBackend(server.url)


def on_store(backend: Backend, body: Callable[[GraphStore], Awaitable[None]]) -> None:
    async def main() -> None:
        async with backend.open() as store:
            await body(store)

    asyncio.run(main())


def big_file(tmp_path: Path, workspaces: int, tail: str = "") -> Path:
    """Many workspaces of one organization, each with a user, then ``tail``."""
    lines = ["relationships:"]
    for i in range(workspaces):
        lines += [f"  - workspace:w{i}#parent@organization:o",
                  f"  - workspace:w{i}#user@user:u{i}"]
    path = tmp_path / "data.yaml"
    path.write_text("\n".join(lines) + "\n" + tail)
    return path


class TestAllOrNothing:
    def test_a_violation_late_in_a_large_file_writes_nothing(self, backend: Backend,
                                                             tmp_path: Path) -> None:
        """A constraint broken by the file's last lines refuses the file before any chunk."""
        path = big_file(tmp_path, 300, "  - organization:o#ai_workspace@workspace:w1\n"
                                       "  - organization:o#ai_workspace@workspace:w2\n")

        async def body(store: GraphStore) -> None:
            with pytest.raises(FailedPrecondition) as info:
                await load_data(store, POLICY, path, chunk=50)
            assert info.value.rule == "one_ai_workspace"
            assert "nothing from it was written" in info.value.reason
            assert await store.head_revision() == 0
            assert (await store.snapshot()).all_relationships() == []

        on_store(backend, body)

    def test_a_file_that_conflicts_with_the_stored_graph_writes_nothing(
            self, backend: Backend, tmp_path: Path) -> None:
        """The file is checked against what the store already holds, not only against itself."""
        path = big_file(tmp_path, 100, "  - organization:o#ai_workspace@workspace:w7\n")

        async def body(store: GraphStore) -> None:
            first = [TouchRelationship(Relationship.parse(t)) for t in (
                "workspace:w0#parent@organization:o", "organization:o#ai_workspace@workspace:w0")]
            await store.write(first, (), POLICY.write_rules)
            before = await store.snapshot()
            with pytest.raises(FailedPrecondition) as info:
                await load_data(store, POLICY, path, chunk=20)
            assert info.value.rule == "one_ai_workspace"
            assert await store.head_revision() == 1
            assert (await store.snapshot()).all_relationships() == before.all_relationships()

        on_store(backend, body)

    def test_a_relationship_across_tenants_refuses_the_file(self, backend: Backend,
                                                            tmp_path: Path) -> None:
        """A file linking two organizations' objects is refused whole (tenant-boundary)."""
        path = big_file(tmp_path, 60, "  - workspace:x#parent@organization:other\n"
                                      "  - organization:other#ai_workspace@workspace:w3\n")

        async def body(store: GraphStore) -> None:
            with pytest.raises(FailedPrecondition) as info:
                await load_data(store, POLICY, path, chunk=10)
            assert info.value.rule == "tenant-boundary"
            assert await store.head_revision() == 0

        on_store(backend, body)

    def test_the_example_loads_in_chunks_and_again_commits_nothing(self,
                                                                   backend: Backend) -> None:
        """The shipped example loads in small chunks; loading it again changes nothing."""
        async def body(store: GraphStore) -> None:
            revision = await load_data(store, POLICY, EXAMPLE, chunk=7)
            assert revision > 1
            snap = await store.snapshot()
            assert await load_data(store, POLICY, EXAMPLE, chunk=7) == revision
            again = await store.snapshot()
            assert again.all_relationships() == snap.all_relationships()
            assert Relationship.parse("organization:northwind#owner@user:olivia") in \
                again.all_relationships()

        on_store(backend, body)


REQUIRES = compile_sources([("policy.yaml", """\
types:
  user: {subject: true}
  organization: {roles: [member]}
  workspace: {parent: organization, roles: [member]}
constraints:
  members_are_org_members:
    requires: {relations: [workspace.member], needs: [organization.member]}
""")], "requires")


class TestChunkOrder:
    def test_what_requires_needs_is_written_in_an_earlier_chunk(self, backend: Backend,
                                                                 tmp_path: Path) -> None:
        """A file listing workspace members before their organization memberships loads in
        small chunks: roles on the tenant root are written first."""
        lines = ["relationships:"]
        lines += [f"  - workspace:w{i}#parent@organization:o" for i in range(3)]
        lines += [f"  - workspace:w{i % 3}#member@user:u{i}" for i in range(30)]
        lines += [f"  - organization:o#member@user:u{i}" for i in range(30)]
        path = tmp_path / "data.yaml"
        path.write_text("\n".join(lines) + "\n")

        async def body(store: GraphStore) -> None:
            await load_data(store, REQUIRES, path, chunk=8)
            assert len((await store.snapshot()).all_relationships()) == 63

        on_store(backend, body)
