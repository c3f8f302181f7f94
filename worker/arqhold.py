"""Keeping arq's hands off a running job, and handing it back.

arq leaves a running job in its queue (a sorted set scored by due time) and
guards it with an in-progress key for ``job_timeout``. That has two costs for
long streams: every worker's every poll re-checks every running job (four
round trips each: measured 2.7 s from submit to start with 500 streams running),
and a killed worker's job waits out the whole ``job_timeout``.

So a running attempt *holds* its job: it moves the job's score to ``now + lease``
and sets the in-progress key to the same lease, renewing both with its Redis
lease. Polls (``ZRANGEBYSCORE -inf now``) no longer see running jobs at all; if the
worker dies, the score falls due when the lease ends and another worker takes
the job over. Before a ``Retry`` the original score is put back, because arq
schedules the retry relative to it; on shutdown the job is made due at once.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from streamfan.redis_edge import redis_errors

#: arq's in-progress key prefix (arq.constants.in_progress_key_prefix).
ARQ_IN_PROGRESS_PREFIX = "arq:in-progress:"


def _now_ms() -> int:
    return int(time.time() * 1000)


class ArqHold:
    def __init__(
        self, r: aioredis.Redis, queue_name: str, job_id: str, score: int | None, lease_ms: int
    ) -> None:
        self.r = r
        self.queue = queue_name
        self.job_id = job_id
        #: The score arq started the job at; arq's retry arithmetic assumes it.
        self.score = score
        self.lease_ms = lease_ms

    async def renew(self, *, track: str | None = None) -> None:
        """Hold the job for another lease (one round trip); ``track``: also add the
        stream to that open-streams index unless it is there (``worker/sweep.py``)."""
        now = _now_ms()
        async with self.r.pipeline(transaction=False) as pipe:
            # XX: never re-add a job that arq already finished and removed.
            pipe.zadd(self.queue, {self.job_id: now + self.lease_ms}, xx=True)
            # SET, not PEXPIRE: after a Redis outage longer than the lease the key
            # has expired, and another worker's poll would start the job again.
            pipe.set(ARQ_IN_PROGRESS_PREFIX + self.job_id, b"1", px=self.lease_ms)
            if track is not None:
                pipe.zadd(track, {self.job_id: now}, nx=True)
            async with redis_errors():
                await pipe.execute()

    async def before_retry(self) -> None:
        """Put the original score back so ``Retry(defer=d)`` lands at now + d."""
        async with self.r.pipeline(transaction=False) as pipe:
            if self.score is not None:
                pipe.zadd(self.queue, {self.job_id: self.score}, xx=True)
            pipe.pexpire(ARQ_IN_PROGRESS_PREFIX + self.job_id, 1)
            async with redis_errors():
                await pipe.execute()

    async def release(self) -> None:
        """Make the job due now, for another worker (this one is stopping)."""
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.zadd(self.queue, {self.job_id: _now_ms()}, xx=True)
            pipe.pexpire(ARQ_IN_PROGRESS_PREFIX + self.job_id, 1)
            async with redis_errors():
                await pipe.execute()
