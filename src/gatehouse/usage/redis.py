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

import asyncio
import functools
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
from gatehouse.redisscript import UNREACHABLE, BatchedScript, settle, unreachable
from gatehouse.usage.events import Counters, UsageEvent, period_of

SEP = "\x1f"
_UNREACHABLE = UNREACHABLE
_DROPPED = (RedisConnectionError, RedisTimeoutError, OSError)
"""A lost connection (not an answer from Redis): worth one more try on a new one."""


def _num(value: float) -> str:
    return repr(float(value))


def _outcome(reply: Any) -> bool | BaseException:
    """What the script's reply for one event means: duplicate or not, or the error."""
    if not isinstance(reply, BaseException):
        return bool(reply[0])
    if isinstance(reply, ReadOnlyError | NoPermissionError):  # the server's state
        return unreachable(reply)
    if isinstance(reply, ResponseError):
        # This event only (its neighbours in the group are answered on their own);
        # nothing of it was recorded, and its id is not marked seen.
        return Unavailable(f"redis refused the event: {reply}")
    if isinstance(reply, _UNREACHABLE):
        return unreachable(reply)
    return reply


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
        self._retrying: set[asyncio.Future[None]] = set()

    async def record(self, event: UsageEvent, window_seconds: int) -> bool:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.record_soon(event, window_seconds, functools.partial(settle, done))
        return await done

    def record_soon(self, event: UsageEvent, window_seconds: int,
                    done: Callable[[bool | BaseException], None]) -> None:
        m = event.metric
        fields = [event.organization, event.event_id, str(window_seconds),
                  period_of(m, event.event_time), event.workspace, m.name, m.aggregate,
                  _num(event.amount), event.dimension, _num(event.event_time),
                  _num(LIMITS.counter_max)]
        item = json.dumps(fields)

        def again(reply: Any) -> None:
            done(_outcome(reply))

        def first(reply: Any) -> None:
            if isinstance(reply, _DROPPED):
                # A pooled connection that outlived a Redis restart fails its next
                # command (retries are off): close the idle ones and send once more.
                # Safe to repeat: an event is recorded once per id.
                task = asyncio.ensure_future(self._reconnect_then(item, again))
                self._retrying.add(task)
                task.add_done_callback(self._retrying.discard)
                return
            done(_outcome(reply))

        self._record.submit(item, first)

    async def _reconnect_then(self, item: str, done: Callable[[Any], None]) -> None:
        try:
            await self.client.connection_pool.disconnect(inuse_connections=False)
        except Exception as exc:
            done(exc)
            return
        self._record.submit(item, done)

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
