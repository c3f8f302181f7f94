"""Reading a stream's history: positions, pages, and whether history is ``gone``.

The client API (:meth:`streamfan.Client.events`) and the gateway
(:mod:`gateway.history`) read through the same :class:`PageReader`, so they
cannot disagree about what a position gets. A position is ``"0"`` (everything),
``"$"`` (only what comes next) or an entry id (everything after it).

The ``gone`` rule
-----------------

Every page is one call of :data:`streamfan.scripts.READ_PAGE`, which decides, at
the instant it reads the page, whether entries after the position were removed
before they could be read. The rule, in one sentence: *the history after a
position is gone when entries were removed from the stream and the position is
before both the newest id ever written and the oldest entry still kept.* A
missing events key (expired or deleted) keeps nothing and has removed whatever
its meta's ``last_id``, or the caller, saw written.

* Redis does not record which id ``MAXLEN`` trimmed last, so any position before
  the oldest kept entry counts, even the newest trimmed id (conservative by one
  entry: never a silent gap). ``"0"`` asks for everything, so a stream that lost
  any entry answers ``gone`` to it.
* ``max-deleted-entry-id`` is not consulted: ``MAXLEN`` and ``XTRIM`` never update
  it, only ``XDEL`` does, and streamfan never deletes single entries. An entry
  an operator ``XDEL``\\ s after a position that is still readable (a poison event,
  say) is skipped, not reported: readers of that position are not locked out.
  (The gateway's old reader reported it only when the position's own entry was
  gone too, so its answer depended on an entry it does not deliver.)
* A position at or after the newest id ever written has lost nothing, even if the
  stream was trimmed to empty: there was nothing after it. (The client's old
  check said ``gone`` there.)

What a caller does with ``gone``, ``missing`` and the entries (an exception, an
``error`` message, decoding) is its own affair.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from streamfan import scripts
from streamfan.errors import InvalidRequest
from streamfan.keys import EVENT_FIELD, Keys
from streamfan.protocol import parse_position
from streamfan.store import redis_errors
from streamfan.wakeup import parse_id

log = logging.getLogger(__name__)

FROM_START = "0"
FROM_NOW = "$"

#: An entry id as a comparable (ms, seq) pair.
Id = tuple[int, int]
#: (entry id as Redis wrote it, event JSON bytes)
Entry = tuple[bytes, bytes]

ZERO: Id = (0, 0)

_FIELD = EVENT_FIELD.encode()


def format_id(entry_id: Id) -> bytes:
    return b"%d-%d" % entry_id


def id_of(raw: bytes | str) -> Id:
    return parse_id(raw)


def validate_position(position: str) -> str:
    """``"$"``, or the position as an ``ms-seq`` entry id (``"0"`` → ``"0-0"``)."""
    normalised = parse_position(position)
    if normalised is None:
        raise InvalidRequest(
            f"invalid position {position!r}: use '0', '$' or a stream entry id like 1700000000000-0"
        )
    return normalised


def gone_without_meta(position: str) -> bool:
    """For a stream with no meta: True if ``position`` names an entry (the stream
    existed and has expired), False for ``"0"``/``"0-0"`` or ``"$"`` (not found)."""
    return position != FROM_NOW and id_of(position) != ZERO


@dataclass(frozen=True, slots=True)
class Page:
    """Entries strictly after a position, and what the stream looked like then."""

    entries: list[Entry]
    #: The read reached the newest entry (fewer than ``count`` came back).
    complete: bool
    #: The newest id in the stream when read (``0-0`` if it has none or does not exist).
    end: Id
    #: Entries after the position were removed before they could be read.
    gone: bool
    #: The stream key does not exist (never written, or expired).
    missing: bool


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


class PageReader:
    """Reads pages of history, one round trip each, through one registered script."""

    def __init__(self, r: aioredis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._script = r.register_script(scripts.READ_PAGE)

    async def read(
        self, stream_id: str, position: Id, count: int, *, known_last: Id = ZERO
    ) -> Page:
        """Up to ``count`` entries with ids greater than ``position``.

        ``known_last``: the newest id the caller saw written (the meta's
        ``last_id`` when it looked); it counts as removed if the events key has
        disappeared since, even if the meta went with it. Redis errors are raised
        as :class:`~streamfan.errors.RedisUnavailable`.
        """
        keys = [self.keys.meta(stream_id), self.keys.events(stream_id)]
        args: list[bytes | int] = [format_id(position), count, format_id(known_last)]
        async with redis_errors():
            exists, gone, end, rows = await self._script(keys, args)
        return Page(
            _entries(rows),
            complete=len(rows) < count,
            end=id_of(end),
            gone=bool(gone),
            missing=not exists,
        )
