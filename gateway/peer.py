"""The write side of one WebSocket: a pending list, one frame per flush, a hard bound.

Nothing here awaits a socket on the fan-out path. :meth:`Peer.send` appends the
bytes (shared by every socket of a stream: encoded once) to the socket's pending
list and asks the gateway-wide :class:`Flusher` to flush it at the end of the
current event-loop turn. The flush joins what is pending into one text frame of
JSON Lines and hands it to websockets' Sans-I/O protocol and the transport
without waiting, like ``websockets.broadcast()`` — which applies no
backpressure, so the bound is ours: a socket whose unsent bytes (pending plus
the transport's write buffer) exceed ``send_buffer_bytes`` is cut with
``too_slow``, and nobody else slows down.

Messages that leave within one turn of the loop share a frame: under load, the
tokens that arrive together leave together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from gateway.batch import Batch, Shared
from gateway.metrics import Metrics
from gateway.session import Session
from streamfan import protocol
from streamfan.page import Entry
from streamfan.protocol import CLOSE_REASONS, LINE_SEPARATOR, CloseCode

if TYPE_CHECKING:
    from gateway.streams import StreamState, Subscription

log = logging.getLogger(__name__)

#: Outgoing frames are split (between messages) above this size: clients cap
#: what they accept, websockets at 1 MiB by default.
MAX_FRAME_OUT = 256 * 1024


class JsonLines:
    """The WebSocket's wire format: JSON Lines in text frames (:mod:`streamfan.protocol`)."""

    def entry(self, state: StreamState, entry_id: bytes, event_json: bytes) -> bytes:
        return protocol.event_line(state.prefix, entry_id, event_json)

    def end(self, stream_id: str, status: str) -> bytes:
        return protocol.end(stream_id, status)

    def join(self, messages: list[bytes]) -> bytes:
        return protocol.join_lines(messages)

    def frame(self, payload: bytes) -> bytes:
        # Server frames are not masked, so the whole frame is the same for every socket.
        return Frame(Opcode.TEXT, payload).serialize(mask=False)


JSON_LINES = JsonLines()


class Flushable(Protocol):
    def flush(self) -> None: ...


class Flusher:
    """Flushes every connection that got data during this turn of the loop, once."""

    __slots__ = ("_dirty", "_handle", "_loop")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._dirty: list[Flushable] = []
        self._handle: asyncio.Handle | None = None

    def schedule(self, peer: Flushable) -> None:
        self._dirty.append(peer)
        if self._handle is None:
            self._handle = self._loop.call_soon(self._run)

    def _run(self) -> None:
        dirty, self._dirty, self._handle = self._dirty, [], None
        for peer in dirty:
            peer.flush()


class Peer:
    """One client connection as the hub sees it."""

    __slots__ = (
        "_buffered",
        "_close_task",
        "_closing",
        "_flusher",
        "_limit",
        "_metrics",
        "_on_cut",
        "_paced",
        "_pending",
        "_pending_bytes",
        "_raw",
        "_scheduled",
        "close_timeout_s",
        "session",
        "ws",
    )

    def __init__(
        self,
        ws: ServerConnection,
        session: Session,
        flusher: Flusher,
        metrics: Metrics,
        *,
        send_buffer_bytes: int,
        close_timeout_s: float,
        on_cut: Callable[[Peer], None],
    ) -> None:
        self.ws = ws
        self.session = session
        self.close_timeout_s = close_timeout_s
        self._flusher = flusher
        self._metrics = metrics
        self._limit = send_buffer_bytes
        self._on_cut = on_cut
        self._pending: list[bytes | Shared] = []
        self._pending_bytes = 0
        #: The transport's write buffer after the last flush (it only shrinks until
        #: the next), so the fan-out need not ask the transport for every batch.
        self._buffered = 0
        #: History replay is pending: it paces itself (:meth:`drained`), not cut.
        self._paced = False
        # With permessage-deflate every socket's bytes differ: no shared frames.
        self._raw = not ws.protocol.extensions
        self._scheduled = False
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None

    @property
    def closing(self) -> bool:
        return self._closing

    def unsent_bytes(self) -> int:
        return self._pending_bytes + self._buffered

    # --- the hub's side (gateway.batch.Sink) ------------------------------------------

    def subscribed(self, sub: Subscription, status: str, last_id: str) -> None:
        self.send(protocol.subscribed(sub.stream_id, status, last_id), bounded=False)

    def replay(self, sub: Subscription, entries: Sequence[Entry], final_status: str | None) -> None:
        prefix = sub.state.prefix
        lines = [protocol.event_line(prefix, eid, ev) for eid, ev in entries]
        if final_status is not None:
            lines.append(protocol.end(sub.stream_id, final_status))
        self.send(protocol.join_lines(lines), bounded=False)

    def joined(self, sub: Subscription) -> None:
        pass

    def deliver(self, batch: Batch, first: int = 0) -> None:
        if first == 0:
            self.send_shared(batch.shared(JSON_LINES))
        else:
            self.send(protocol.join_lines(batch.lines(JSON_LINES)[first:]))

    def end(self, sub: Subscription, status: str) -> None:
        self.send(protocol.end(sub.stream_id, status), bounded=False)

    def error(self, sub: Subscription, code: str, message: str, *, answered: bool) -> None:
        # An error after ``subscribed`` answers no request any more.
        reply_to = None if answered else protocol.SUBSCRIBE
        self.send(protocol.error(sub.stream_id, code, message, reply_to=reply_to), bounded=False)

    # --- writing ---------------------------------------------------------------------

    def send(self, data: bytes, *, bounded: bool = True) -> None:
        """Queue ``data`` (one or more JSON lines) for the next flush. Never blocks.

        ``bounded=False`` is for history replay, which paces itself with
        :meth:`drained` instead of being cut.
        """
        if self._closing:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if not bounded:
            self._paced = True
        elif self.unsent_bytes() > self._limit:
            self._too_slow()
            return
        if not self._scheduled:
            self._scheduled = True
            self._flusher.schedule(self)

    def send_shared(self, shared: Shared) -> None:
        """:meth:`send` for a batch fanned out to many sockets (the hot path)."""
        if self._closing:
            return
        self._pending.append(shared)
        self._pending_bytes += shared.size
        if self._pending_bytes + self._buffered > self._limit:
            self._too_slow()
        elif not self._scheduled:
            self._scheduled = True
            self._flusher.schedule(self)

    def _too_slow(self) -> None:
        self._metrics.slow_disconnects += 1
        log.info("client %s too slow: cut", self.ws.remote_address)
        self.cut(CloseCode.TOO_SLOW)

    def flush(self) -> None:
        """Write what is pending as one text frame (or a few, if large), without waiting."""
        self._scheduled = False
        pending = self._pending
        if not pending or self._closing:
            return
        size, paced = self._pending_bytes, self._paced
        self._pending = []
        self._pending_bytes = 0
        self._paced = False
        ws = self.ws
        if ws.protocol.state is not State.OPEN:
            return
        try:
            if isinstance(last := pending[-1], Shared) and self._raw and size <= MAX_FRAME_OUT:
                # The common case: batches shared with other sockets, framed once.
                ws.transport.write(self._shared_wire(pending, last))
                frames = 1
            else:
                data = LINE_SEPARATOR.join(
                    p.payload if isinstance(p, Shared) else p for p in pending
                )
                if len(data) <= MAX_FRAME_OUT:
                    ws.protocol.send_text(data)
                    frames = 1
                else:
                    frames = self._send_split(data)
                ws.send_data()
        except Exception as exc:  # the transport failed: the handler sees the close
            log.debug("write to %s failed: %s", ws.remote_address, exc)
            return
        self._metrics.frames_sent += frames
        self._metrics.bytes_sent += size + len(pending) - 1
        self._buffered = ws.transport.get_write_buffer_size()
        if self._buffered > self._limit and not paced:
            self._too_slow()

    @staticmethod
    def _shared_wire(pending: list[bytes | Shared], last: Shared) -> bytes:
        if len(pending) == 1:
            return last.wire()
        run = last.run
        if run is not None and run[0] == pending:  # list ==: item identity first
            return run[1]
        data = LINE_SEPARATOR.join(p.payload if isinstance(p, Shared) else p for p in pending)
        wire = last.frame(data)
        last.run = (pending, wire)
        return wire

    def _send_split(self, data: bytes) -> int:
        # Clients cap what they accept (websockets: 1 MiB by default), so a big
        # backlog (a history page of large events, say) leaves in several frames,
        # split between messages: JSON lines never contain a raw newline.
        view, start, frames, size = memoryview(data), 0, 0, len(data)
        while start < size:
            end = size
            if size - start > MAX_FRAME_OUT:
                end = data.rfind(LINE_SEPARATOR, start, start + MAX_FRAME_OUT + 1)
                if end <= start:  # one message bigger than the cap goes alone
                    end = data.find(LINE_SEPARATOR, start + 1)
                    end = size if end == -1 else end
            self.ws.protocol.send_text(view[start:end])
            frames += 1
            start = end + 1
        return frames

    async def drained(self, patience_s: float) -> bool:
        """Flush now, then wait until the socket has room; False if it stayed full."""
        if self._scheduled:
            self.flush()
        if self._closing:
            return False
        try:
            async with asyncio.timeout(patience_s):
                await self.ws.drain()
        except TimeoutError:
            return False
        self._buffered = self.ws.transport.get_write_buffer_size()
        return not self._closing

    def cut(self, code: CloseCode, reason: str | None = None) -> None:
        """Close the connection with ``code``; stop sending to it at once."""
        if self._closing:
            return
        self._closing = True
        self._pending = []
        self._pending_bytes = 0
        loop = asyncio.get_running_loop()
        # Detaching changes the hub's subscriber sets, which the caller may be
        # iterating over right now (a fan-out): do it after this turn.
        loop.call_soon(self._on_cut, self)
        self._close_task = loop.create_task(
            self._close(code, reason if reason is not None else CLOSE_REASONS[code])
        )

    async def _close(self, code: int, reason: str) -> None:
        ws = self.ws
        try:
            # close() waits for the write buffer to drain, which a client that
            # does not read never lets happen: bound it, then drop the TCP connection.
            async with asyncio.timeout(self.close_timeout_s):
                await ws.close(code, reason)
        except TimeoutError:
            ws.transport.abort()

    async def wait_closed(self) -> None:
        """Until a close started by :meth:`cut` has finished."""
        if self._close_task is not None:
            with contextlib.suppress(Exception):
                await self._close_task
