"""Recorded usage in Redis: one atomic script step per event (dedup + fold).

Events recorded in the same event-loop turn (concurrent RecordUsage calls)
share one script call (``BatchedScript``: group commit); each still gets its
own answer or error.

Keys, per organization (hash tag = the organization key, like the graph's):

  P:{organization:acme}:ev:<event id>   set NX with EX = the dedup window
  P:{organization:acme}:u:<period>      hash of counters; fields joined by \\x1f:
      v  <ws> <metric>          number (count, sum, max)
      d  <ws> <metric> <dim>    "1" (distinct)
      l  <ws> <metric> <dim>    "<event time> <amount>" (latest)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gatehouse.errors import Unavailable
from gatehouse.limits import LIMITS
from gatehouse.redisconn import RedisOptions, open_client, parse_url
from gatehouse.redisscript import UNREACHABLE, BatchedScript, unreachable
from gatehouse.usage.events import Counters, UsageEvent, period_of

SEP = "\x1f"
_UNREACHABLE = UNREACHABLE
_DROPPED = (RedisConnectionError, RedisTimeoutError, OSError)
"""A lost connection (not an answer from Redis): worth one more try on a new one."""


def _num(value: float) -> str:
    return repr(float(value))


class RedisUsageStore:
    def __init__(self, url: str, prefix: str = "gh", *,
                 options: RedisOptions | None = None) -> None:
        """``url`` in any form ``gatehouse.redisconn`` accepts (InvalidArgument if not)."""
        options = options or RedisOptions()
        self.prefix = prefix
        self.client: Any = open_client(parse_url(url), options)
        lua = resources.files("gatehouse.usage").joinpath("lua/record.lua").read_text()
        self._record = BatchedScript(self.client, lua, lambda: [prefix],
                                     wait_replicas=options.wait_replicas,
                                     wait_timeout=options.wait_timeout)

    async def record(self, event: UsageEvent, window_seconds: int) -> bool:
        m = event.metric
        fields = [event.organization, event.event_id, str(window_seconds),
                  period_of(m, event.event_time), event.workspace, m.name, m.aggregate,
                  _num(event.amount), event.dimension, _num(event.event_time),
                  _num(LIMITS.counter_max)]

        async def once() -> bool:
            return bool((await self._record(json.dumps(fields)))[0])

        try:
            return bool(await self._again(once))
        except (ReadOnlyError, NoPermissionError) as exc:  # the server's state, not the event's
            raise unreachable(exc) from None
        except ResponseError as exc:
            # This event only (its neighbours in the group are answered on their own);
            # nothing of it was recorded, and its id is not marked seen.
            raise Unavailable(f"redis refused the event: {exc}") from None
        except _UNREACHABLE as exc:
            raise unreachable(exc) from exc

    async def _again(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call()``, once more after a dropped connection: the pooled connections that
        outlived a Redis restart each fail their next command, so they are closed (to
        reconnect) and the call repeated. Both calls here are safe to repeat: counters
        are read, and an event is recorded once per id (a repeat finds it recorded).
        Redis's answers (errors included) are not repeated."""
        try:
            return await call()
        except _DROPPED:
            await self.client.connection_pool.disconnect(inuse_connections=False)
        return await call()

    async def counters(self, organization: str, periods: Mapping[str, str]) -> dict[str, Counters]:
        names = list(periods)

        async def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for period in names:
                pipe.hgetall(f"{self.prefix}:{{{organization}}}:u:{period}")
            return list(await pipe.execute())

        try:
            results = await self._again(read)
        except _UNREACHABLE as exc:
            raise unreachable(exc) from exc
        out: dict[str, Counters] = {}
        for period, fields in zip(names, results, strict=True):
            c = Counters()
            for key, value in fields.items():
                parts = key.split(SEP)
                if parts[0] == "v" and len(parts) == 3:
                    c.values[(parts[1], parts[2])] = float(value)
                elif parts[0] == "d" and len(parts) == 4:
                    c.distinct.setdefault((parts[1], parts[2]), set()).add(parts[3])
                elif parts[0] == "l" and len(parts) == 4:
                    t, _, amount = value.partition(" ")
                    c.latest.setdefault((parts[1], parts[2]), {})[parts[3]] = \
                        (float(t), float(amount))
            out[period] = c
        return out

    async def close(self) -> None:
        await self.client.aclose()
