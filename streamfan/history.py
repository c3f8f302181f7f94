"""Reading a stream's history: pages, and whether history is ``gone``.

The client API (:meth:`streamfan.Client.events`) and the gateway
(:mod:`gateway.history`) read through the same :class:`PageReader`, so they
cannot disagree about what a position gets (positions: :mod:`streamfan.positions`).
What a reader does with a page is decided in :mod:`streamfan.recovery`.

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

Each page also carries the meta's status at the same instant, so a reader
learns in the same round trip that the stream finished or vanished.

Waiting for more
----------------

:meth:`PageReader.wait_and_read` is how a reader with no pub/sub connection
(the client API) follows a stream: one pipeline of ``XREAD BLOCK`` (the wait:
what it returns is not used, since it was not checked for trimming) and the page
script, which Redis runs on the same connection right after the wait ends. One
round trip per wake-up, and the page obeys the same ``gone`` rule as any other.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import orjson
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from streamfan import scripts
from streamfan.cluster import EventsRedis, is_cluster, register
from streamfan.keys import EVENT_FIELD, Keys
from streamfan.page import Entry, Page
from streamfan.positions import ZERO, Id, format_id, parse_id
from streamfan.redis_edge import redis_errors

log = logging.getLogger(__name__)

_FIELD = EVENT_FIELD.encode()


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

    def __init__(self, r: EventsRedis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self._script = register(r, scripts.READ_PAGE)

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
        return await self._read(stream_id, position, count, known_last, None)

    async def wait_and_read(
        self, stream_id: str, position: Id, count: int, *, block_ms: int, known_last: Id = ZERO
    ) -> Page:
        """:meth:`read`, after waiting up to ``block_ms`` for an entry after
        ``position`` — in the same round trip (see "Waiting for more" above)."""
        return await self._read(stream_id, position, count, known_last, block_ms)

    async def _read(
        self, stream_id: str, position: Id, count: int, known_last: Id, block_ms: int | None
    ) -> Page:
        keys = [self.keys.meta(stream_id), self.keys.events(stream_id)]
        skipped: list[bytes] = []
        while True:
            args: list[bytes | int] = [format_id(position), count, format_id(known_last)]
            async with redis_errors():
                if block_ms is None:
                    exists, gone, end, rows, status = await self._script(keys, args)
                else:
                    exists, gone, end, rows, status = await self._blocking(
                        keys, args, position, block_ms
                    )
                    block_ms = None  # a page full of skipped rows reads on at once
            entries = _entries(rows, skipped)
            complete = len(rows) < count
            if rows:
                position = parse_id(rows[-1][0])
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
            end=parse_id(end),
            gone=bool(gone),
            missing=not exists,
            read_to=position,
            status=status.decode() if status is not None else None,
        )

    async def _blocking(
        self, keys: list[str], args: list[bytes | int], position: Id, block_ms: int
    ) -> Any:
        if is_cluster(self.r):
            return await self._blocking_on_cluster(keys, args, position, block_ms)
        # EVALSHA directly, not the Script in the pipeline: redis-py would ask
        # SCRIPT EXISTS on every execute (a second round trip). The script is
        # loaded once, and again after a NOSCRIPT (a restarted Redis).
        for attempt in range(2):
            async with self.r.pipeline(transaction=False) as pipe:
                pipe.xread({keys[1]: format_id(position)}, count=1, block=block_ms)
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)  # type: ignore[arg-type]
                _woke, page = await pipe.execute(raise_on_error=False)
            if not isinstance(page, redis.exceptions.NoScriptError) or attempt:
                if isinstance(page, Exception):
                    raise page
                return page
            await self.r.script_load(scripts.READ_PAGE)
        raise AssertionError("unreachable")

    async def _blocking_on_cluster(
        self, keys: list[str], args: list[bytes | int], position: Id, block_ms: int
    ) -> Any:
        # Two round trips on a cluster: redis-py's cluster pipeline cannot route an
        # XREAD by itself (it would ask the server for the keys first), so the
        # wait goes to the node that owns the stream's slot, then the page.
        # The wait's answer is not used, so a wait refused by a moving slot
        # (MOVED, ASK, a failover) is skipped: the page follows the redirect.
        assert isinstance(self.r, RedisCluster)
        node = self.r.get_node_from_key(keys[1])
        with contextlib.suppress(redis.exceptions.ResponseError, redis.exceptions.ClusterError):
            await self.r.execute_command(
                "XREAD",
                "COUNT",
                1,
                "BLOCK",
                block_ms,
                "STREAMS",
                keys[1],
                format_id(position),
                target_nodes=node,
            )
        return await self._script(keys, args)
