"""HTTP/1.1 on the gateway's port for the doors: h11, responses whole or streamed.

:class:`HttpConnection` is an asyncio protocol that the router
(:mod:`gateway.router`) hands a connection to once h11 has read a request
head meant for a door. It reads the body (at most ``max_body`` bytes: 413
beyond), gives the whole request to the handler as an :class:`Exchange`, and
serves the next request on the same connection once the response is complete
(keep-alive, as the SDKs' connection pools expect). A response is either whole
(:meth:`Exchange.respond`) or streamed (:meth:`Exchange.start` then
:meth:`Exchange.write`… :meth:`Exchange.finish`), chunked for HTTP/1.1 clients.

Writes never wait: the bytes go to the transport at once, and whoever streams
watches :meth:`Exchange.unsent_bytes` (the transport's buffer) and
:meth:`Exchange.drained`, as :mod:`gateway.peer` does for a WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qs, urlsplit

import h11

from streamfan.requests import MAX_REQUEST_BYTES

log = logging.getLogger(__name__)

#: Request bodies larger than this are refused with 413: the most a chat request
#: may be (it would sit in Redis twice, as the job and in the queue).
MAX_BODY_BYTES = MAX_REQUEST_BYTES
#: After a 413, how long the rest of the refused body may take to arrive.
REFUSED_BODY_WAIT_S = 10.0

HttpHandler = Callable[["Exchange"], Awaitable[None]]


def chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk (never an empty one: that would end the body)."""
    return b"%x\r\n%b\r\n" % (len(payload), payload) if payload else b""


class Exchange:
    """One request (read whole) and its response."""

    def __init__(self, conn: HttpConnection, request: h11.Request, body: bytes) -> None:
        self._conn = conn
        self.method = request.method.decode("ascii", "replace").upper()
        self.target = request.target.decode("ascii", "replace")
        url = urlsplit(self.target)
        self.path = url.path
        self.query = parse_qs(url.query)
        self.headers: dict[str, str] = {}
        for name, value in request.headers:
            key = name.decode("ascii", "replace").lower()
            text = value.decode("latin-1")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text
        self.body = body
        #: Framed as chunks (HTTP/1.1); an HTTP/1.0 body ends when the connection does.
        self.chunked = request.http_version == b"1.1"
        self.started = False
        self.finished = False
        #: Called once when the connection is lost before :meth:`finish`; set by
        #: whoever answers after the handler returned (a streamed response).
        self.on_lost: Callable[[], None] | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def closed(self) -> bool:
        return self._conn.lost

    def respond(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """A whole response."""
        extra = [*(headers or []), ("Content-Length", str(len(body)))]
        self._head(status, content_type, extra)
        if body:
            self._conn.send_event(h11.Data(data=body))
        self.finish()

    def start(self, status: int, content_type: str, headers: list[tuple[str, str]]) -> None:
        """The head of a streamed response; the body follows with :meth:`write`."""
        extra = list(headers)
        extra.append(("Transfer-Encoding", "chunked") if self.chunked else ("Connection", "close"))
        self._head(status, content_type, extra)

    def _head(self, status: int, content_type: str, headers: list[tuple[str, str]]) -> None:
        assert not self.started, "one response per request"
        self.started = True
        all_headers = [
            ("Server", "streamfan"),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
            *headers,
        ]
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b""
        self._conn.send_event(h11.Response(status_code=status, headers=all_headers, reason=reason))

    def frame(self, payload: bytes) -> bytes:
        return chunk(payload) if self.chunked else payload

    def write(self, wire: bytes) -> None:
        """Bytes of the body, already framed (:meth:`frame`)."""
        if not self.finished and wire:
            self._conn.send_body(wire)

    def finish(self) -> None:
        """End the response; the connection serves the next request (or closes)."""
        if self.finished:
            return
        self.finished = True
        self._conn.finished(self)

    def unsent_bytes(self) -> int:
        return self._conn.buffered()

    async def drained(self, patience_s: float) -> bool:
        return await self._conn.drained(patience_s)

    def abort(self) -> None:
        """Drop the connection (a client too slow to read even a close)."""
        self._conn.abort()

    def close_soon(self, patience_s: float) -> None:
        """Close the connection once its buffer is written, or drop it after ``patience_s``."""
        self._conn.close()
        asyncio.get_running_loop().call_later(patience_s, self._conn.abort)


class HttpConnection(asyncio.Protocol):
    """One HTTP connection after the router handed it over.

    It stays in ``connections`` while open (the gateway closes them when it
    stops), and closes itself after ``idle_s`` with no request in flight: an
    idle keep-alive connection, or one whose request never arrives whole.
    """

    def __init__(
        self,
        conn: h11.Connection,
        first: h11.Request,
        handler: HttpHandler,
        connections: set[HttpConnection],
        idle_s: float,
    ) -> None:
        self._h11 = conn
        self._handler = handler
        self._connections = connections
        self._idle_s = idle_s
        self._idle: asyncio.TimerHandle | None = None
        self._request: h11.Request | None = first
        self._body = bytearray()
        self._exchange: Exchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.lost = False
        #: A 413 went out: the rest of the body is read and dropped, then we close.
        self._refusing = False

    # --- asyncio's side -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)
        self._connections.add(self)
        assert self._request is not None
        if self._too_big(self._request):
            return
        self._process()

    def data_received(self, data: bytes) -> None:
        self._h11.receive_data(data)
        if self._exchange is None or self._refusing:
            self._process()

    def eof_received(self) -> bool | None:
        self._h11.receive_data(b"")
        return None  # close: a client that stops sending has gone

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._connections.discard(self)
        self._wait_idle(False)
        self._writable.set()
        exchange, self._exchange = self._exchange, None
        if exchange is not None and not exchange.finished:
            exchange.finished = True
            if exchange.on_lost is not None:
                exchange.on_lost()
        if self._task is not None and not self._task.done():
            # A request still being answered (waiting for a reply, say) is
            # abandoned; the job it started runs on (disconnect is not cancel).
            self._task.cancel()

    # --- reading ---------------------------------------------------------------------

    def _too_big(self, request: h11.Request) -> bool:
        for name, value in request.headers:
            if name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                self._refuse_body()
                return True
        return False

    def _refuse_body(self) -> None:
        body = (
            b'{"error":{"message":"the request body is larger than %d bytes",'
            b'"type":"invalid_request_error","param":null,"code":"request_too_large"}}'
            % MAX_BODY_BYTES
        )
        assert self._request is not None
        exchange = Exchange(self, self._request, b"")
        # Read the rest of the body (and drop it) before closing: a client still
        # sending when the socket closes gets a reset instead of the answer.
        self._refusing = True
        exchange.respond(413, body, headers=[("Connection", "close")])
        self._body = bytearray()
        asyncio.get_running_loop().call_later(REFUSED_BODY_WAIT_S, self.abort)
        self._process()

    def _wait_idle(self, on: bool) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if on and not self.lost:
            self._idle = asyncio.get_running_loop().call_later(self._idle_s, self.close)

    @property
    def idle(self) -> bool:
        """No request is being answered (closing it loses nothing)."""
        return self._exchange is None

    def _process(self) -> None:
        self._wait_idle(False)
        self._process_events()
        self._wait_idle(self._exchange is None)

    def _process_events(self) -> None:
        while self._exchange is None and not self.lost:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                self.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if self._refusing:
                if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    self.close()
                    return
                continue
            if isinstance(event, h11.Request):
                self._request = event
                self._body = bytearray()
                if self._too_big(event):
                    return
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > MAX_BODY_BYTES:
                    self._refuse_body()
                    return
            elif isinstance(event, h11.EndOfMessage):
                assert self._request is not None
                exchange = Exchange(self, self._request, bytes(self._body))
                self._exchange = exchange
                self._body = bytearray()
                self._task = asyncio.get_running_loop().create_task(self._run(exchange))
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
                return

    async def _run(self, exchange: Exchange) -> None:
        try:
            await self._handler(exchange)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HTTP %s %s failed", exchange.method, exchange.path)
            if not exchange.started and not self.lost:
                exchange.respond(
                    500,
                    b'{"error":{"message":"internal error","type":"server_error",'
                    b'"param":null,"code":"internal_error"}}',
                )
        if not exchange.started and exchange.on_lost is None and not self.lost:
            log.error("HTTP %s %s: the handler gave no response", exchange.method, exchange.path)
            exchange.respond(500, b'{"error":{"message":"no response"}}')

    # --- writing ---------------------------------------------------------------------

    def send_event(self, event: h11.Event) -> None:
        try:
            data = self._h11.send(event)
        except h11.LocalProtocolError:
            self.close()
            return
        if data and self._transport is not None and not self.lost:
            self._transport.write(data)

    def send_body(self, wire: bytes) -> None:
        # Already framed: h11's own framing would copy every chunk again.
        if self._transport is not None and not self.lost:
            self._transport.write(wire)

    def finished(self, exchange: Exchange) -> None:
        if self.lost:
            return
        if self._h11.our_state is h11.SEND_BODY:
            # The terminating chunk (nothing when close-delimited), and h11's bookkeeping.
            self.send_event(h11.EndOfMessage())
        self._exchange = None
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            self._process()
        elif self._refusing:
            return  # closed once the refused body is read
        elif self._h11.our_state in (h11.MUST_CLOSE, h11.CLOSED) or (
            self._h11.their_state in (h11.MUST_CLOSE, h11.CLOSED)
        ):
            self.close()

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    async def drained(self, patience_s: float) -> bool:
        if self.lost:
            return False
        try:
            async with asyncio.timeout(patience_s):
                await self._writable.wait()
        except TimeoutError:
            return False
        return not self.lost

    def close(self) -> None:
        if self._transport is not None and not self.lost:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None and not self.lost:
            with contextlib.suppress(Exception):
                self._transport.abort()
