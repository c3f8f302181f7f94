"""A streamed HTTP response as a hub subscriber: the write side of the HTTP doors.

The twin of :class:`gateway.peer.Peer` for an :class:`~gateway.http.Exchange`:
the hub hands it batches (:class:`gateway.batch.Batch`), it queues them and
writes what is pending once per turn of the event loop (the gateway's
:class:`~gateway.peer.Flusher`), and a response whose unsent bytes (pending
plus the transport's buffer) outgrow ``send_buffer_bytes`` is cut with
``too_slow`` — the connection is dropped, and a client resumes from the last id
it saw (``Last-Event-ID``), as a WebSocket client does from its last ``id``.

Nothing is written before the hub says the subscription is in: a refusal
(401 and 403 before the hub, 404 ``not_found``, 410 ``gone``, 503) is still an
HTTP status with a JSON body. From the first byte on, trouble is a message of
the door's format (:meth:`HttpCodec.failure`) and the response ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from gateway.batch import Batch, Codec, Shared
from gateway.http import Exchange
from gateway.metrics import Metrics
from gateway.session import Session
from streamfan import protocol
from streamfan.page import Entry
from streamfan.protocol import CLOSE_REASONS, CloseCode

if TYPE_CHECKING:
    from gateway.peer import Flusher
    from gateway.streams import Subscription

log = logging.getLogger(__name__)


class HttpCodec(Codec, Protocol):
    """A door's format: a :class:`~gateway.batch.Codec` and its response's edges."""

    content_type: str
    #: Refusals before the first byte sent as a 200 whose body is only the failure
    #: message: a browser's EventSource gives up for good on any other status, but
    #: retries (resuming) after a response that ended.
    in_band: frozenset[str]

    def preamble(self) -> bytes:
        """The first bytes of the body."""
        ...

    def failure(self, code: str, message: str) -> bytes:
        """The last message of a response that failed after its first byte."""
        ...


#: Refuse before the first byte: (protocol error code, message) → an HTTP response.
Refuser = Callable[[Exchange, str, str], None]


class HttpSink:
    __slots__ = (
        "_buffered",
        "_close_timeout_s",
        "_flusher",
        "_limit",
        "_metrics",
        "_on_cut",
        "_paced",
        "_pending",
        "_pending_bytes",
        "_refuse",
        "_scheduled",
        "closing",
        "codec",
        "exchange",
        "headers",
        "session",
        "wrote",
    )

    def __init__(
        self,
        exchange: Exchange,
        session: Session,
        codec: HttpCodec,
        flusher: Flusher,
        metrics: Metrics,
        *,
        send_buffer_bytes: int,
        close_timeout_s: float,
        headers: list[tuple[str, str]],
        refuse: Refuser,
        on_cut: Callable[[HttpSink], None],
    ) -> None:
        self.exchange = exchange
        self.session = session
        self.codec = codec
        self.headers = headers
        self._flusher = flusher
        self._metrics = metrics
        self._limit = send_buffer_bytes
        self._close_timeout_s = close_timeout_s
        self._refuse = refuse
        self._on_cut = on_cut
        self._pending: list[bytes | Shared] = []
        self._pending_bytes = 0
        self._scheduled = False
        self.closing = False
        #: The transport's buffer after the last flush (it only shrinks until the
        #: next), so the fan-out need not ask the transport for every batch.
        self._buffered = 0
        #: History is pending: it paces itself (the hub waits in drained()), not cut.
        self._paced = False
        #: Bytes went out since the keep-alive ticker last looked (it resets this).
        self.wrote = True

    # --- the hub's side -------------------------------------------------------------

    def subscribed(self, sub: Subscription, status: str, last_id: str) -> None:
        if self.closing:
            return
        self.exchange.start(200, self.codec.content_type, self.headers)
        self.send(self.codec.preamble(), bounded=False)

    def replay(self, sub: Subscription, entries: Sequence[Entry], final_status: str | None) -> None:
        codec, st = self.codec, sub.state
        lines = [codec.entry(st, eid, ev) for eid, ev in entries]
        if final_status is not None:
            lines.append(codec.end(sub.stream_id, final_status))
        self.send(codec.join(lines), bounded=False)
        if final_status is not None:
            self.finish()

    def joined(self, sub: Subscription) -> None:
        pass

    def deliver(self, batch: Batch, first: int = 0) -> None:
        if first == 0:
            # The hot path, as gateway.peer.Peer.send_shared: no call it can spare.
            if self.closing:
                return
            shared = batch.shared(self.codec)
            if shared.size:
                self._pending.append(shared)
                self._pending_bytes += shared.size
                if self._pending_bytes + self._buffered > self._limit:
                    self._too_slow()
                elif not self._scheduled:
                    self._scheduled = True
                    self._flusher.schedule(self)
        else:
            self.send(self.codec.join(batch.lines(self.codec)[first:]))
        if batch.status is not None:
            self.finish()

    def end(self, sub: Subscription, status: str) -> None:
        self.send(self.codec.end(sub.stream_id, status), bounded=False)
        self.finish()

    def error(self, sub: Subscription, code: str, message: str, *, answered: bool) -> None:
        if self.closing:
            return
        if not self.exchange.started:
            if code not in self.codec.in_band:
                self.closing = True
                self._refuse(self.exchange, code, message)
                return
            self.exchange.start(200, self.codec.content_type, self.headers)
        self.send(self.codec.failure(code, message), bounded=False)
        self.finish()

    # --- writing -------------------------------------------------------------------------

    def send(self, data: bytes, *, bounded: bool = True) -> None:
        if self.closing or not data:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._queued(bounded)

    def send_shared(self, shared: Shared) -> None:
        if self.closing or not shared.size:
            return
        self._pending.append(shared)
        self._pending_bytes += shared.size
        self._queued(True)

    def _queued(self, bounded: bool) -> None:
        if not bounded:
            self._paced = True
        elif self._pending_bytes + self._buffered > self._limit:
            self._too_slow()
            return
        if not self._scheduled:
            self._scheduled = True
            self._flusher.schedule(self)

    def _too_slow(self) -> None:
        self._metrics.slow_disconnects += 1
        log.info("HTTP reader of %s too slow: cut", self.exchange.path)
        self.cut(CloseCode.TOO_SLOW)

    def flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        if not pending or self.exchange.finished:
            return
        size, paced = self._pending_bytes, self._paced
        self._pending = []
        self._pending_bytes = 0
        self._paced = False
        ex = self.exchange
        last = pending[-1]
        if isinstance(last, Shared) and ex.chunked:
            # The common case: batches shared with other readers, framed once.
            ex.write(self._shared_wire(pending, last))
        else:
            ex.write(ex.frame(b"".join(p.payload if isinstance(p, Shared) else p for p in pending)))
        self.wrote = True
        self._metrics.frames_sent += 1
        self._metrics.bytes_sent += size
        self._buffered = ex.unsent_bytes()
        if self._buffered > self._limit and not paced and not self.closing:
            self._too_slow()

    @staticmethod
    def _shared_wire(pending: list[bytes | Shared], last: Shared) -> bytes:
        """One chunk for a run of batches; readers in step get the same run, so the
        first one's chunk is kept on its last batch for the others (as Peer does)."""
        if len(pending) == 1:
            return last.wire()
        run = last.run
        if run is not None and run[0] == pending:  # list ==: item identity first
            return run[1]
        wire = last.frame(b"".join(p.payload if isinstance(p, Shared) else p for p in pending))
        last.run = (pending, wire)
        return wire

    def finish(self) -> None:
        """Write what is pending and end the response (the subscription is over)."""
        if self.closing:
            return
        self.flush()
        self.closing = True
        self.exchange.finish()
        asyncio.get_running_loop().call_soon(self._on_cut, self)

    async def drained(self, patience_s: float) -> bool:
        if self._scheduled:
            self.flush()
        if self.closing:
            return False
        return await self.exchange.drained(patience_s) and not self.closing

    def cut(self, code: CloseCode, reason: str | None = None) -> None:
        """Stop at once. Going away or an expired token ends the response cleanly (a
        client reconnects); too slow drops the connection: its buffer is full."""
        if self.closing:
            return
        self._pending = []
        self._pending_bytes = 0
        asyncio.get_running_loop().call_soon(self._on_cut, self)
        if code is CloseCode.TOO_SLOW or not self.exchange.started:
            self.closing = True
            self.exchange.abort()
            return
        text = reason if reason is not None else CLOSE_REASONS[code]
        self.send(self.codec.failure(_CUT_CODES.get(code, protocol.UNAVAILABLE), text))
        self.flush()
        self.closing = True
        self.exchange.finish()
        self.exchange.close_soon(self._close_timeout_s)

    def lost(self) -> None:
        """The client went away."""
        if not self.closing:
            self.closing = True
            self._pending = []
            self._on_cut(self)


#: The error code a cut response ends with (WebSocket close code → protocol code).
_CUT_CODES: dict[CloseCode, str] = {
    CloseCode.GOING_AWAY: protocol.UNAVAILABLE,
    CloseCode.TOKEN_EXPIRED: protocol.FORBIDDEN,
}
