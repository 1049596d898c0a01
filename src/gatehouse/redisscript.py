"""Run a Lua script on Redis with automatic pipelining.

Calls made during one event-loop turn are sent as one pipeline: one round
trip, one AOF fsync for the lot, while Redis still runs each script
atomically and in order. A missing script (after a Redis restart) is loaded
and the affected calls retried.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import NoScriptError, ResponseError


def _noscript(result: Any) -> bool:
    return isinstance(result, NoScriptError) or (
        isinstance(result, ResponseError) and str(result).startswith("NOSCRIPT"))


class PipelinedScript:
    def __init__(self, client: Any, lua: str) -> None:
        self.client = client
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
        return list(await pipe.execute(raise_on_error=False))
