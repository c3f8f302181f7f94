"""The worker's control channels: cancel requests and new-job nudges.

One pub/sub connection per process listens on two channels:

- ``P:cancel`` — the client API and the gateway publish a stream id there after
  flagging its meta; the job running it stops at once. Pub/sub can drop
  messages, so this is only the fast path: each job also sees the flag on its
  next write and on each lease renewal.
- ``P:jobs`` — the client API publishes there after enqueueing, so an idle
  worker polls arq's queue at once instead of at its next poll (arq only polls).
  A lost nudge costs one poll interval, nothing more.

Through a Redis outage the listener resubscribes with the shared backoff
(:mod:`worker.outage`); a subscription counts as up only once Redis confirmed
it, and a connection that stops answering (a paused Redis never refuses) is
found by a PING that gets no PONG within :data:`PONG_TIMEOUT_S`. After each
resubscribe the worker polls at once: nudges sent meanwhile were lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from streamfan.errors import RedisUnavailable
from streamfan.redis_edge import FAILURES
from worker.outage import Outage, stop_task

log = logging.getLogger(__name__)

#: PING the quiet connection this often...
PING_INTERVAL_S = 5.0
#: ...and drop it when nothing (not even the PONG) came back within this.
PONG_TIMEOUT_S = 3.0


class ControlChannel:
    def __init__(
        self,
        r: aioredis.Redis,
        cancel_channel: str,
        jobs_channel: str,
        *,
        outage: Outage | None = None,
    ) -> None:
        self.r = r
        self.cancel_channel = cancel_channel
        self.jobs_channel = jobs_channel.encode()
        self.outage = outage or Outage("events Redis")
        #: Set when a job was enqueued; the worker's poll loop clears it.
        self.work_available = asyncio.Event()
        self._waiters: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def watch(self, stream_id: str) -> asyncio.Event:
        event = self._waiters.get(stream_id)
        if event is None:
            event = self._waiters[stream_id] = asyncio.Event()
        return event

    def unwatch(self, stream_id: str) -> None:
        self._waiters.pop(stream_id, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="streamfan-control-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)

    async def _listen(self) -> None:
        failures = 0
        while True:
            pubsub = self.r.pubsub()
            try:
                await pubsub.subscribe(self.cancel_channel, self.jobs_channel.decode())
                await self._confirmed(pubsub)
                self.subscribed.set()
                self.outage.ok()
                failures = 0
                self.work_available.set()
                await self._read(pubsub)
            except FAILURES as exc:
                self.subscribed.clear()
                failures += 1
                self.outage.failed("control channel", exc)
                await self.outage.pause(failures)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _confirmed(self, pubsub: PubSub) -> None:
        """Wait for Redis to confirm both subscriptions (a paused Redis never does)."""
        pending = 2
        async with asyncio.timeout(PONG_TIMEOUT_S):
            while pending:
                msg = await pubsub.get_message(timeout=PONG_TIMEOUT_S)
                if msg is not None and msg.get("type") == "subscribe":
                    pending -= 1

    async def _read(self, pubsub: PubSub) -> None:
        awaiting_pong = False
        while True:
            wait = PONG_TIMEOUT_S if awaiting_pong else PING_INTERVAL_S
            msg = await pubsub.get_message(timeout=wait)
            if msg is None:
                if awaiting_pong:
                    raise RedisUnavailable(
                        f"no PONG on the control channel within {PONG_TIMEOUT_S:g} s"
                    )
                await pubsub.ping()
                awaiting_pong = True
                continue
            awaiting_pong = False  # anything that arrives proves the connection lives
            if msg.get("type") != "message":
                continue
            if msg.get("channel") == self.jobs_channel:
                self.work_available.set()
                continue
            data = msg.get("data")
            sid = data.decode("utf-8", "replace") if isinstance(data, bytes) else ""
            waiter = self._waiters.get(sid)
            if waiter is not None:
                waiter.set()
