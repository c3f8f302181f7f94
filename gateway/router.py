"""One port, two servers: a connection-level router in front of websockets.

websockets answers a plain HTTP request from ``process_request`` with one
complete :class:`~websockets.http11.Response` and then closes the connection;
``process_request`` itself runs under the handshake's ``open_timeout``. It
cannot stream a response body, and the doors (``/streams/{ID}/events``,
``/v1/...``) stream for as long as a reply runs. So the gateway's listening
socket hands each new connection to a :class:`Router` first (websockets'
``create_connection`` hook builds it): it reads the request head with h11
and then gives the transport, with the bytes read so far, to

* :class:`gateway.http.HttpConnection` (h11) for a door's path — a request
  without ``Upgrade: websocket`` to ``/streams/{ID}``, ``/streams/{ID}/events``
  or ``/v1/…``;
* websockets' own connection for everything else, which sees the very bytes
  the client sent, as if nothing stood in between (the WebSocket handshake, and
  ``/healthz``, ``/metrics``, the demo page through ``process_request``).

After the hand-over the transport calls the chosen protocol directly: the
router costs one h11 parse of the head per connection and nothing per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol, cast

import h11
from websockets.asyncio.server import Server, ServerConnection
from websockets.server import ServerProtocol

from gateway.http import Exchange, HttpConnection

#: Longest request head the router reads before it lets websockets refuse it.
MAX_HEAD_BYTES = 16 * 1024


class Router(asyncio.Protocol):
    """A connection until its first request head is read; then someone else's."""

    __slots__ = (
        "_buffer",
        "_deadline",
        "_doors",
        "_h11",
        "_is_door",
        "_make_ws",
        "_transport",
    )

    def __init__(
        self,
        make_ws: Callable[[], ServerConnection],
        is_door: Callable[[h11.Request], bool],
        doors: HttpDoors,
    ) -> None:
        self._make_ws = make_ws
        self._is_door = is_door
        self._doors = doors
        self._deadline: asyncio.TimerHandle | None = None
        self._buffer = bytearray()
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)
        # A client that connects and never sends a whole head is dropped, as
        # websockets would drop it after its open_timeout.
        self._deadline = asyncio.get_running_loop().call_later(
            self._doors.head_timeout_s, self._transport.abort
        )

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._h11.receive_data(data)
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError:
            event = None  # websockets answers what it cannot parse (400)
        if event is h11.NEED_DATA:
            return
        if self._deadline is not None:
            self._deadline.cancel()
        if isinstance(event, h11.Request) and self._is_door(event):
            d = self._doors
            self._hand_to(HttpConnection(self._h11, event, d.handle, d.connections, d.idle_s))
        else:
            ws = self._make_ws()
            self._hand_to(ws)
            ws.data_received(bytes(self._buffer))
        self._buffer = bytearray()

    def _hand_to(self, protocol: asyncio.Protocol) -> None:
        transport = self._transport
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def eof_received(self) -> bool | None:
        return None  # closed before a whole head arrived

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._transport = None


class HttpDoors(Protocol):
    """What the router needs of the doors."""

    #: Open HTTP connections (closed by the gateway when it stops).
    connections: set[HttpConnection]
    #: How long a connection may take to send its first request head.
    head_timeout_s: float
    #: How long a connection may stay open with no request in flight.
    idle_s: float

    async def handle(self, exchange: Exchange) -> None: ...


def router_factory(
    is_door: Callable[[h11.Request], bool],
    doors: HttpDoors,
    websocket: type[ServerConnection],
) -> type[ServerConnection]:
    """websockets' ``create_connection``: a :class:`Router` that builds ``websocket``
    (with the arguments websockets gave) only for a connection that is one."""

    def create(protocol: ServerProtocol, server: Server, **kwargs: Any) -> ServerConnection:
        def make_ws() -> ServerConnection:
            return websocket(protocol, server, **kwargs)

        # websockets hands this object to the event loop as the connection's
        # protocol and touches it no further until its own connection_made.
        return cast("ServerConnection", Router(make_ws, is_door, doors))

    # Typed as websockets asks for it: a class; any callable with its signature works.
    return cast("type[ServerConnection]", create)
