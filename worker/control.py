"""The worker's control channels: cancel requests and new-job nudges.

One pub/sub connection per process listens on two channels:

- ``P:cancel`` — the client API and the gateway publish a stream id there after
  flagging its meta; the job running it stops at once. Pub/sub can drop
  messages, so this is only the fast path: each job also sees the flag on its
  next write and on each lease renewal.
- ``P:jobs`` — the client API publishes there after enqueueing, so an idle
  worker polls arq's queue at once instead of at its next poll (arq only polls).
  A lost nudge costs one poll interval, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis

from streamfan.redis_edge import FAILURES

log = logging.getLogger(__name__)

#: Wait before resubscribing after the pub/sub connection failed.
RECONNECT_DELAY_S = 0.5


class ControlChannel:
    def __init__(self, r: aioredis.Redis, cancel_channel: str, jobs_channel: str) -> None:
        self.r = r
        self.cancel_channel = cancel_channel
        self.jobs_channel = jobs_channel.encode()
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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen(self) -> None:
        while True:
            pubsub = self.r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.cancel_channel, self.jobs_channel.decode())
                self.subscribed.set()
                while True:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is None:
                        await pubsub.ping()
                        continue
                    if msg.get("channel") == self.jobs_channel:
                        self.work_available.set()
                        continue
                    data = msg.get("data")
                    sid = data.decode("utf-8", "replace") if isinstance(data, bytes) else ""
                    waiter = self._waiters.get(sid)
                    if waiter is not None:
                        waiter.set()
            except FAILURES:
                self.subscribed.clear()
                log.warning("control channel lost Redis; resubscribing")
                await asyncio.sleep(RECONNECT_DELAY_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
