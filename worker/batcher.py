"""Appends from every stream of a worker process, one round trip per event-loop turn.

At an LLM's pace a network read holds one chunk, so "one round trip per read"
is one round trip per chunk, and a redis-py call costs far more client CPU than
the work it asks for (about 150 µs per EVALSHA here, see docs/benchmarks.md).
So the streams of a process do not call Redis themselves: each hands its append
to the :class:`AppendBatcher` and waits for its own reply. A single flusher task
sends everything handed in since its last send as one ``EVALSHA`` of
:data:`~streamfan.scripts.APPEND_MANY` (still atomic per stream, and each stream's
events still go out in one call), so the cost per round trip is shared by every
stream that had something to write.

Only one send is in flight at a time: what arrives meanwhile waits for the next
one. At low load that is a send per append, as before; under load batches grow
by themselves and the round trips per chunk fall.

On a Redis Cluster a script may only touch the keys of one slot, so a send is
split by slot: one ``EVALSHA`` per slot that has appends, all of one node's in
one pipeline, the nodes' pipelines sent at once (redis-py's cluster pipeline).
A send is still one round trip per node, and the script is the same; each call
names one key of its slot so that the client routes it (and follows ``MOVED``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster

from streamfan import scripts
from streamfan.cluster import EventsRedis, register, slot
from streamfan.errors import RedisUnavailable
from streamfan.redis_edge import FAILURES
from streamfan.store import now_ms

#: Longest one round trip may take before its appends fail (and are retried).
SEND_TIMEOUT_S = 5.0
#: Streams per EVALSHA: a script blocks Redis while it runs, so a huge batch
#: would stall everyone else's commands; more than this go in one pipeline.
MAX_STREAMS_PER_CALL = 256


#: Separates the streams' records in one batch (a control character: JSON escapes
#: it inside strings, so no event holds it raw; stream ids cannot hold it).
RECORD_SEPARATOR = b"\x1e"


#: Replies that say the call went to the wrong node, for now or for good
#: (``MovedError`` is an ``AskError``).
_REDIRECTS = (
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


@dataclass(slots=True)
class _SlotCall:
    """One EVALSHA of a send on a cluster: the appends of one slot."""

    idxs: list[int]
    route: str
    args: list[Any]
    result: Any = None


@dataclass(slots=True)
class _Append:
    record: bytes
    reply: asyncio.Future[list[Any]]


def record(key_base: str, attempt: int, seq: int | str, encoded_events: list[bytes]) -> bytes:
    """One stream's part of a batch (format in :data:`~streamfan.scripts.APPEND_MANY`)."""
    return b"\n".join([f"{key_base} {attempt} {seq}".encode(), *encoded_events])


class AppendBatcher:
    def __init__(
        self,
        r: EventsRedis,
        maxlen: int,
        *,
        on_round_trip: Callable[[int], None] | None = None,
    ) -> None:
        self._r = r
        self._script = register(r, scripts.APPEND_MANY)
        self._maxlen = maxlen
        self._on_round_trip = on_round_trip
        self._pending: list[_Append] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def append(self, record: bytes) -> list[Any]:
        """Queue one stream's :func:`record`; return its script reply (see ``APPEND``).

        Raises what the round trip raised (a ``redis.exceptions.TimeoutError``
        when it took longer than :data:`SEND_TIMEOUT_S`), or
        :class:`~streamfan.errors.RedisUnavailable` once the batcher is closed.
        """
        if self._closed:
            raise RedisUnavailable("the worker's Redis writer is closed")
        if self._task is None or self._task.done():
            # Also after the flusher ended some unforeseen way: a dead flusher
            # would leave every later append waiting forever.
            self._task = asyncio.create_task(self._run(), name="streamfan-append-batcher")
        reply: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Append(record, reply))
        self._wake.set()
        return await reply

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail(self._pending, RedisUnavailable("the worker's Redis writer is closed"))
        self._pending.clear()

    @staticmethod
    def _fail(items: list[_Append], exc: BaseException) -> None:
        # An exception, not a cancel: the waiting writers were not cancelled
        # themselves, and a stray CancelledError would confuse their callers.
        for item in items:
            if not item.reply.done():
                item.reply.set_exception(exc)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # An append whose caller was cancelled before it was sent is dropped:
            # the caller already treats it as "maybe written".
            batch = [a for a in self._pending if not a.reply.done()]
            self._pending = []
            if not batch:
                continue
            try:
                # A connection that went silent (a dropped NAT flow) would hold
                # every stream of the process, leases still renewed, until the
                # kernel gives up: fail the batch instead; the writers retry
                # with the same seq, on a fresh connection.
                async with asyncio.timeout(SEND_TIMEOUT_S):
                    replies = await self._send(batch)
                if len(replies) != len(batch):
                    raise redis.exceptions.ResponseError(
                        f"APPEND_MANY answered {len(replies)} times for {len(batch)} appends"
                    )
            except asyncio.CancelledError:
                self._fail(batch, RedisUnavailable("the worker's Redis writer stopped"))
                raise
            except TimeoutError:
                self._fail(
                    batch,
                    redis.exceptions.TimeoutError(
                        f"append round trip took longer than {SEND_TIMEOUT_S:g} s"
                    ),
                )
                continue
            except Exception as exc:
                self._fail(batch, exc)
                continue
            for item, reply in zip(batch, replies, strict=True):
                if item.reply.done():
                    continue
                if isinstance(reply, BaseException):
                    # One slot's call failed (on a cluster): its streams only.
                    item.reply.set_exception(reply)
                else:
                    item.reply.set_result(reply)

    async def _send(self, batch: list[_Append]) -> list[Any]:
        r = self._r
        if not isinstance(r, aioredis.Redis):  # (mypy narrows on this test, not its inverse)
            return await self._send_by_slot(r, batch)
        calls = [
            batch[i : i + MAX_STREAMS_PER_CALL] for i in range(0, len(batch), MAX_STREAMS_PER_CALL)
        ]
        now = now_ms()
        try:
            if len(calls) == 1:
                return list(await self._script(*self._call_args(calls[0], now)))
            pipe = r.pipeline(transaction=False)
            for call in calls:
                await self._script(*self._call_args(call, now), client=pipe)
            out: list[list[Any]] = []
            for replies in await pipe.execute():
                out.extend(replies)
            return out
        finally:
            # Counted once it is over, as the writes it carried are: a metrics
            # scrape never sees a round trip whose writes it cannot see yet.
            if self._on_round_trip is not None:
                self._on_round_trip(len(batch))

    def _call_args(self, call: list[_Append], now: int) -> tuple[list[bytes], list[Any]]:
        batch = RECORD_SEPARATOR.join([item.record for item in call])
        return [], [self._maxlen, now, batch]

    async def _send_by_slot(self, r: RedisCluster, batch: list[_Append]) -> list[Any]:
        """Replies in ``batch``'s order; a slot whose call failed gets the exception."""
        by_slot: dict[int, list[int]] = {}
        for i, item in enumerate(batch):
            by_slot.setdefault(slot(item.record.split(b" ", 1)[0]), []).append(i)
        now = now_ms()
        out: list[Any] = [None] * len(batch)
        by_node: dict[str, list[_SlotCall]] = {}
        nodes: dict[str, ClusterNode] = {}
        for key_slot, idxs in by_slot.items():
            for j in range(0, len(idxs), MAX_STREAMS_PER_CALL):
                call = idxs[j : j + MAX_STREAMS_PER_CALL]
                items = [batch[i] for i in call]
                # The key routes the call to its slot's node; the script reads the
                # stream's keys from the records (all of this one slot).
                route = items[0].record.split(b" ", 1)[0].decode() + ":meta"
                sc = _SlotCall(call, route, self._call_args(items, now)[1])
                try:
                    node = r.nodes_manager.get_node_from_slot(key_slot)
                except FAILURES as exc:
                    for i in call:
                        out[i] = exc
                    continue
                nodes[node.name] = node
                by_node.setdefault(node.name, []).append(sc)
        sent = await asyncio.gather(*(self._node_send(r, nodes[n], c) for n, c in by_node.items()))
        if self._on_round_trip is not None:
            # A round trip per node, in parallel: counted as such.
            for calls in by_node.values():
                self._on_round_trip(sum(len(sc.idxs) for sc in calls))
        for calls in sent:
            for sc in calls:
                for k, i in enumerate(sc.idxs):
                    res = sc.result
                    out[i] = res if isinstance(res, BaseException) else res[k]
        return out

    async def _node_send(
        self, r: RedisCluster, node: ClusterNode, calls: list[_SlotCall]
    ) -> list[_SlotCall]:
        """One node's calls in one pipeline on one of the cluster client's
        connections to it (redis-py's cluster pipeline refuses EVALSHA)."""
        todo = calls
        for attempt in range(2):
            cmds = [
                PipelineCommand(k, "EVALSHA", self._script.sha, 1, sc.route, *sc.args)
                for k, sc in enumerate(todo)
            ]
            try:
                await node.execute_pipeline(cmds)
            except FAILURES as exc:
                # The node is gone or cut off (a failover?): its streams retry, and
                # the slot map is read again before their next send.
                with contextlib.suppress(Exception):
                    await node.disconnect()
                with contextlib.suppress(Exception):
                    await r.nodes_manager.initialize()
                for sc in todo:
                    sc.result = exc
                return calls
            missing = []
            for sc, cmd in zip(todo, cmds, strict=True):
                sc.result = cmd.result
                if isinstance(cmd.result, redis.exceptions.NoScriptError) and not attempt:
                    missing.append(sc)
            if not missing:
                break
            # A node that has not seen the script yet (new, restarted, promoted).
            await r.execute_command("SCRIPT LOAD", self._script.script, target_nodes=node)
            todo = missing
        for sc in calls:
            if isinstance(sc.result, _REDIRECTS):
                # The slot moved (MOVED), is moving (ASK) or has no master yet: send
                # this call through the cluster client, which follows redirects and
                # refreshes its slot map.
                try:
                    sc.result = await self._script([sc.route], sc.args)
                except Exception as exc:
                    sc.result = exc
        return calls
