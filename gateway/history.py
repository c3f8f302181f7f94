"""Reading streams for the gateway: pages of history, meta, last ids.

Pages come from the reader the client API uses too
(:class:`streamfan.history.PageReader`): each page is one round trip of one Lua
script, which also decides, at the same instant, whether the history after the
position is ``gone`` — the rule lives there and nowhere else. The same reader
skips rows that hold no event (a foreign ``XADD``): what the gateway splices
into a frame is always a JSON object with a ``type``, and a page that is not
``complete`` always has entries, so a reader that moves to its last entry moves
forward. What to do with a page (replay it, fan it out, answer ``gone``) is
:mod:`gateway.catchup`'s and :mod:`gateway.hub`'s.

Redis errors are raised again as :class:`RedisUnavailable` here, at the edge.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
import redis.exceptions

from streamfan import events, protocol, store
from streamfan.errors import RedisUnavailable
from streamfan.history import ZERO, Entry, Id, Page, PageReader, format_id, id_of
from streamfan.keys import Keys, Meta
from streamfan.store import StreamMeta

__all__ = [
    "ZERO",
    "Entry",
    "History",
    "Id",
    "Page",
    "format_id",
    "id_of",
    "terminal_status",
]


def terminal_status(event_json: bytes) -> str | None:
    """The status a terminal event leaves (``done``…), or None for any other event."""
    etype = protocol.event_type(event_json)
    return events.TERMINAL_STATUS.get(etype) if etype is not None else None


class History:
    """Reads through the gateway's small pool of Redis connections."""

    def __init__(self, r: aioredis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._pages = PageReader(r, keys)

    async def meta(self, stream_id: str) -> StreamMeta | None:
        return await store.read_meta(self.r, self.keys, stream_id)

    async def read_after(
        self, stream_id: str, position: Id, count: int, *, known_last: Id = ZERO
    ) -> Page:
        """Up to ``count`` entries with ids greater than ``position``, in one round trip
        (more only past a full page of skipped rows).

        ``known_last``: the newest id the caller saw in the stream's meta (see
        :meth:`streamfan.history.PageReader.read`)."""
        return await self._pages.read(stream_id, position, count, known_last=known_last)

    async def last_ids(self, stream_ids: Sequence[str]) -> list[bytes | None]:
        """Each stream's meta ``last_id`` (None if it has none), in one round trip."""
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                for sid in stream_ids:
                    pipe.hget(self.keys.meta(sid), Meta.LAST_ID)
                result: list[bytes | None] = await pipe.execute()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise RedisUnavailable(f"Redis unavailable: {exc}") from exc
        return result

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except (redis.exceptions.RedisError, OSError):
            return False
