"""A minimal Server-Sent Events client as an asyncio Protocol, the twin of :mod:`bench.wsclient`.

``GET`` with ``Accept: text/event-stream`` over HTTP/1.1, the response head
checked for ``200``, the chunked body taken apart in ``data_received``; every
chunk's payload is handed to :meth:`SSEClient.on_message` whole (the gateway
writes what is ready for a reader as one chunk, as it writes one WebSocket
frame). It never parses SSE fields or JSON on the hot path: the load generator
counts events by their ``bench_t`` stamps, as it does for WebSocket frames.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class SSEClient(asyncio.Protocol):
    """One connection. Subclass and override :meth:`on_message` / :meth:`on_closed`."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: Like a WebSocket close code for the load generator: None for a body that
        #: ended with its last chunk, 1006 for a connection that just went away.
        self.close_code: int | None = None
        self._buf = bytearray()
        self._head_done = False
        self._ended = False

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, self.host, self.port)
        await self.opened

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:end]).split(b"\r\n", 1)[0]
            chunked = b"transfer-encoding: chunked" in bytes(buf[:end]).lower()
            del buf[: end + 4]
            if b" 200 " not in status or not chunked:
                self._fail(ConnectionError(status.decode(errors="replace")))
                return
            self._head_done = True
            if not self.opened.done():
                self.opened.set_result(None)
        self._parse()

    def _parse(self) -> None:
        buf = self._buf
        pos, size = 0, len(buf)
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                break
            n = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
            start = line_end + 2
            if size < start + n + 2:
                break
            if n == 0:
                self._ended = True
                if self.transport is not None:
                    self.transport.close()
                pos = size
                break
            payload = bytes(buf[start : start + n])
            pos = start + n + 2
            self.on_message(payload)
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._ended and self._head_done:
            self.close_code = 1006
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed before the response"))
        if not self.closed.done():
            self.closed.set_result(None)
        self.on_closed()

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    # --- API ---------------------------------------------------------------------------

    def close(self, code: int = 1000) -> None:
        if self.transport is not None:
            self.transport.close()

    def on_message(self, data: bytes) -> None:
        """One chunk of the body (override)."""

    def on_closed(self) -> None:
        """The TCP connection is gone (override)."""
