"""Reading a stream's history from Redis: positions, trimmed-history detection.

Used by the client API and the CLI (the gateway has its own reader tuned for
fan-out). A position is ``"0"`` (everything), ``"$"`` (only what comes next) or
an entry id (everything after it).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from streamfan.errors import InvalidRequest
from streamfan.wakeup import parse_id

FROM_START = "0"
FROM_NOW = "$"


def validate_position(position: str) -> str:
    if position in (FROM_START, FROM_NOW):
        return position
    try:
        parse_id(position)
    except ValueError:
        raise InvalidRequest(
            f"invalid position {position!r}: use '0', '$' or a stream entry id like 1700000000000-0"
        ) from None
    return position


async def is_trimmed_past(r: aioredis.Redis, events_key: str, position: str) -> bool:
    """True if entries after ``position`` may have been trimmed away (``MAXLEN``).

    ``max-deleted-entry-id`` cannot tell: Redis updates it on ``XDEL``, not when
    ``MAXLEN`` trims. So: if entries were ever removed (``entries-added`` >
    ``length``) and ``position`` lies before the first entry kept, what followed
    it may be gone. Conservative by one entry: a position equal to the last
    trimmed id is reported too, as Redis does not record which id that was.
    """
    if position == FROM_NOW:
        return False
    try:
        info: dict[Any, Any] = await r.xinfo_stream(events_key)
    except redis.exceptions.ResponseError:
        return False  # no such stream
    removed = int(info.get("entries-added", 0)) - int(info.get("length", 0))
    if removed <= 0:
        return False
    first = info.get("first-entry")
    if not first:
        return True
    first_id = first[0]
    # "0" claims to want everything: any trimmed entry means it cannot have it.
    return parse_id(position) < parse_id(first_id)
