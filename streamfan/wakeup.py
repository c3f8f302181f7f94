"""The payload of a ``P:{ID}:live`` message, published by the worker's write script.

Format (UTF-8, ``\\n``-separated; event JSON never contains a raw newline)::

    <prev_id>\\n<id1>\\n<event1 json>[\\n<id2>\\n<event2 json>...]

``prev_id`` is the id of the newest entry that was in the stream before this
write (``0-0`` for the first). A reader that has delivered exactly ``prev_id``
can deliver the entries straight from the message: it provably skipped nothing.
Any other reader treats the message as a bare wake-up and reads the stream with
``XRANGE`` from its own last id. The message is a hint, never the source of
truth: pub/sub may drop it, and the stream always has the events.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Wakeup:
    prev_id: bytes
    #: (entry id, event JSON bytes) in stream order.
    entries: tuple[tuple[bytes, bytes], ...]

    @property
    def last_id(self) -> bytes:
        return self.entries[-1][0] if self.entries else self.prev_id


def encode_wakeup(prev_id: bytes, entries: list[tuple[bytes, bytes]]) -> bytes:
    """What the Lua write script publishes (kept here for tests and other writers)."""
    parts = [prev_id]
    for entry_id, event in entries:
        parts.append(entry_id)
        parts.append(event)
    return b"\n".join(parts)


def decode_wakeup(payload: bytes) -> Wakeup | None:
    """Parse a live message; ``None`` if it is malformed (treat as a bare wake-up)."""
    parts = payload.split(b"\n")
    if len(parts) % 2 != 1 or not parts[0]:
        return None
    it = iter(parts[1:])
    entries = tuple(zip(it, it, strict=True))
    return Wakeup(prev_id=parts[0], entries=entries)
