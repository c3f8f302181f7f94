"""Durable finish: wait until everything written so far is on disk, for many streams at once.

Under ``appendfsync everysec`` an OS crash can take back the last second of
writes. A stream whose terminal entry is taken back goes from ``done`` to
``running`` and is generated again — after its readers were told ``end``, so with
a real model they keep a reply that differs from the final one. With
``STREAMFAN_DURABLE_FINISH`` an attempt first writes the end it decided on into
meta (``Meta.FINISHING``), waits here until that is durable, and only then writes
the terminal entry that readers see. If a crash takes the terminal entry back, the
marker and every delta before it survived (the AOF is one ordered log), and the
next attempt writes that same end (``scripts.BEGIN``) instead of generating again.

``WAITAOF`` waits for the writes of the connection it is sent on, so each round
writes a key of its own (:attr:`Keys.durability`) and sends ``WAITAOF`` after it
on the same connection: once that write is on disk, so is everything acknowledged
before it, by any connection. Streams that finish together share one round: one
``WAITAOF`` per fsync, not one per stream, and one connection while it blocks.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time

import redis.asyncio as aioredis

from streamfan.errors import RedisRefused, RedisUnavailable
from streamfan.keys import Keys
from streamfan.redis_edge import redis_errors
from streamfan.settings import DURABLE_LOCAL, DURABLE_OFF, Settings

log = logging.getLogger(__name__)

#: Longest single WAITAOF block, ms: below every socket timeout, so a blocked
#: round trip is never mistaken for a dead Redis. Longer waits loop.
WAIT_SLICE_MS = 1000
#: TTL of the durability key, ms: it only needs to outlive one round.
KEY_TTL_MS = 60_000


class Outcome(enum.Enum):
    DURABLE = "durable"  # every write acknowledged before the wait is on disk
    UNCONFIRMED = "unconfirmed"  # not within the timeout, or this Redis cannot say (no AOF)
    #: Redis went away during the round: writes made before it may be lost, so a
    #: caller writes again what it wanted covered and waits again.
    INTERRUPTED = "interrupted"


class DurabilityBarrier:
    """``await barrier.wait()``: whether every write acknowledged before the call is durable."""

    def __init__(self, r: aioredis.Redis, settings: Settings) -> None:
        if settings.durable_finish == DURABLE_OFF:
            raise ValueError("no barrier without STREAMFAN_DURABLE_FINISH")
        self.r = r
        self.key = Keys(settings.prefix).durability
        self.local, self.replicas = (1, 0) if settings.durable_finish == DURABLE_LOCAL else (0, 1)
        self.timeout_s = settings.durable_finish_timeout_s
        self._waiters: list[asyncio.Future[Outcome]] = []
        self._round: asyncio.Task[None] | None = None
        self._rounds = 0
        self._unsupported_logged = False
        self._late_logged = False

    async def wait(self) -> Outcome:
        """Wait for the next round to reach disk (or time out, or be interrupted)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        if self._round is None or self._round.done():
            self._round = asyncio.create_task(self._run())
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while self._waiters:
            batch, self._waiters = self._waiters, []
            try:
                outcome = await self._sync()
            except Exception as exc:  # every waiter learns it; the next round tries again
                log.warning("durable finish: %s", exc)
                outcome = Outcome.INTERRUPTED
            for future in batch:
                if not future.done():
                    future.set_result(outcome)

    async def _sync(self) -> Outcome:
        """One round: a write of our own, then WAITAOF after it, until it holds or time is up."""
        self._rounds += 1
        deadline = time.monotonic() + self.timeout_s
        wrote = False
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            try:
                async with redis_errors(), self.r.pipeline(transaction=False) as pipe:
                    if not wrote:
                        pipe.set(self.key, self._rounds, px=KEY_TTL_MS)
                    pipe.execute_command(
                        "WAITAOF", self.local, self.replicas, min(left_ms, WAIT_SLICE_MS)
                    )
                    replies = await pipe.execute()
            except RedisRefused as exc:
                # No AOF here ("appendonly is disabled"), or a Redis before 7.2.
                text = str(exc).lower()
                if "appendonly" in text or "unknown command" in text:
                    if not self._unsupported_logged:
                        self._unsupported_logged = True
                        log.error(
                            "STREAMFAN_DURABLE_FINISH is set but Redis cannot WAITAOF (%s): "
                            "streams finish without waiting for the disk",
                            exc,
                        )
                    return Outcome.UNCONFIRMED
                raise
            except RedisUnavailable:
                # Redis went away: what this round was to cover may be lost with it.
                return Outcome.INTERRUPTED
            wrote = True
            local, replicas = (int(n) for n in replies[-1])
            if local >= self.local and replicas >= self.replicas:
                self._late_logged = False
                return Outcome.DURABLE
        if not self._late_logged:
            self._late_logged = True
            log.warning(
                "durable finish: the disk did not confirm within %.1f s; "
                "streams finish without waiting (logged once until it confirms again)",
                self.timeout_s,
            )
        return Outcome.UNCONFIRMED
