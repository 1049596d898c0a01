"""Run a Lua script on Redis with group commit.

``BatchedScript``: the calls made while the previous script call is on its
way (or, when none is, during one event-loop turn) become ONE script call
carrying all their items: one round trip, one AOF fsync, one script start
and one reply to parse for the lot. One call at a time is in flight, so the
busier the server, the larger the groups (Redis runs scripts one after the
other anyway). The
script handles its items in order, each on its own (a failing item gets its
own error and does not fail its neighbours), and answers one reply per
item. Each caller is answered only after Redis has answered the whole call,
so nothing is acknowledged before it is in Redis (and, with ``appendfsync
always``, in the AOF).

A missing script (after a Redis restart or a SCRIPT FLUSH) is loaded and
the call retried. A connection error fails every caller of the group: none
of them is acknowledged, and each is told its write may or may not have been
applied.

With ``wait_replicas`` the group's script call(s) are followed, in the same
pipeline, by ``WAIT n timeout``: Redis answers it once that many replicas have
received every write before it on the connection, so an item is acknowledged
only when it would survive the primary's loss (a failover promotes one of those
replicas). When fewer replicas confirm in time, every item the script applied
is answered ``Unavailable`` saying so (it is on the primary, but not yet safe);
an item the script refused keeps its own error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
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

log = logging.getLogger("gatehouse.redis")

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

MAX_ITEMS = 256
MAX_BYTES = 128 << 10
"""Items, and bytes of items, per script call (an item larger than that goes alone); a
larger group is sent as several calls in one pipeline, so that one call never holds
Redis (single-threaded: every other client waits meanwhile) much longer than the
separate calls would have one after the other."""

ITEM_OK = "ok"
ITEM_ERROR = "err"
"""Each item's reply is ``{"ok", value...}`` or ``{"err", message}``."""

LUA_RUN_ITEMS = """
-- One reply per item: {"ok", values...} or {"err", message}; an item that
-- raises (a failed check or a Redis error) fails alone.
local function run_items(first, one)
  local out = {}
  for i = first, #ARGV do
    local ok, r = pcall(one, ARGV[i])
    if not ok then
      if type(r) == "table" and r.err then r = r.err end
      out[#out + 1] = {"err", tostring(r)}
    elseif type(r) == "table" and r.err then
      out[#out + 1] = {"err", r.err}
    elseif type(r) == "table" then
      local reply = {"ok"}
      for _, v in ipairs(r) do reply[#reply + 1] = v end
      out[#out + 1] = reply
    else
      out[#out + 1] = {"ok", r}
    end
  end
  return out
end
"""
"""Prepended to every batched script: ``return run_items(first_item_argv, one)``."""


Done = Callable[[Any], None]
"""Called once with an item's reply values (a list) or the exception that ends it."""
_Entry = tuple[str, Done, tuple[str, ...]]


def settle(fut: asyncio.Future[Any], result: Any) -> None:
    """Resolve ``fut`` with ``result`` (an exception: raise it), unless its waiter left."""
    if fut.done():  # its caller went away (cancelled)
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


def _answer(done: Done, result: Any) -> None:
    """Hand one item its result; a failing callback must not starve the rest of the group."""
    try:
        done(result)
    except Exception:
        log.exception("a group commit callback failed")


def _noscript(result: Any) -> bool:
    return isinstance(result, NoScriptError) or (
        isinstance(result, ResponseError) and str(result).startswith("NOSCRIPT"))


def _item_error(message: str) -> ResponseError:
    """An item's error as the exception redis-py raises for that reply (so that a
    read-only replica or a missing ACL permission reads as such: ``unreachable``)."""
    if message.startswith("READONLY"):
        return ReadOnlyError(message)
    if message.startswith("NOPERM") or "ACL failure" in message:  # a denied command in a script
        return NoPermissionError(message)
    return ResponseError(message)


class BatchedScript:
    """Group commit of one Lua script's items.

    ``head()`` gives the leading arguments of each script call (the same for
    every item of a group: a key prefix, say); each ``await script(item)``
    adds one argument after them and returns that item's reply values (a
    list), or raises ``ResponseError`` with the item's own error message.
    """

    def __init__(self, client: Any, lua: str, head: Callable[[], list[str]],
                 max_items: int = MAX_ITEMS, max_bytes: int = MAX_BYTES,
                 wait_replicas: int = 0, wait_timeout: float = 1.0) -> None:
        self.client = client
        self.wait_replicas = wait_replicas
        self.wait_ms = max(1, int(wait_timeout * 1000))
        self._script = client.register_script(LUA_RUN_ITEMS + lua)
        self._head = head
        self._max = max_items
        self._max_bytes = max_bytes
        self._queue: list[_Entry] = []
        self._flush_scheduled = False
        self._sending = False
        self._task: asyncio.Task[None] | None = None
        self.calls = 0
        """Script calls sent so far (each carries one or more items); for tests and stats."""

    @property
    def lua(self) -> str:
        return str(self._script.script)

    async def __call__(self, item: str) -> list[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self.submit(item, functools.partial(settle, fut))
        return await fut

    def submit(self, item: str, done: Done, head: tuple[str, ...] = ()) -> None:
        """Add ``item`` to the next group; ``done(reply values or exception)`` is called
        once, on the loop, when Redis has answered the whole call (no task, no future:
        the short path of a write answers its caller from ``done``). Loop thread only.

        ``head``: arguments the script reads once per call, after ``head()``'s (the
        write rules, say, decoded once instead of once per item); items with
        different heads never share a call."""
        self._queue.append((item, done, head))
        if not self._flush_scheduled and not self._sending:
            self._flush_scheduled = True
            loop = asyncio.get_running_loop()
            loop.call_soon(self._start_flush, loop)

    def _start_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flush_scheduled = False
        if self._sending or not self._queue:
            return
        queue, self._queue = self._queue, []
        self._sending = True
        self._task = loop.create_task(self._flush(queue))  # held: a task is weakly referenced

    async def _flush(self, queue: list[_Entry]) -> None:
        try:
            await self._flush_group(queue)
        finally:
            self._sending = False
            if self._queue and not self._flush_scheduled:  # what queued up meanwhile
                self._flush_scheduled = True
                loop = asyncio.get_running_loop()
                loop.call_soon(self._start_flush, loop)

    async def _flush_group(self, queue: list[_Entry]) -> None:
        groups = self._split(queue)
        try:
            replies = await self._send(groups)
            if any(_noscript(r) for r in replies):
                await self.client.script_load(self._script.script)
                retry = [g for g, r in zip(groups, replies, strict=True) if _noscript(r)]
                again = iter(await self._send(retry))
                replies = [next(again) if _noscript(r) else r for r in replies]
        except BaseException as exc:
            for _, done, _ in queue:
                _answer(done, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for group, reply in zip(groups, replies, strict=True):
            if isinstance(reply, BaseException):
                for _, done, _ in group:
                    _answer(done, reply)
                continue
            for k, (_, done, _) in enumerate(group):
                if k >= len(reply):  # fewer replies than items: never leave a caller waiting
                    _answer(done, ResponseError("the script gave no reply for this item"))
                    continue
                answer = reply[k]
                if isinstance(answer, BaseException):  # applied, but too few replicas confirmed
                    _answer(done, answer)
                elif answer[0] == ITEM_OK:
                    _answer(done, answer[1:])
                else:
                    _answer(done, _item_error(answer[1]))

    def _split(self, queue: list[_Entry]) -> list[list[_Entry]]:
        groups: list[list[_Entry]] = [[]]
        size = 0
        for entry in queue:
            if groups[-1] and (len(groups[-1]) >= self._max
                               or size + len(entry[0]) > self._max_bytes
                               or entry[2] != groups[-1][0][2]):
                groups.append([])
                size = 0
            groups[-1].append(entry)
            size += len(entry[0])
        return groups

    async def _send(self, groups: list[list[_Entry]]) -> list[Any]:
        head = self._head()
        self.calls += len(groups)
        if len(groups) == 1 and not self.wait_replicas:
            try:
                return [await self.client.evalsha(self._script.sha, 0, *head, *groups[0][0][2],
                                                  *(entry[0] for entry in groups[0]))]
            except ResponseError as exc:
                return [exc]
        pipe = self.client.pipeline(transaction=False)
        for group in groups:
            pipe.evalsha(self._script.sha, 0, *head, *group[0][2], *(entry[0] for entry in group))
        if not self.wait_replicas:
            return list(await pipe.execute(raise_on_error=False))
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_ms)
        *replies, acked = await pipe.execute(raise_on_error=False)
        if isinstance(acked, BaseException):
            raise acked
        if int(acked) >= self.wait_replicas:
            return list(replies)
        short = (
            f"the write was applied on the redis primary but only {acked} of "
            f"{self.wait_replicas} replica(s) confirmed it within {self.wait_ms} ms; it "
            "may be lost if the primary fails now (check the replicas)")
        # An applied item is not yet safe: its caller is told so; a refused item
        # changed nothing and keeps its own error.
        return [r if isinstance(r, BaseException)
                else [Unavailable(short) if a[0] == ITEM_OK else a for a in r]
                for r in replies]
