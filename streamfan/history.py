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

Rows that are not events
------------------------

Only streamfan writes to its streams, but anyone with access to Redis can
``XADD`` to one. A row counts as an event when its ``e`` field holds a JSON
object with a string ``type`` (valid UTF-8 JSON, so it can be spliced into a
gateway frame as it is); any other row (no ``e``, not JSON, a JSON array, number
or ``null``, no ``type``) is skipped by every reader, with a warning naming the
stream and the ids. Skipped rows still move the position: a page that held only
such rows is followed by the next one within the same :meth:`PageReader.read`,
so every page that is not ``complete`` has entries, and :attr:`Page.read_to`
is where the next page starts (a reader waiting at the end of a stream waits
after the rows it skipped, not before them). Whether an object is a valid event
of a known type is the reader's own affair: the gateway relays it verbatim; the
client API validates it.

What a caller does with ``gone``, ``missing`` and the entries (an exception, an
``error`` message, decoding) is its own affair.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
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
    #: The id of the newest row read, delivered or skipped (the position itself
    #: if there was none): the next page starts after it.
    read_to: Id


def is_event_json(data: bytes) -> bool:
    """Whether an ``e`` field holds an event: a JSON object with a string ``type``."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("type"), str)


def _entries(rows: Sequence[Any], skipped: list[bytes]) -> list[Entry]:
    """The rows that hold an event; the ids of the others are added to ``skipped``."""
    out: list[Entry] = []
    for entry_id, fields in rows:
        # fields is a flat [name, value, ...] list; the worker writes only ``e``.
        for i in range(0, len(fields) - 1, 2):
            if fields[i] == _FIELD:
                if is_event_json(fields[i + 1]):
                    out.append((entry_id, fields[i + 1]))
                else:
                    skipped.append(entry_id)
                break
        else:
            skipped.append(entry_id)
    return out


class PageReader:
    """Reads pages of history through one registered script: one round trip a page
    (more only to get past a full page of rows that are not events)."""

    def __init__(self, r: aioredis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._script = r.register_script(scripts.READ_PAGE)

    async def read(
        self, stream_id: str, position: Id, count: int, *, known_last: Id = ZERO
    ) -> Page:
        """Up to ``count`` entries with ids greater than ``position``.

        Rows that hold no event are skipped (see above): the page is empty only
        if it is also ``complete`` (or ``gone``).

        ``known_last``: the newest id the caller saw written (the meta's
        ``last_id`` when it looked); it counts as removed if the events key has
        disappeared since, even if the meta went with it. Redis errors are raised
        as :class:`~streamfan.errors.RedisUnavailable`.
        """
        keys = [self.keys.meta(stream_id), self.keys.events(stream_id)]
        skipped: list[bytes] = []
        while True:
            args: list[bytes | int] = [format_id(position), count, format_id(known_last)]
            async with redis_errors():
                exists, gone, end, rows = await self._script(keys, args)
            entries = _entries(rows, skipped)
            complete = len(rows) < count
            if rows:
                position = id_of(rows[-1][0])
            if entries or complete:
                break
            # A full page of rows that are not events: read on from the last of
            # them, so that no caller sees an empty page that is not complete.
        if skipped:
            log.warning(
                "stream %s: skipped %d entries (%s..%s) whose %r field is missing or not "
                "a JSON object with a string 'type': not written by streamfan",
                stream_id,
                len(skipped),
                skipped[0].decode(),
                skipped[-1].decode(),
                EVENT_FIELD,
            )
        return Page(
            entries,
            complete=complete,
            end=id_of(end),
            gone=bool(gone),
            missing=not exists,
            read_to=position,
        )
