"""AsyncClient against a real gatehouse server: the same helpers, awaited.

Each test runs its coroutine with ``asyncio.run`` (no pytest plugin needed).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from conftest import Gatehouse
from gatehouse_client import (
    AddMember,
    AsyncClient,
    Decision,
    Error,
    InvalidArgument,
    InvitationStatus,
    PermissionDenied,
    UsageEvent,
)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def run(gatehouse: Gatehouse, body: Callable[[AsyncClient], Awaitable[None]],
        **options: object) -> None:
    async def main() -> None:
        async with AsyncClient(gatehouse.address, **options) as client:  # type: ignore[arg-type]
            await body(client)

    asyncio.run(main())


class TestAsyncClient:
    def test_check_and_bulk(self, gatehouse: Gatehouse) -> None:
        """Allow, deny and a bulk call with a bad item, as in the sync client."""
        async def body(c: AsyncClient) -> None:
            assert (await c.check("user:uma", "edit", "data_flow:acme-sales-pipeline")).allowed
            denied = await c.check("user:uma", "delete", ("data_flow", "acme-sales-pipeline"),
                                   explain=True)
            assert not denied.allowed and denied.explanation is not None
            out = await c.check_bulk([("user:uma", "edit", "data_flow:acme-sales-pipeline"),
                                      ("user:uma", "edit", "spaceship:x")])
            assert [type(x) for x in out] == [Decision, Error]
            with pytest.raises(InvalidArgument, match=r"resource\.type"):
                await c.check("user:uma", "edit", "spaceship:x")

        run(gatehouse, body)

    def test_listing_is_an_async_iterator_across_pages(self, gatehouse: Gatehouse) -> None:
        """1,500 flows over pages of 1,000 and of 400 come back whole, in order."""
        async def body(c: AsyncClient) -> None:
            ws, user = uid("ws"), uid("lister")
            ids = [f"g{i:05d}" for i in range(1500)]
            await c.write_relationships(touch=[f"workspace:{ws}#parent@organization:northwind",
                                               f"workspace:{ws}#admin@user:{user}"])
            await c.write_relationships(
                touch=[f"data_flow:{i}#parent@workspace:{ws}" for i in ids[:1000]])
            await c.write_relationships(
                touch=[f"data_flow:{i}#parent@workspace:{ws}" for i in ids[1000:]])
            got = [i async for i in c.list_accessible(f"user:{user}", "view", "data_flow")]
            assert got == ids
            small = [i async for i in c.list_accessible(f"user:{user}", "view", "data_flow",
                                                        within=f"workspace:{ws}",
                                                        page_size=400)]
            assert small == ids
            rels = [r async for r in c.read_relationships("workspace", resource_id=ws)]
            assert {r.relation for r in rels} == {"parent", "admin"}

        run(gatehouse, body)

    def test_usage(self, gatehouse: Gatehouse) -> None:
        """compute_usage, record_usage (a repeat counts once) and check_limit."""
        async def body(c: AsyncClient) -> None:
            before = (await c.compute_usage("northwind", metrics=["llm_credits"])).metric(
                "llm_credits").value
            event = UsageEvent(uid("ev"), "llm_credits", 5, workspace_id="globex")
            assert [r.duplicate for r in await c.record_usage("northwind", [event])] == [False]
            assert [r.duplicate for r in await c.record_usage("northwind", [event])] == [True]
            after = await c.compute_usage("northwind", metrics=["llm_credits"])
            assert after.metric("llm_credits").value == before + 5
            limit = await c.check_limit("northwind", AddMember("globex", "x@northwind.example"))
            assert limit.plan == "pro" and limit.checks[0].metric == "users"

        run(gatehouse, body)

    def test_a_tenancy_flow(self, gatehouse: Gatehouse) -> None:
        """Create, invite, accept, check (read-your-writes), and a refusal mapped."""
        async def body(c: AsyncClient) -> None:
            t = c.tenancy
            org = uid("org")
            created = await t.create_organization("user:olivia", "Hooli", organization_id=org,
                                                  plan="pro")
            ws = created.workspace_id
            invite = await t.invite_member("user:olivia", f"workspace:{ws}",
                                           "ben@northwind.example", "guest")
            revision = await t.accept_invitation(invite.token, "user:ben")
            assert c.revision == revision
            assert (await c.check("user:ben", "view", f"workspace:{ws}")).allowed
            [inv] = await t.list_invitations("user:olivia", f"workspace:{ws}")
            assert inv.status is InvitationStatus.ACCEPTED
            assert not (await t.check_slug(org, "my-workspace")).available
            with pytest.raises(PermissionDenied):
                await t.create_workspace("user:ben", org, "Mine")

        run(gatehouse, body)

    def test_concurrent_tasks_share_one_client(self, gatehouse: Gatehouse) -> None:
        """Fifty concurrent checks on one AsyncClient all answer correctly."""
        async def body(c: AsyncClient) -> None:
            flows = ["acme-sales-pipeline", "acme-ads-daily", "globex-finance"]
            results = await asyncio.gather(*(
                c.check("user:carla", "view", f"data_flow:{flows[i % 3]}") for i in range(50)))
            # Carla administers Globex only.
            assert [r.allowed for r in results] == [flows[i % 3] == "globex-finance"
                                                    for i in range(50)]

        run(gatehouse, body)

    def test_read_your_writes_on_redis(self, redis_gatehouse: Gatehouse) -> None:
        """On Redis, each check right after a write sees it through the client's token."""
        async def body(c: AsyncClient) -> None:
            ws = uid("ws")
            await c.write_relationships(touch=[f"workspace:{ws}#parent@organization:northwind"])
            for i in range(10):
                user = f"user:arw{i}"
                await c.write_relationships(touch=[f"workspace:{ws}#guest@{user}"])
                assert (await c.check(user, "view", f"workspace:{ws}")).allowed, i
                deleted = await c.delete_relationships("workspace", resource_id=ws,
                                                       relation="guest")
                assert deleted.deleted == 1 and c.revision == deleted.revision
                assert not (await c.check(user, "view", f"workspace:{ws}")).allowed, i

        run(redis_gatehouse, body)


class TestEventLoops:
    def test_a_client_is_bound_to_one_loop_until_closed(self, gatehouse: Gatehouse) -> None:
        """Used from a second event loop while open, an AsyncClient says so; closed in its
        loop, it opens afresh in the next."""
        client = AsyncClient(gatehouse.address)

        async def check(close: bool) -> bool:
            decision = await client.check("user:uma", "edit", "data_flow:acme-sales-pipeline")
            if close:
                await client.close()
            return decision.allowed

        assert asyncio.run(check(close=True))
        assert asyncio.run(check(close=False))
        with pytest.raises(RuntimeError, match="one AsyncClient per event loop"):
            asyncio.run(check(close=False))
