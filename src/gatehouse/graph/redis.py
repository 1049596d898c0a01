"""The Redis store: the production source of truth.

Every write is one Lua script (``lua/write.lua``) that checks preconditions,
tenancy and policy constraints, applies the batch, bumps the revision and
appends the effective operations to the changelog stream — atomically.
Key names carry the tenant as a hash tag so one organization's keys share a
slot; the schema is documented in docs/storage.md.

Run Redis with ``appendonly yes`` and ``appendfsync always`` so that an
acknowledged write survives a crash.
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gatehouse.errors import Aborted, FailedPrecondition, GatehouseError, Unavailable
from gatehouse.graph.changes import (
    Change,
    DeleteObject,
    DeleteRelationship,
    Operation,
    PutObject,
    TenantUnchanged,
    TouchRelationship,
    WritePrecondition,
)
from gatehouse.graph.model import ObjectRecord, ObjectRef, Relationship, Snapshot
from gatehouse.graph.plan import check_batch, check_preconditions, encode_attributes
from gatehouse.graph.store import ChangelogGap
from gatehouse.policy.rules import (
    Exclusive,
    MaxSubjects,
    MinChildren,
    MinSubjects,
    PerSubject,
    Requires,
    Unique,
    WriteRules,
)
from gatehouse.redisscript import PipelinedScript

CHANGELOG_MAXLEN = 1_000_000
_NO_RULES = WriteRules({})
_ERROR = re.compile(r"GH (\w+) (\S+)\t(.*)", re.S)
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def _relationship(item: list[str]) -> Relationship:
    return Relationship(ObjectRef.from_key(item[1]), item[2], ObjectRef.from_key(item[3]))


def _decode_ops(payload: str) -> tuple[Operation, ...]:
    ops: list[Operation] = []
    for item in json.loads(payload):
        kind = item[0]
        if kind == "t":
            ops.append(TouchRelationship(_relationship(item)))
        elif kind == "d":
            ops.append(DeleteRelationship(_relationship(item)))
        elif kind == "p":
            ops.append(PutObject(ObjectRef.from_key(item[1]), json.loads(item[2])))
        elif kind == "x":
            ops.append(DeleteObject(ObjectRef.from_key(item[1])))
    return tuple(ops)


def _encode_op(op: Operation) -> list[str]:
    if isinstance(op, TouchRelationship | DeleteRelationship):
        r = op.relationship
        kind = "t" if isinstance(op, TouchRelationship) else "d"
        return [kind, r.resource.key, r.relation, r.subject.key]
    if isinstance(op, PutObject):
        return ["p", op.ref.key, encode_attributes(op.attributes)]
    return ["x", op.ref.key]


def _encode_rules(rules: WriteRules) -> str:
    """The JSON fragment for the script's "kinds", "rels", "cons" and "ar" (same for every
    write)."""
    kinds = dict(rules.scope_kind) or {"": ""}
    cons: list[Any] = []
    for c in rules.constraints:
        if isinstance(c, MaxSubjects):
            cons.append({"k": "mx", "n": c.name, "t": c.type, "r": c.relation, "m": c.limit})
        elif isinstance(c, Unique):
            cons.append({"k": "un", "n": c.name, "t": c.type, "r": c.relation})
        elif isinstance(c, Exclusive):
            cons.append({"k": "ex", "n": c.name, "l": sorted(c.left), "r": sorted(c.right)})
        elif isinstance(c, PerSubject):
            cons.append({"k": "ps", "n": c.name, "t": c.type, "r": c.relation, "m": c.limit})
        elif isinstance(c, Requires):
            cons.append({"k": "rq", "n": c.name, "l": sorted(c.relations),
                         "r": sorted(c.needs)})
        elif isinstance(c, MinSubjects):
            cons.append({"k": "ms", "n": c.name, "t": c.type, "r": c.relation, "c": c.count})
        elif isinstance(c, MinChildren):
            cons.append({"k": "mc", "n": c.name, "t": c.type, "c": c.count})
    rels = {t: sorted(r) for t, r in rules.relations.items() if r} or {"": [""]}
    attribute_rules = {t: [[r.attribute, int(r.immutable), int(r.unique)] for r in found]
                       for t, found in rules.attribute_rules.items()} or {"": []}
    # cjson decodes [] and {} alike as an empty table; {} keeps "kinds" a map.
    cons_json = json.dumps(cons, separators=(",", ":")) if cons else "{}"
    compact = (",", ":")
    return (f'"kinds":{json.dumps(kinds, separators=compact)},'
            f'"rels":{json.dumps(rels, separators=compact)},"cons":{cons_json},'
            f'"ar":{json.dumps(attribute_rules, separators=compact)}')


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisGraphStore:
    """A GraphStore in Redis (or Valkey)."""

    durable = True

    def __init__(self, url: str, prefix: str = "gh", *,
                 changelog_maxlen: int = CHANGELOG_MAXLEN) -> None:
        self.url = url
        self.prefix = prefix
        self.maxlen = changelog_maxlen
        # redis-py's response types depend on decode_responses; we always decode.
        self.client: Any = aioredis.from_url(
            url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5,
            health_check_interval=15,
        )
        # Writes and the changelog tail get no transparent retries (redis-py retries by
        # default): a write retried after its connection dropped may already have been
        # applied, and a tenancy commit retried that way aborts and decides again,
        # committing twice; a changelog read that reconnects by itself would hide a
        # restart from the follower. Reads may retry: they are idempotent.
        self._writer: Any = aioredis.from_url(
            url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5,
            health_check_interval=15, retry=Retry(NoBackoff(), 0),
        )
        # A separate connection pool for blocking XREADs so they never hold up writes.
        self._tail: Any = aioredis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, health_check_interval=15,
            retry=Retry(NoBackoff(), 0),
        )
        lua = resources.files("gatehouse.graph").joinpath("lua/write.lua").read_text()
        self._call = PipelinedScript(self._writer, lua)
        self._rules_json: dict[int, tuple[WriteRules, str]] = {}

    @property
    def description(self) -> str:
        return f"redis {redact(self.url)} (prefix {self.prefix!r})"

    def _k(self, suffix: str) -> str:
        return f"{self.prefix}:{suffix}"

    def _scoped(self, scope: str, suffix: str) -> str:
        return f"{self.prefix}:{{{scope}}}:{suffix}"

    async def close(self) -> None:
        await self.client.aclose()
        await self._writer.aclose()
        await self._tail.aclose()

    async def _drop_idle(self) -> None:
        """Close the idle pooled connections: after Redis restarted, each of them would
        fail its next command ("connection closed by server"); closed, they reconnect."""
        for client in (self.client, self._writer):
            await client.connection_pool.disconnect(inuse_connections=False)

    async def epoch(self) -> str:
        """The data set's epoch, created if Redis holds none yet."""
        try:
            meta = self._k("meta")
            if await self.client.hsetnx(meta, "epoch", uuid.uuid4().hex):
                await self.client.setnx(self._k("rev"), 0)
            return str(await self.client.hget(meta, "epoch"))
        except _UNREACHABLE as exc:
            raise Unavailable(f"redis unreachable: {exc}") from exc

    async def head_revision(self) -> int:
        try:
            return int(await self.client.get(self._k("rev")) or 0)
        except _UNREACHABLE as exc:
            raise Unavailable(f"redis unreachable: {exc}") from exc

    async def head(self) -> tuple[str, int]:
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.hget(self._k("meta"), "epoch")
            pipe.get(self._k("rev"))
            epoch, rev = await pipe.execute()
        except _UNREACHABLE as exc:
            raise Unavailable(f"redis unreachable: {exc}") from exc
        return str(epoch or ""), int(rev or 0)

    async def committed_at(self, revision: int) -> float | None:
        try:
            entries = await self.client.xrange(self._k("log"), f"{revision}-1",
                                               f"{revision}-1")
        except _UNREACHABLE as exc:
            raise Unavailable(f"redis unreachable: {exc}") from exc
        if not entries or "ts" not in entries[0][1]:
            return None
        return float(entries[0][1]["ts"])

    async def write(
        self,
        ops: Sequence[Operation],
        preconditions: Sequence[WritePrecondition] = (),
        rules: WriteRules | None = None,
    ) -> Change:
        rules = rules or _NO_RULES
        check_batch(ops)
        check_preconditions(preconditions, rules)
        cached = self._rules_json.get(id(rules))
        if cached is None or cached[0] is not rules:
            if len(self._rules_json) > 8:
                self._rules_json.clear()
            cached = (rules, _encode_rules(rules))
            self._rules_json[id(rules)] = cached
        dumps = json.dumps
        ops_json = dumps([_encode_op(op) for op in ops], separators=(",", ":"))
        pre = [[2, p.tenant, p.revision] if isinstance(p, TenantUnchanged)
               else [1 if p.must_exist else 0, p.relationship.resource.key,
                     p.relationship.relation, p.relationship.subject.key]
               for p in preconditions]
        pre_json = dumps(pre, separators=(",", ":")) if pre else "{}"
        payload = (f'{{"ops":{ops_json},"pre":{pre_json},{cached[1]},'
                   f'"maxlen":{self.maxlen}}}')
        try:
            # The last argument becomes the epoch only if Redis has none (a new or
            # wiped data set), so it must be fresh every time.
            rev, changed = await self._call([self.prefix, payload, os.urandom(12).hex()])
        except ResponseError as exc:
            raise _script_error(exc) from None
        except _UNREACHABLE as exc:
            raise Unavailable(
                f"redis unreachable ({exc}); if the connection dropped mid-call the write may "
                "or may not have been applied"
            ) from exc
        return Change(int(rev), tuple(ops) if changed else ())

    async def snapshot(self) -> Snapshot:
        try:
            epoch = await self.epoch()
            revision = int(await self.client.get(self._k("rev")) or 0)
            scopes = sorted(await self.client.smembers(self._k("scopes")))
            edges: list[tuple[str, str, str]] = []
            objects: list[ObjectRecord] = []
            intern = sys.intern
            for i in range(0, len(scopes), 200):
                pipe = self.client.pipeline(transaction=False)
                for scope in scopes[i:i + 200]:
                    pipe.smembers(self._scoped(scope, "rels"))
                    pipe.hgetall(self._scoped(scope, "objs"))
                results = await pipe.execute()
                for j in range(0, len(results), 2):
                    for text in results[j]:
                        left, _, subj = text.rpartition("@")
                        res, _, rel = left.rpartition("#")
                        edges.append((intern(res), intern(rel), intern(subj)))
                    objects.extend(ObjectRecord(ObjectRef.from_key(k), json.loads(v))
                                   for k, v in results[j + 1].items())
        except _UNREACHABLE as exc:
            raise Unavailable(f"redis unreachable: {exc}") from exc
        return Snapshot(revision, tuple(objects), (), epoch, tuple(edges))

    async def follow(self, after: int, epoch: str) -> AsyncIterator[Change]:
        log = self._k("log")
        try:
            if await self.client.hget(self._k("meta"), "epoch") != epoch:
                raise ChangelogGap("redis lost or replaced its data (epoch changed)")
            while True:
                resp = await self._tail.xread({log: f"{after}-1"}, count=1000, block=1000)
                if not resp:
                    current = await self.client.hget(self._k("meta"), "epoch")
                    if current != epoch:
                        raise ChangelogGap("redis lost or replaced its data (epoch changed)")
                    head = int(await self.client.get(self._k("rev")) or 0)
                    if head < after:
                        raise ChangelogGap(f"redis is at revision {head}, behind {after}")
                    continue
                for _stream, entries in resp:
                    for entry_id, fields in entries:
                        rev = int(entry_id.split("-", 1)[0])
                        if rev != after + 1:
                            raise ChangelogGap(
                                f"the changelog jumps from {after} to {rev} (trimmed)"
                            )
                        yield Change(rev, _decode_ops(fields["ops"]),
                                     float(fields.get("ts", 0.0)))
                        after = rev
        except _UNREACHABLE as exc:
            # The tail always hears of a restart first (its read is always pending).
            await self._drop_idle()
            raise Unavailable(f"redis unreachable: {exc}") from exc


def _script_error(exc: ResponseError) -> GatehouseError:
    m = _ERROR.search(str(exc))
    if not m:
        return Unavailable(f"redis script failed: {exc}")
    kind, name, message = m.groups()
    if kind == "ABORTED":
        return Aborted(message)
    return FailedPrecondition(name, message)
