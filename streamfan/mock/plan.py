"""The timed writes of one streaming body: what the script decided and the server executes.

A :class:`Plan` is a sequence of :class:`Send` — bytes due a number of seconds
after the response began, with the number of chunk objects in them — and an
:class:`Ending`: how the body ends once they are written. The script
(:mod:`streamfan.mock.script`) makes plans; the pacer and responder
(:mod:`streamfan.mock.pacer`, :mod:`streamfan.mock.respond`) only carry them out.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple


class Ending(enum.Enum):
    """How the response body ends once every :class:`Send` was written."""

    END = "end"  # the terminating chunk: a clean end of the body
    DROP = "drop"  # close the connection without ending the body
    RESET = "reset"  # close with a TCP RST
    STALL = "stall"  # send nothing more (keep-alive comments aside) until the client leaves


class Send(NamedTuple):
    """Bytes to write ``at`` seconds after the response started; ``chunks`` chunk objects."""

    at: float
    data: bytes
    chunks: int


class Plan:
    """The writes of one streaming body, made as they are iterated, and how it ends."""

    def __init__(self, sends: Callable[[], Iterator[Send]], ending: Ending) -> None:
        self._sends = sends
        self.ending = ending

    def __iter__(self) -> Iterator[Send]:
        return self._sends()


def coalesce(events: Iterator[tuple[float, bytes, int]]) -> Iterator[Send]:
    """(due second, bytes, chunks) events due at the same moment, as one write each."""
    for at, same in itertools.groupby(events, key=operator.itemgetter(0)):
        group = list(same)
        if len(group) == 1:
            yield Send(*group[0])
        else:
            yield Send(at, b"".join([e[1] for e in group]), sum([e[2] for e in group]))


def split_sends(sends: Iterable[Send], size: int) -> Iterator[Send]:
    """``sends`` cut into ``size``-byte pieces; a send's chunk count rides on its last piece."""
    for send in sends:
        pieces = [send.data[i : i + size] for i in range(0, len(send.data), size)] or [b""]
        for k, piece in enumerate(pieces):
            yield Send(send.at, piece, send.chunks if k == len(pieces) - 1 else 0)
