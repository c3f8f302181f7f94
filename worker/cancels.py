"""Cancel requests for the jobs running in this worker process.

One pub/sub connection per process listens on ``P:cancel`` (the client API and
the gateway publish a stream id there after flagging its meta). Pub/sub can drop
messages, so this is only the fast path: each job also sees the flag on its next
write and on each lease renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
import redis.exceptions

log = logging.getLogger(__name__)

#: Wait before resubscribing after the pub/sub connection failed.
RECONNECT_DELAY_S = 0.5


class CancelRegistry:
    def __init__(self, r: aioredis.Redis, channel: str) -> None:
        self.r = r
        self.channel = channel
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
        self._task = asyncio.create_task(self._listen(), name="streamfan-cancel-listener")

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
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                while True:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg is None:
                        await pubsub.ping()
                        continue
                    data = msg.get("data")
                    sid = data.decode("utf-8", "replace") if isinstance(data, bytes) else ""
                    waiter = self._waiters.get(sid)
                    if waiter is not None:
                        waiter.set()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                self.subscribed.clear()
                log.warning("cancel listener lost Redis; resubscribing")
                await asyncio.sleep(RECONNECT_DELAY_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
