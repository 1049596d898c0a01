"""The Redis store: the production source of truth.

Every write batch is one atomic step of a Lua script (``lua/write.lua``) that
checks preconditions, tenancy and policy constraints, applies the batch, bumps
the revision and appends the effective operations to the changelog stream.
Batches written in the same event-loop turn share one script call (group
commit, ``gatehouse.redisscript.BatchedScript``); each is committed or refused
on its own.
Key names carry the tenant as a hash tag so one organization's keys share a
slot; the schema is documented in docs/storage.md.

Run Redis with ``appendonly yes`` and ``appendfsync always`` so that an
acknowledged write survives a crash.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from typing import Any

from redis.exceptions import ResponseError

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
from gatehouse.redisconn import RedisOptions, open_client, parse_url, redact
from gatehouse.redisscript import UNREACHABLE, BatchedScript, settle, unreachable

CHANGELOG_MAXLEN = 1_000_000
_NO_RULES = WriteRules({})
_ERROR = re.compile(r"GH (\w+) (\S+)\t(.*)", re.S)
_UNREACHABLE = UNREACHABLE
# How many (revision, entry id) pairs of the changelog a store remembers having
# handed out, to prove that a later follow continues the same history.
_REMEMBERED = 1024


_compact = json.JSONEncoder(separators=(",", ":")).encode
"""``json.dumps(value, separators=(",", ":"))`` without a new encoder per call."""

_REFS: dict[str, ObjectRef] = {}
"""References read back from the changelog, by key: changes name the same few objects
(a workspace, a busy user) again and again. Bounded; its values are immutable, so
readers in several threads at worst miss and build one again."""


def _ref(key: str) -> ObjectRef:
    ref = _REFS.get(key)
    if ref is None:
        if len(_REFS) >= 65_536:
            _REFS.clear()
        ref = _REFS[key] = ObjectRef.from_key(key)
    return ref


def _relationship(item: list[str]) -> Relationship:
    return Relationship(_ref(item[1]), item[2], _ref(item[3]))


def _decode_ops(payload: str) -> tuple[Operation, ...]:
    ops: list[Operation] = []
    for item in json.loads(payload):
        kind = item[0]
        if kind == "t":
            ops.append(TouchRelationship(_relationship(item)))
        elif kind == "d":
            ops.append(DeleteRelationship(_relationship(item)))
        elif kind == "p":
            ops.append(PutObject(_ref(item[1]), json.loads(item[2])))
        elif kind == "x":
            ops.append(DeleteObject(_ref(item[1])))
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
    """The JSON of the script's write rules: "kinds", "rels", "cons" and "ar" (the same
    for every write under one policy; one script argument per call)."""
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
    return (f'{{"kinds":{json.dumps(kinds, separators=compact)},'
            f'"rels":{json.dumps(rels, separators=compact)},"cons":{cons_json},'
            f'"ar":{json.dumps(attribute_rules, separators=compact)}}}')


class RedisGraphStore:
    """A GraphStore in Redis (or Valkey)."""

    durable = True

    def __init__(self, url: str, prefix: str = "gh", *,
                 changelog_maxlen: int = CHANGELOG_MAXLEN,
                 options: RedisOptions | None = None) -> None:
        """``url`` in any form ``gatehouse.redisconn`` accepts (InvalidArgument if not)."""
        options = options or RedisOptions()
        target = parse_url(url)
        self.url = url
        self.prefix = prefix
        self.maxlen = changelog_maxlen
        # redis-py's response types depend on decode_responses; we always decode.
        self.client: Any = open_client(target, options)
        # A separate connection pool for blocking XREADs so they never hold up writes.
        # Neither pool retries by itself (redisconn): a write script resent after a
        # dropped connection may apply twice, and a changelog read that reconnected
        # on its own would hide a restart from the follower.
        self._tail: Any = open_client(target, options, blocking_reads=True)
        self._tail.set_response_callback("XREAD", _as_sent)
        lua = resources.files("gatehouse.graph").joinpath("lua/write.lua").read_text()
        # Group commit: the batches written in one event-loop turn share one script
        # call; each is still its own atomic step with its own revision. The epoch
        # argument becomes the epoch only if Redis has none (a new or wiped data
        # set), so it is fresh for every call.
        self._call = BatchedScript(self.client, lua,
                                   lambda: [self.prefix, os.urandom(12).hex()],
                                   wait_replicas=options.wait_replicas,
                                   wait_timeout=options.wait_timeout)
        self._rules_json: dict[int, tuple[WriteRules, str]] = {}
        # revision -> the id ("n") of the changelog entry at that revision, as this
        # store read it (from a snapshot or a follow). A later follow from one of
        # those revisions checks that the changelog it reads continues that entry:
        # after a failover to a replica that missed the last writes, or a restore
        # from an older copy, the same revision numbers name different writes.
        self._seen: dict[int, str] = {}

    @property
    def description(self) -> str:
        return f"redis {redact(self.url)} (prefix {self.prefix!r})"

    def _k(self, suffix: str) -> str:
        return f"{self.prefix}:{suffix}"

    def _scoped(self, scope: str, suffix: str) -> str:
        return f"{self.prefix}:{{{scope}}}:{suffix}"

    async def close(self) -> None:
        await self.client.aclose()
        await self._tail.aclose()

    async def _drop_idle(self) -> None:
        """Close the idle connections of the command pool: after Redis restarted (or a
        failover moved the primary) each of them would fail its next command, retries
        being off; closed, they reconnect (through the Sentinels, to the new primary)."""
        await self.client.connection_pool.disconnect(inuse_connections=False)

    async def epoch(self) -> str:
        """The data set's epoch, created if Redis holds none yet."""
        try:
            meta = self._k("meta")
            if await self.client.hsetnx(meta, "epoch", uuid.uuid4().hex):
                await self.client.setnx(self._k("rev"), 0)
            return str(await self.client.hget(meta, "epoch"))
        except _UNREACHABLE as exc:
            raise unreachable(exc) from exc

    async def head_revision(self) -> int:
        try:
            return int(await self.client.get(self._k("rev")) or 0)
        except _UNREACHABLE as exc:
            raise unreachable(exc) from exc

    async def head(self) -> tuple[str, int]:
        # No MULTI (the documented ACL user needs none): the epoch is read last, so a
        # wipe between the two reads shows as a changed epoch, never as the old
        # epoch with the new data set's revision (see check_history).
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self._k("rev"))
            pipe.hget(self._k("meta"), "epoch")
            rev, epoch = await pipe.execute()
        except _UNREACHABLE as exc:
            raise unreachable(exc) from exc
        return str(epoch or ""), int(rev or 0)

    async def check_history(self, after: int, epoch: str) -> None:
        """One round trip: the head, the id ("n") of the changelog entry at ``after``
        (compared with the id this object read there, ``_seen``) and the epoch.

        One pipeline, not a transaction (the documented ACL user has no MULTI): the
        epoch is read last, so if Redis lost its data at any point during the three
        reads the epoch differs and the check fails; if it still matches, the other
        two reads came from the same data set."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self._k("rev"))
            pipe.xrange(self._k("log"), f"{after}-1", f"{after}-1")
            pipe.hget(self._k("meta"), "epoch")
            head_text, found, current = await pipe.execute()
        except _UNREACHABLE as exc:
            await self._drop_idle()
            raise unreachable(exc) from exc
        if current != epoch:
            raise ChangelogGap("redis lost or replaced its data (epoch changed)")
        head = int(head_text or 0)
        if head < after:
            raise ChangelogGap(f"redis is at revision {head}, behind {after} (it went back: "
                               "a restart from a shorter AOF, or a failover lost writes)")
        previous = self._seen.get(after)
        if previous is not None and (not found or found[0][1].get("n", previous) != previous):
            raise ChangelogGap(
                f"redis no longer holds revision {after} as this process read it (it went "
                "back and wrote other changes under the same numbers: a restart from a "
                "shorter AOF, a failover to a replica that missed the last writes, or a "
                "restore from an older copy)")

    async def write(
        self,
        ops: Sequence[Operation],
        preconditions: Sequence[WritePrecondition] = (),
        rules: WriteRules | None = None,
    ) -> Change:
        done: asyncio.Future[Change] = asyncio.get_running_loop().create_future()
        self.write_soon(ops, preconditions, rules, functools.partial(settle, done))
        return await done

    def write_soon(
        self,
        ops: Sequence[Operation],
        preconditions: Sequence[WritePrecondition],
        rules: WriteRules | None,
        done: Callable[[Change | BaseException], None],
    ) -> None:
        try:
            payload, rules_json = self._payload(ops, preconditions, rules)
        except Exception as exc:
            done(exc)
            return

        def answered(reply: Any) -> None:
            if isinstance(reply, BaseException):
                done(_write_failure(reply) if isinstance(reply, Exception) else reply)
                return
            try:
                change = _change(reply, ops)
            except Exception as exc:  # not the script's reply shape: fail, never hang
                done(exc)
                return
            done(change)

        self._call.submit(payload, answered, (rules_json,))

    def _payload(self, ops: Sequence[Operation], preconditions: Sequence[WritePrecondition],
                 rules: WriteRules | None) -> tuple[str, str]:
        """The script argument of one batch (after the checks that need no Redis), and
        the JSON of the write rules (one argument per script call)."""
        rules = rules or _NO_RULES
        check_batch(ops)
        check_preconditions(preconditions, rules)
        cached = self._rules_json.get(id(rules))
        if cached is None or cached[0] is not rules:
            if len(self._rules_json) > 8:
                self._rules_json.clear()
            cached = (rules, _encode_rules(rules))
            self._rules_json[id(rules)] = cached
        ops_json = _compact([_encode_op(op) for op in ops])
        pre = [[2, p.tenant, p.revision] if isinstance(p, TenantUnchanged)
               else [1 if p.must_exist else 0, p.relationship.resource.key,
                     p.relationship.relation, p.relationship.subject.key]
               for p in preconditions]
        pre_json = _compact(pre) if pre else "{}"
        # "n": this batch's changelog entry id, random so that another history (a
        # promoted replica that missed writes) never repeats it.
        return (f'{{"ops":{ops_json},"pre":{pre_json},'
                f'"maxlen":{self.maxlen},"n":"{os.urandom(12).hex()}"}}', cached[1])

    async def snapshot(self) -> Snapshot:
        try:
            epoch = await self.epoch()
            # "tip" is "<revision> <entry id>" of the last write, set with the revision
            # by the same script; a data set written before it existed has only P:rev.
            tip = await self.client.hget(self._k("meta"), "tip")
            if tip:
                revision_text, _, entry_id = tip.partition(" ")
                revision = int(revision_text)
                self._remember(revision, entry_id)
            else:
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
            raise unreachable(exc) from exc
        return Snapshot(revision, tuple(objects), (), epoch, tuple(edges))

    def _remember(self, revision: int, entry_id: str | None) -> None:
        if entry_id:
            if len(self._seen) >= _REMEMBERED:
                del self._seen[next(iter(self._seen))]
            self._seen[revision] = entry_id

    async def follow(self, after: int, epoch: str) -> AsyncIterator[Change]:
        """Changes above ``after``; ``ChangelogGap`` when they cannot continue the history
        this store handed out up to ``after`` (trimmed, wiped, or replaced by another
        history: a promoted replica that missed the last writes)."""
        log = self._k("log")
        try:
            await self.check_history(after, epoch)
            previous = self._seen.get(after)
            while True:
                # Sent as a plain command and read as Redis answered it (the tail's
                # XREAD callback is off): the changelog is read at the write rate, and
                # redis-py's generic stream parsing cost more than the rest of this loop.
                resp = await self._tail.execute_command(
                    "XREAD", "COUNT", 1000, "BLOCK", 1000, "STREAMS", log, f"{after}-1")
                if not resp:
                    # Idle: a wipe or a rewind needs no dropped connection to happen.
                    await self.check_history(after, epoch)
                    continue
                for entries in (resp.values() if isinstance(resp, dict)
                                else (stream[1] for stream in resp)):
                    for entry_id, pairs in entries:
                        fields = dict(zip(pairs[::2], pairs[1::2], strict=True))
                        rev = int(entry_id.partition("-")[0])
                        if rev != after + 1:
                            raise ChangelogGap(
                                f"the changelog jumps from {after} to {rev} (trimmed)"
                            )
                        # "p" names the entry this write followed: another history
                        # (a promoted replica that missed writes, then took new ones
                        # under the same revision numbers) shows here.
                        follows = fields.get("p")
                        if previous is not None and follows is not None and \
                                follows != previous:
                            raise ChangelogGap(
                                f"redis's revision {rev} does not follow revision {after} "
                                "as this process read it (a failover lost writes)")
                        previous = fields.get("n")
                        self._remember(rev, previous)
                        yield Change(rev, _decode_ops(fields["ops"]),
                                     float(fields.get("ts", 0.0)))
                        after = rev
        except _UNREACHABLE as exc:
            # The tail hears of a restart or failover first (its read is always pending).
            await self._drop_idle()
            raise unreachable(exc) from exc


def _as_sent(response: Any, **_options: Any) -> Any:
    return response


def _change(reply: list[Any], ops: Sequence[Operation]) -> Change:
    rev, changed = reply
    return Change(int(rev), tuple(ops) if changed else ())


def _write_failure(exc: Exception) -> Exception:
    """The domain error for a write the script refused or Redis did not answer."""
    if isinstance(exc, ResponseError):
        return _script_error(exc)
    if isinstance(exc, _UNREACHABLE):
        failure = Unavailable(
            f"{unreachable(exc)}; if the connection dropped mid-call the write may "
            "or may not have been applied")
        failure.__cause__ = exc
        return failure
    return exc


def _script_error(exc: ResponseError) -> GatehouseError:
    m = _ERROR.search(str(exc))
    if not m:
        return Unavailable(f"redis script failed: {unreachable(exc)}")
    kind, name, message = m.groups()
    if kind == "ABORTED":
        return Aborted(message)
    return FailedPrecondition(name, message)
