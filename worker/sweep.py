"""The orphan sweep: every stream ends, even when its job is lost.

A stream's job can vanish while its meta still says ``queued`` or ``running``: a
lost AOF tail, a flushed queue, a hand-deleted key, a client that died between
writing the meta and enqueueing. Nothing would ever write its terminal event,
and every reader would wait until the meta expires. So:

- the client API adds each stream it submits to an index of open streams (a
  sorted set beside arq's queue, ``Keys.open_streams``: id -> when last
  checked) *before* enqueueing, and a worker adds any stream it starts (jobs
  enqueued without the client API);
- every worker runs a :class:`Sweeper`: it takes the streams not checked for
  ``STREAMFAN_ORPHAN_SWEEP_S`` (atomically, so two workers never check the same
  one; :data:`~streamfan.orphans.CLAIM_DUE`), asks the queue whether their job is
  still there (queued, deferred or running: in arq's sorted set with its job
  key), and for those whose job is gone runs :data:`~streamfan.orphans.ORPHAN`
  on the stream's own keys, which ends the stream with ``error`` ``orphaned``
  unless it finished or an attempt holds its lease. Finished and expired
  streams leave the index there.

Why end, not re-enqueue: the request body lives only in the job, which is what
was lost. ``retryable`` is true: submitting the same request again may work.

Cost: per open stream and sweep period, one pipelined pair of commands on the
queue's Redis (``ZSCORE`` + ``EXISTS``), plus one script call when it has
finished. The index lives on the queue's Redis (one node, like arq's queue);
the script touches one stream's keys only (one hash slot on a Cluster).
"""

from __future__ import annotations

import asyncio
import logging
import random

import redis.asyncio as aioredis
from arq.constants import job_key_prefix

from streamfan import codes, events, orphans, scripts
from streamfan.cluster import EventsRedis, register
from streamfan.redis_edge import FAILURES, redis_errors
from streamfan.settings import Settings
from streamfan.store import now_ms, stream_keys
from worker.outage import Outage

log = logging.getLogger(__name__)

#: Streams checked per step; a full step is followed at once by the next.
SWEEP_BATCH = 200


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Sweeper:
    def __init__(
        self,
        queue_redis: aioredis.Redis,
        events_redis: EventsRedis,
        settings: Settings,
        queue_outage: Outage,
        events_outage: Outage,
    ) -> None:
        self.queue_redis = queue_redis
        self.events_redis = events_redis
        self.settings = settings
        self.index = settings.keys.open_streams
        self.queue_outage = queue_outage
        self.events_outage = events_outage
        self._claim = queue_redis.register_script(orphans.CLAIM_DUE)
        self._orphan = register(events_redis, orphans.ORPHAN)  # SPUBLISH on a cluster
        #: Streams this process ended as orphans (metrics, tests).
        self.orphaned = 0

    async def run(self) -> None:
        period = self.settings.orphan_sweep_s
        failures = 0
        while True:
            try:
                checked = await self.step()
            except FAILURES as exc:
                failures += 1
                self.queue_outage.failed("orphan sweep", exc)
                await self.queue_outage.pause(failures)
                continue
            failures = 0
            if checked < SWEEP_BATCH:
                # A fraction of the period, jittered: workers' steps interleave.
                await asyncio.sleep(period * random.uniform(0.2, 0.4))

    async def step(self) -> int:
        """Check the streams that are due; returns how many were checked."""
        now = now_ms()
        period_ms = int(self.settings.orphan_sweep_s * 1000)
        async with redis_errors():
            raw = await self._claim([self.index], [now - period_ms, SWEEP_BATCH, now])
        due = [_text(sid) for sid in raw]
        if not due:
            return 0
        async with redis_errors(), self.queue_redis.pipeline(transaction=False) as pipe:
            for sid in due:
                pipe.zscore(self.settings.queue_name, sid)
                pipe.exists(job_key_prefix + sid)
            found = await pipe.execute()
        lost = [
            sid for i, sid in enumerate(due) if found[2 * i] is None or not int(found[2 * i + 1])
        ]
        closed = [sid for sid in lost if await self._end_if_orphaned(sid, now)]
        if closed:
            async with redis_errors():
                await self.queue_redis.zrem(self.index, *closed)
        return len(due)

    async def _end_if_orphaned(self, stream_id: str, now: int) -> bool:
        """True when the stream is finished now (or gone): it leaves the index."""
        s = self.settings
        error = events.error(
            codes.ORPHANED.code,
            "the stream's job was lost from the queue (flushed, expired or deleted) "
            "while no worker held it; submit the request again",
            retryable=codes.ORPHANED.retryable,
        )
        async with redis_errors():
            outcome = _text(
                await self._orphan(
                    stream_keys(s.keys, stream_id),
                    [now, events.encode_event(error), int(s.retention_s * 1000), s.maxlen],
                )
            )
        if outcome == scripts.Reply.ENDED:
            self.orphaned += 1
            log.warning("stream %s: job gone, no worker holds it: ended (orphaned)", stream_id)
        return outcome != scripts.Reply.HELD
