"""What arrives on a socket besides well-formed frames: bytes sent early, and control frames.

:class:`Connection` is the gateway's websockets server connection (with
:mod:`gateway.memory`'s release on close). It changes two things:

* **Bytes after the request head, before the response.** websockets' parser
  reads the request head and goes straight on to parse WebSocket frames from
  whatever follows it. A second pipelined HTTP request, or one stray blank line
  after the first, arriving in the same read or before the answer is written,
  is then a broken frame: the parser fails the connection and half-closes the
  socket, and the answer that follows trips websockets' assertion that EOF was
  sent only once (``ERROR unexpected internal error`` and a traceback, for any
  unauthenticated client, 3 connections in 10 in a probe). Here the bytes after
  the head's blank line, and an EOF, are held until the handshake has answered:
  after a plain HTTP answer (which says ``Connection: close``) they are dropped
  with the connection; after ``101`` they are parsed as frames, as before. A
  client sends nothing before the ``101`` (RFC 6455, 4.1), so at most
  :data:`HOLD_LIMIT` bytes are held; more ends the connection.
* **Control frames count as messages.** websockets answers each PING with a
  PONG by itself, below the handler, so the flood limit never saw them: a
  client could make the gateway write as fast as it sends. :attr:`on_control`
  is called for every PING and PONG received, and the gateway charges it to
  the connection's token bucket like a text frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.protocol import State

from gateway.memory import Connection as ReleasingConnection

log = logging.getLogger(__name__)

#: Bytes a client may send between its request head and our answer (none is legal).
HOLD_LIMIT = 64 * 1024
#: The blank line that ends an HTTP request head (websockets requires CRLF lines).
HEAD_END = b"\r\n\r\n"
_CONTROL = frozenset({Opcode.PING, Opcode.PONG})


class Connection(ReleasingConnection):
    """A server connection that holds early bytes and reports control frames."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Called for each PING or PONG the client sends (the gateway's flood limit).
        self.on_control: Callable[[], None] | None = None
        # None until the request head is complete; then what came after it.
        self._held: list[bytes] | None = None
        self._held_size = 0
        self._held_eof = False
        self._answered = False
        # The last bytes of the head so far: its blank line may span two reads.
        self._head_tail = b""

    # --- early bytes ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._held is not None:
            self._hold(data)
            return
        if not self._answered and self.protocol.state is State.CONNECTING:
            window = self._head_tail + data
            end = window.find(HEAD_END)
            if end >= 0:
                cut = end + len(HEAD_END) - len(self._head_tail)
                self._held = []
                super().data_received(data[:cut])
                if cut < len(data):
                    self._hold(data[cut:])
                return
            self._head_tail = window[-(len(HEAD_END) - 1) :]
        super().data_received(data)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        if self._held is not None:
            self._held_eof = True
            # Keep the transport open: the answer has yet to be written.
            return True
        super().eof_received()
        return None

    def _hold(self, data: bytes) -> None:
        self._held_size += len(data)
        if self._held_size > HOLD_LIMIT:
            log.debug(
                "client %s sent %d bytes before the handshake answer: cut",
                self.remote_address,
                self._held_size,
            )
            self._held = None
            self.transport.abort()
            return
        assert self._held is not None
        self._held.append(data)

    def send_data(self) -> None:
        super().send_data()
        if self._held is not None and (
            self.protocol.state is not State.CONNECTING or self.protocol.eof_sent
        ):
            # The answer is out (101, or a plain HTTP answer and EOF): what the
            # client sent meanwhile may be read now. Soon, not here: websockets
            # calls this inside its own write path.
            self.loop.call_soon(self._release)

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().handshake(*args, **kwargs)
        finally:
            self._answered = True
            if self._held is not None and self.protocol.state is State.CONNECTING:
                # No answer went out (timed out, or the client left): websockets'
                # handler aborts the connection next; nothing held is read.
                self._held = None

    def _release(self) -> None:
        held, eof = self._held, self._held_eof
        if held is None:
            return
        self._held, self._held_eof, self._held_size = None, False, 0
        # After 101 the bytes are frames; after a plain answer websockets'
        # parser discards them, and the client's EOF closes the connection.
        if held:
            super().data_received(b"".join(held))
        if eof:
            super().eof_received()
            # What asyncio does when eof_received() returns a false value.
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        # The callback holds the gateway's Peer, which holds this connection: a
        # cycle the cyclic GC would have to find (see gateway/memory.py).
        self.on_control = None
        self._held = None
        super().connection_lost(exc)

    # --- control frames -----------------------------------------------------------------

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode in _CONTROL and self.on_control is not None:
            self.on_control()
        super().process_event(event)
