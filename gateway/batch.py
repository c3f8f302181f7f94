"""What the hub hands its subscribers: batches encoded once per wire format, and the sink contract.

The hub (:mod:`gateway.hub`) decides *what* a subscriber gets — entries of a
stream, in order, and how it ends — and knows nothing of how it is written. A
:class:`Sink` is one connection as the hub sees it: the WebSocket
(:class:`gateway.peer.Peer`) or an HTTP response that streams (the SSE and
OpenAI-compatible doors, :mod:`gateway.httpsink`). Each sink has a
:class:`Codec`, its wire format.

A :class:`Batch` is one fan-out step of one stream. The first subscriber of a
format to take it encodes it (:meth:`Batch.shared`); every other subscriber of
that format gets the very same bytes, and, when its transport frames them the
same way, the very same wire frame (:class:`Shared`). So a batch fanned out to
a thousand WebSocket and a thousand SSE readers is encoded twice, not 2,000
times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from streamfan.page import Entry

if TYPE_CHECKING:
    from gateway.session import Session
    from gateway.streams import StreamState, Subscription
    from streamfan.protocol import CloseCode


class Shared:
    """One batch's payload in one format, and its wire framing, made once on first use.

    Under load a sink gets several batches in one flush, and sinks in step get
    the very same run of batches: the first sink's frame for a run ending here
    is kept for the others in :attr:`run` (the run, its wire bytes).
    """

    __slots__ = ("_frame", "_wire", "payload", "run", "size")

    def __init__(self, payload: bytes, frame: Callable[[bytes], bytes]) -> None:
        self.payload = payload
        self.size = len(payload)
        self._frame = frame
        self._wire: bytes | None = None
        self.run: tuple[list[bytes | Shared], bytes] | None = None

    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = self._frame(self.payload)
        return self._wire

    def frame(self, payload: bytes) -> bytes:
        """Frame other bytes (a run of batches) the way this one is framed."""
        return self._frame(payload)


class Codec(Protocol):
    """A wire format: how entries and a stream's end become bytes (pure)."""

    def entry(self, state: StreamState, entry_id: bytes, event_json: bytes) -> bytes:
        """One entry as a message (``b""``: this format shows nothing for it)."""
        ...

    def end(self, stream_id: str, status: str) -> bytes:
        """What follows the terminal event (``b""``: nothing)."""
        ...

    def join(self, messages: list[bytes]) -> bytes: ...

    def frame(self, payload: bytes) -> bytes:
        """The payload as the transport writes it (a WebSocket frame, an HTTP chunk)."""
        ...


class Batch:
    """Entries of one stream newer than its shared position, and whether they end it."""

    __slots__ = ("_encoded", "entries", "state", "status")

    def __init__(self, state: StreamState, entries: Sequence[Entry], status: str | None) -> None:
        self.state = state
        self.entries = entries
        #: The final status when the batch holds the terminal event.
        self.status = status
        self._encoded: dict[Codec, tuple[list[bytes], Shared]] = {}

    def _encode(self, codec: Codec) -> tuple[list[bytes], Shared]:
        got = self._encoded.get(codec)
        if got is None:
            st = self.state
            lines = [codec.entry(st, eid, ev) for eid, ev in self.entries]
            if self.status is not None:
                lines.append(codec.end(st.stream_id, self.status))
            got = self._encoded[codec] = (lines, Shared(codec.join(lines), codec.frame))
        return got

    def lines(self, codec: Codec) -> list[bytes]:
        """One message per entry (in order), then the end's when :attr:`status` is set."""
        return self._encode(codec)[0]

    def shared(self, codec: Codec) -> Shared:
        """The whole batch in ``codec``'s format, the same object for every sink."""
        return self._encode(codec)[1]


class Sink(Protocol):
    """One connection as the hub sees it; every method returns at once (never awaits I/O).

    ``replay``, ``subscribed``, ``end`` and ``error`` are paced by the hub
    (:meth:`drained`), never cut; ``deliver`` is the fan-out and cuts a sink
    whose unsent bytes outgrow its limit (``too_slow``).
    """

    session: Session

    @property
    def closing(self) -> bool: ...

    def subscribed(self, sub: Subscription, status: str, last_id: str) -> None:
        """The subscription is in at ``last_id``; events after it follow."""
        ...

    def replay(self, sub: Subscription, entries: Sequence[Entry], final_status: str | None) -> None:
        """History for this sink alone."""
        ...

    def joined(self, sub: Subscription) -> None:
        """Caught up: from now on the fan-out delivers."""
        ...

    def deliver(self, batch: Batch, first: int = 0) -> None:
        """The fan-out: ``batch`` from its entry ``first`` on (``len``: only its end)."""
        ...

    def end(self, sub: Subscription, status: str) -> None:
        """The stream ended before anything more was to come (the subscription is over)."""
        ...

    def error(self, sub: Subscription, code: str, message: str, *, answered: bool) -> None:
        """The subscription failed; ``answered``: after :meth:`subscribed`."""
        ...

    async def drained(self, patience_s: float) -> bool: ...

    def cut(self, code: CloseCode, reason: str | None = None) -> None: ...
