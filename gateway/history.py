"""Reading streams for the gateway: pages of history and trimmed-history detection.

Every page is read by one small Lua script, so the page and the facts needed to
tell whether history was lost are taken at the same instant:

* ``XRANGE`` from the position itself (inclusive). If the position's own entry
  is still there, nothing after it was trimmed (``MAXLEN`` trims from the head).
* Otherwise ``XINFO STREAM``: if entries were ever removed (``entries-added`` >
  ``length``) and the position lies before the first entry kept, entries after
  it may be gone, and the reader is told so (``gone``) rather than skipping them.
  (``max-deleted-entry-id`` alone is not enough: Redis updates it on ``XDEL``,
  not when ``MAXLEN``/``XTRIM`` trims.)

Redis errors are raised again as :class:`RedisUnavailable` here, at the edge.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from streamfan import events, protocol, store
from streamfan.errors import RedisUnavailable
from streamfan.keys import EVENT_FIELD, Keys, Meta
from streamfan.store import StreamMeta
from streamfan.wakeup import parse_id

log = logging.getLogger(__name__)

Id = tuple[int, int]
#: (entry id as Redis wrote it, event JSON bytes)
Entry = tuple[bytes, bytes]

ZERO: Id = (0, 0)
ZERO_RAW = b"0-0"

#: KEYS[1] events stream. ARGV[1] position (inclusive start), ARGV[2] count.
#: Returns {0} if the stream does not exist, else {1, last_generated_id,
#: entries_removed, first_entry_id_or_empty, max_deleted_entry_id, entries}.
READ_SCRIPT = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local f = {}
for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
local added, length = tonumber(f['entries-added'] or 0), tonumber(f['length'] or 0)
local first = ''
if type(f['first-entry']) == 'table' then first = f['first-entry'][1] end
return {1, f['last-generated-id'], added - length, first,
        f['max-deleted-entry-id'] or '0-0',
        redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])}
"""


def format_id(entry_id: Id) -> bytes:
    return b"%d-%d" % entry_id


def id_of(raw: bytes | str) -> Id:
    return parse_id(raw)


@dataclass(frozen=True, slots=True)
class Page:
    """Entries strictly after a position, and what the stream looked like then."""

    entries: list[Entry]
    #: The read reached the newest entry (fewer than ``count`` came back).
    complete: bool
    #: The newest id in the stream when read (``0-0`` if it has none or does not exist).
    end: Id
    #: Entries after the position were trimmed or deleted before they could be read.
    gone: bool
    #: The stream key does not exist (never written, or expired).
    missing: bool


_FIELD = EVENT_FIELD.encode()


def terminal_status(event_json: bytes) -> str | None:
    """The status a terminal event leaves (``done``…), or None for any other event."""
    etype = protocol.event_type(event_json)
    return events.TERMINAL_STATUS.get(etype) if etype is not None else None


def _entries(rows: Sequence[Any]) -> list[Entry]:
    out: list[Entry] = []
    for entry_id, fields in rows:
        # fields is a flat [name, value, ...] list; the worker writes only ``e``.
        for i in range(0, len(fields) - 1, 2):
            if fields[i] == _FIELD:
                out.append((entry_id, fields[i + 1]))
                break
        else:
            log.warning("entry %s has no %r field; skipped", entry_id, EVENT_FIELD)
    return out


class History:
    """Reads through the gateway's small pool of Redis connections."""

    def __init__(self, r: aioredis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._read = r.register_script(READ_SCRIPT)

    async def meta(self, stream_id: str) -> StreamMeta | None:
        return await store.read_meta(self.r, self.keys, stream_id)

    async def read_after(self, stream_id: str, position: Id, count: int) -> Page:
        """Up to ``count`` entries with ids greater than ``position``."""
        start = format_id(position)
        try:
            res = await self._read([self.keys.events(stream_id)], [start, count + 1])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise RedisUnavailable(f"Redis unavailable: {exc}") from exc
        if not res or int(res[0]) == 0:
            return Page([], complete=True, end=ZERO, gone=False, missing=True)
        _, last_generated, removed, first, max_deleted, rows = res
        entries = _entries(rows)
        raw_rows = len(rows)
        position_kept = bool(rows) and rows[0][0] == start
        if position_kept:
            entries = [e for e in entries if e[0] != start]
            raw_rows -= 1
        gone = False
        if not position_kept and int(removed) > 0:
            # The position's entry is not there and something was removed: if the
            # position lies before the first entry kept, its successors may have
            # been trimmed. An XDEL after the position is caught by max-deleted.
            first_kept = id_of(first) if first else None
            if first_kept is None or position < first_kept or position < id_of(max_deleted):
                gone = position < id_of(last_generated)
        return Page(
            entries,
            complete=raw_rows < count,
            end=id_of(last_generated),
            gone=gone,
            missing=False,
        )

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
