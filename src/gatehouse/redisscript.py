"""Run a Lua script on Redis with automatic pipelining.

Calls made during one event-loop turn are sent as one pipeline: one round
trip, one AOF fsync for the lot, while Redis still runs each script
atomically and in order. A missing script (after a Redis restart) is loaded
and the affected calls retried.

With ``wait_replicas`` the pipeline ends with ``WAIT n timeout``: Redis answers
it once that many replicas have received every write before it on the
connection, so a write is acknowledged only when it would survive the
primary's loss (a failover promotes one of those replicas).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from gatehouse.errors import Unavailable

UNREACHABLE = (RedisError, OSError)
"""What a Redis call raises when the store cannot serve it (reads map all of it
to ``Unavailable``; writes first look for their script's own errors)."""


def unreachable(exc: BaseException) -> Unavailable:
    """The ``Unavailable`` for a failed Redis call, saying what an operator should check."""
    name = type(exc).__name__
    if isinstance(exc, AuthenticationError):
        return Unavailable(f"redis refused the credentials ({exc}); check the user name and "
                           "password in the Redis URL")
    if isinstance(exc, NoPermissionError) or str(exc).startswith("NOPERM"):
        return Unavailable(f"the redis user lacks a permission gatehouse needs ({exc}); "
                           "docs/redis-production.md lists the ACL rules")
    if isinstance(exc, ReadOnlyError):
        return Unavailable(f"redis answered as a read-only replica ({exc}); a failover is "
                           "under way or the URL names a replica")
    if name == "MasterNotFoundError":
        return Unavailable(f"no redis primary is known to the sentinels ({exc}); a failover "
                           "may be under way")
    return Unavailable(f"redis unreachable: {exc}")


def _noscript(result: Any) -> bool:
    return isinstance(result, NoScriptError) or (
        isinstance(result, ResponseError) and str(result).startswith("NOSCRIPT"))


class PipelinedScript:
    def __init__(self, client: Any, lua: str, wait_replicas: int = 0,
                 wait_timeout: float = 1.0) -> None:
        self.client = client
        self.wait_replicas = wait_replicas
        self.wait_ms = max(1, int(wait_timeout * 1000))
        self._script = client.register_script(lua)
        self._queue: list[tuple[list[str], asyncio.Future[Any]]] = []
        self._flush_scheduled = False

    async def __call__(self, args: list[str]) -> Any:
        """The script's reply; raises the script's error (a ResponseError) or a
        connection error."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(lambda: loop.create_task(self._flush()))
        return await fut

    async def _flush(self) -> None:
        queue, self._queue = self._queue, []
        self._flush_scheduled = False
        try:
            results = await self._pipeline(queue)
            if any(_noscript(r) for r in results):
                await self.client.script_load(self._script.script)
                retry = [item for item, r in zip(queue, results, strict=True) if _noscript(r)]
                again = iter(await self._pipeline(retry))
                results = [next(again) if _noscript(r) else r for r in results]
        except BaseException as exc:
            for _, fut in queue:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(queue, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def _pipeline(self, items: list[tuple[list[str], asyncio.Future[Any]]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for args, _ in items:
            pipe.evalsha(self._script.sha, 0, *args)
        if not self.wait_replicas:
            return list(await pipe.execute(raise_on_error=False))
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_ms)
        *results, acked = await pipe.execute(raise_on_error=False)
        if isinstance(acked, BaseException):
            raise acked
        if int(acked) < self.wait_replicas:
            short = (
                f"the write was applied on the redis primary but only {acked} of "
                f"{self.wait_replicas} replica(s) confirmed it within {self.wait_ms} ms; it "
                "may be lost if the primary fails now (check the replicas)")
            results = [r if isinstance(r, BaseException) or _noscript(r) else Unavailable(short)
                       for r in results]
        return list(results)
