"""A page of a stream's history, and where in it a stream ends — pure data.

:class:`Page` is what a read of :data:`streamfan.scripts.READ_PAGE` gives
(:mod:`streamfan.history` reads it); :mod:`streamfan.recovery` decides what a
reader does with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamfan import events, protocol
from streamfan.positions import Id

#: (entry id as Redis wrote it, event JSON bytes)
Entry = tuple[bytes, bytes]


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
    #: The meta's status at the same instant (None: no meta).
    status: str | None = None


def terminal_status(event_json: bytes) -> str | None:
    """The status a terminal event leaves (``done``…), or None for any other event."""
    etype = protocol.event_type(event_json)
    return events.TERMINAL_STATUS.get(etype) if etype is not None else None


def through_terminal(entries: Sequence[Entry]) -> tuple[Sequence[Entry], str | None]:
    """``entries`` up to and including the first terminal event, and its status."""
    for i, (_eid, data) in enumerate(entries):
        status = terminal_status(data)
        if status is not None:
            return (entries if i == len(entries) - 1 else entries[: i + 1]), status
    return entries, None
