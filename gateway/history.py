"""Reading streams for the gateway: pages of history, meta, last ids.

Pages come from the reader the client API uses too
(:class:`streamfan.history.PageReader`): each page is one round trip of one Lua
script, which also decides, at the same instant, whether the history after the
position is ``gone``. What to do with a page is :mod:`streamfan.recovery`'s
decision and :mod:`gateway.hub`'s work.

Redis errors are raised again as :class:`RedisUnavailable` here, at the edge
(:mod:`streamfan.redis_edge`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from streamfan import store
from streamfan.cluster import EventsRedis
from streamfan.history import PageReader
from streamfan.keys import Keys, Meta
from streamfan.page import Page
from streamfan.positions import ZERO, Id
from streamfan.redis_edge import FAILURES, redis_errors
from streamfan.store import StreamMeta


class History:
    """Reads through the gateway's small pool of Redis connections."""

    def __init__(self, r: EventsRedis, keys: Keys, *, concurrency: int | None = None) -> None:
        """``concurrency``: at most this many reads at once, the others wait their
        turn (on a cluster, whose client fails a read when a node's connections
        are all busy, instead of queueing it as the one-Redis pool does)."""
        self.r = r
        self.keys = keys
        self._pages = PageReader(r, keys)
        self._turns = asyncio.Semaphore(concurrency) if concurrency else contextlib.nullcontext()

    async def meta(self, stream_id: str) -> StreamMeta | None:
        async with self._turns:
            return await store.read_meta(self.r, self.keys, stream_id)

    async def read_after(
        self, stream_id: str, position: Id, count: int, *, known_last: Id = ZERO
    ) -> Page:
        """Up to ``count`` entries with ids greater than ``position``, in one round trip
        (more only past a full page of skipped rows).

        ``known_last``: the newest id the caller saw in the stream's meta (see
        :meth:`streamfan.history.PageReader.read`)."""
        async with self._turns:
            return await self._pages.read(stream_id, position, count, known_last=known_last)

    async def last_ids(self, stream_ids: Sequence[str]) -> list[bytes | None]:
        """Each stream's meta ``last_id`` (None if it has none), in one round trip."""
        async with self._turns, redis_errors(), self.r.pipeline(transaction=False) as pipe:
            for sid in stream_ids:
                pipe.hget(self.keys.meta(sid), Meta.LAST_ID)
            result: list[bytes | None] = await pipe.execute()
        return result

    async def meta_fields(self, stream_id: str, names: Sequence[str]) -> list[bytes | None]:
        """Some fields of a stream's meta (None for each it lacks), in one round trip."""
        async with redis_errors():
            got: list[bytes | None] = await self.r.hmget(  # type: ignore[misc]
                self.keys.meta(stream_id), list(names)
            )
        return got

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except FAILURES:
            return False
