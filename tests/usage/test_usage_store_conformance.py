"""One contract for recorded usage: the usage conformance suite on memory (the reference) and Redis.

The scenarios live in :mod:`gatehouse.usage.conformance`; this file only
says which backends run them.
"""

from __future__ import annotations

import asyncio

import pytest

from gatehouse.usage.conformance import (
    SCENARIOS,
    Backend,
    MemoryBackend,
    RedisBackend,
    Scenario,
    run_scenario,
    unknown_exceptions,
)
from tests.redis_server import RedisServer


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each kind of usage store, the Redis one on the session's private server."""
    if request.param == "memory":
        return MemoryBackend()
    server: RedisServer = request.getfixturevalue("redis_server")
    return RedisBackend(server.url)


class TestUsageConformance:
    @pytest.mark.parametrize("item", SCENARIOS, ids=[s.name for s in SCENARIOS])
    def test_scenario(self, backend: Backend, item: Scenario) -> None:
        """The usage store shows the behaviour the scenario's docstring states."""
        reason = backend.exceptions.get(item.name)
        if reason is not None:
            pytest.skip(f"{backend.name} differs: {reason}")
        asyncio.run(run_scenario(backend, item))

    def test_exceptions_name_real_scenarios(self, backend: Backend) -> None:
        """Every written-down exception names a scenario that exists."""
        assert unknown_exceptions(backend) == []

    def test_every_scenario_says_what_it_proves(self) -> None:
        """Each scenario has a unique name and a docstring."""
        assert len({s.name for s in SCENARIOS}) == len(SCENARIOS) >= 8
        assert all(s.doc for s in SCENARIOS)
