"""Whether this worker process has room for another stream.

A worker that takes a stream it cannot keep up with slows every stream it
holds: each chunk waits longer for its turn on the one event loop. Two signals
say a process is there, both measured here every :data:`PROBE_S`:

- **event-loop lag**: how late a timer fires. It is the delay every chunk
  already sees; above ``lag_limit_s`` the streams fall behind their token rate.
- **CPU**: the process's share of one core over the last :data:`WINDOW_S`. A
  Python process runs on one core at a time; near ``cpu_limit`` there is no
  headroom left for another stream's chunks, whatever the lag says yet.

Streams held are not a signal on their own: what a stream costs depends on its
token rate and chunk size, which the two signals above already include. The
lag is taken as the window's 90th percentile, so one pause (a full GC, the
machine's other processes) does not turn jobs away.

Each worker with room says so in the sorted set ``{queue}:room`` (member: its
id, score: until when the claim holds, renewed every :data:`ANNOUNCE_S`; a busy
or dead worker's entry is removed or runs out). ``streamfan worker``
(``StreamfanWorker.start_jobs``) declines a new job while :meth:`Admission.busy`
gives a reason *and* another worker claims room, leaving the job to it; with
no such worker it takes the job at once, and a job that has waited
:data:`MAX_WAIT_S` anyway (a worker claiming room may have no free slot).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

import redis.asyncio as aioredis
import redis.exceptions

from worker.metrics import WorkerMetrics

#: How often the loop lag and the CPU are sampled.
PROBE_S = 0.05
#: The window both signals are taken over (the worst lag, the mean CPU).
WINDOW_S = 2.0
#: Defaults: a worker past either declines new jobs.
CPU_LIMIT = 0.85
LAG_LIMIT_S = 0.05
#: A job due this long ago is started by a busy worker too.
MAX_WAIT_S = 0.5
#: How often a worker renews (or withdraws) its claim to room; claims last 4x this.
ANNOUNCE_S = 0.5


def room_key(queue_name: str) -> str:
    """The sorted set of workers with room, next to arq's queue."""
    return f"{queue_name}:room"


class Admission:
    def __init__(
        self,
        metrics: WorkerMetrics,
        *,
        cpu_limit: float = CPU_LIMIT,
        lag_limit_s: float = LAG_LIMIT_S,
        room: tuple[aioredis.Redis, str, str] | None = None,
    ) -> None:
        """``room``: (Redis, :func:`room_key`, this worker's id) to announce room in."""
        self.metrics = metrics
        self.room = room
        self.cpu_limit = cpu_limit
        self.lag_limit_s = lag_limit_s
        #: (monotonic time, process CPU seconds, loop lag) per probe, over WINDOW_S.
        self._samples: collections.deque[tuple[float, float, float]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self.lag_s = 0.0
        self.cpu = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._probe(), name="streamfan-admission")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.room is not None:
            r, key, member = self.room
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await r.zrem(key, member)

    def busy(self) -> str:
        """Why this worker should not take another stream now, or ''."""
        if self.lag_s >= self.lag_limit_s:
            return f"event loop {self.lag_s * 1000:.0f} ms late"
        if self.cpu >= self.cpu_limit:
            return f"CPU at {self.cpu:.2f} of a core"
        return ""

    def sample(self, lag_s: float) -> None:
        now, cpu = time.monotonic(), time.process_time()
        samples = self._samples
        samples.append((now, cpu, lag_s))
        while samples and samples[0][0] < now - WINDOW_S:
            samples.popleft()
        t0, cpu0, _ = samples[0]
        self.cpu = (cpu - cpu0) / (now - t0) if now > t0 else 0.0
        lags = sorted(lag for _, _, lag in samples)
        self.lag_s = lags[int(len(lags) * 0.9)] if len(lags) > 1 else lags[0]
        self.metrics.loop_lag.set(self.lag_s)
        self.metrics.cpu.set(self.cpu)

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        announced = 0.0
        while True:
            t = loop.time()
            await asyncio.sleep(PROBE_S)
            self.sample(max(loop.time() - t - PROBE_S, 0.0))
            if self.room is not None and loop.time() - announced >= ANNOUNCE_S:
                announced = loop.time()
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    await self._announce()

    async def _announce(self) -> None:
        assert self.room is not None
        r, key, member = self.room
        if self.busy():
            await r.zrem(key, member)
        else:
            until = int(time.time() * 1000 + 4 * ANNOUNCE_S * 1000)
            await r.zadd(key, {member: until})

    async def others_have_room(self) -> bool:
        """Whether another worker claims room now (one round trip)."""
        if self.room is None:
            return False
        r, key, member = self.room
        now = int(time.time() * 1000)
        members = await r.zrangebyscore(key, now, "+inf")
        return any(m != member.encode() for m in members)
