"""The gateway: websockets ``serve``, auth at the handshake, one handler per connection.

Embedding one (``async with Gateway(settings.replace(port=0)) as gw``) is shown,
and run by the suite, in docs/protocol.md#running-it.

The handler of a connection only reads: it parses each client frame
(:mod:`streamfan.protocol`), checks it against the connection's
:class:`~gateway.session.Session` and hands subscriptions to the
:class:`~gateway.hub.Hub`. Everything sent to the client goes through the
connection's :class:`~gateway.peer.Peer`, in order, without waiting on the socket.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from http import HTTPStatus
from pathlib import Path
from types import TracebackType

import redis.asyncio as aioredis
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway import auth, cluster_live, doors, memory, metrics, wire
from gateway.completions import OpenAIDoor
from gateway.endpoints import STATIC_DIR, Endpoints, respond
from gateway.history import History
from gateway.hub import Hub
from gateway.live import LiveSource
from gateway.peer import Flusher, Peer
from gateway.router import router_factory
from gateway.session import Session
from gateway.tuning import RECV_QUEUE, Tuning
from streamfan import events, protocol, redact, store
from streamfan.cluster import EventsRedis
from streamfan.errors import RedisUnavailable
from streamfan.protocol import Cancel, CloseCode, Invalid, Ping, Subscribe, Unsubscribe
from streamfan.scripts import Reply
from streamfan.settings import Settings

log = logging.getLogger(__name__)
#: websockets logs every connection opened and closed here, at INFO.
connection_log = logging.getLogger("gateway.connections")

READ_CLIENT_NAME = "streamfan-gateway"
CANCEL_REASON = "cancelled by a subscriber"


class Gateway:
    """One gateway process's server. ``start()``/``stop()`` or ``async with``."""

    def __init__(
        self,
        settings: Settings,
        *,
        tuning: Tuning | None = None,
        static_dir: Path = STATIC_DIR,
    ) -> None:
        self.settings = settings
        self.tuning = tuning or Tuning()
        self.metrics = metrics.Metrics()
        self.registry = metrics.make_registry(self.metrics)
        self.peers: set[Peer] = set()
        self._admissions: weakref.WeakKeyDictionary[ServerConnection, auth.Admission] = (
            weakref.WeakKeyDictionary()
        )
        self._server: Server | None = None
        self._redis: EventsRedis | None = None
        self._hub: Hub | None = None
        self._live: LiveSource | None = None
        self._history: History | None = None
        self._flusher: Flusher | None = None
        self._doors: doors.Doors | None = None
        self._trim = memory.TrimPolicy(
            self.tuning.trim_min_drop, self.tuning.trim_fraction, self.tuning.trim_max_open
        )
        #: Set by stop(): connections whose handler starts later are closed at once.
        self._stopping: CloseCode | None = None
        self._endpoints = Endpoints(self._ready, self._render_metrics, static_dir)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> Gateway:
        s, t = self.settings, self.tuning
        auth.require_a_secret(s)
        # websockets logs each handshake's request line and headers (?token=,
        # Authorization) at DEBUG on this logger: scrubbed here too, for an
        # application that embeds the gateway with handlers of its own.
        redact.guard(connection_log, s.secrets)
        self._redis, self._live, turns = await cluster_live.open_events(
            s, t, self.metrics, READ_CLIENT_NAME
        )
        self._history = History(self._redis, s.keys, concurrency=turns)
        self._hub = Hub(self._history, self._live, self.metrics, t)
        self._flusher = Flusher()
        self.metrics.gauges = {
            "open_connections": ("Open WebSocket connections", lambda: len(self.peers)),
            "http_streams": (
                "Open streamed responses of the HTTP doors (SSE, /v1 streams)",
                lambda: len(self._doors.sinks) if self._doors is not None else 0,
            ),
            "subscriptions": (
                "Subscriptions held by open connections",
                lambda: self._hub_().subscription_count(),
            ),
            "streams": ("Streams watched on pub/sub", lambda: len(self._hub_().streams)),
            "redis_up": ("1 while the pub/sub connection is up", lambda: float(self._live_().up)),
        }
        self._hub.start()
        ctx = doors.Context(s, t, self._hub, self._history, self.metrics, self._flusher)
        self._doors = doors.Doors(ctx).start()
        OpenAIDoor(self._doors)  # mounts itself on /v1
        self._hub.spawn(
            memory.reclaim(lambda: len(self.peers), self._trim, t.trim_check_s, self.metrics),
            name="reclaim",
        )
        try:
            self._server = await serve(
                self._handler,
                s.host,
                s.port,
                process_request=self._process_request,
                # The doors stream responses, which websockets cannot: a router hands
                # each connection to them or to websockets (gateway/router.py, wire.py).
                create_connection=router_factory(doors.is_door, self._doors, wire.Connection),
                compression="deflate" if s.compression else None,
                open_timeout=s.handshake_timeout_s,
                ping_interval=s.ping_interval_s,
                ping_timeout=s.ping_timeout_s,
                close_timeout=t.close_timeout_s,
                max_size=s.max_frame_bytes,
                max_queue=RECV_QUEUE,
                server_header="streamfan",
                logger=connection_log,
            )
        except BaseException:
            await self._hub.stop()
            await self._redis.aclose()
            raise
        log.info("gateway listening on %s", self.url)
        return self

    async def stop(self, code: CloseCode = CloseCode.GOING_AWAY) -> None:
        """Stop accepting, close every socket with ``code`` (1001: reconnect elsewhere)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close(close_connections=False)
        self._stopping = code
        for peer in list(self.peers):
            peer.cut(code)
        if self._doors is not None:
            self._doors.stop()
        await server.wait_closed()
        await self._hub_().stop()
        if self._doors is not None:
            await self._doors.aclose()
        if isinstance(self._redis, aioredis.Redis):
            await self._redis.aclose(close_connection_pool=True)
        elif self._redis is not None:
            await self._redis.aclose()
        log.info("gateway stopped")

    async def __aenter__(self) -> Gateway:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def host(self) -> str:
        assert self._server is not None, "the gateway is not started"
        return str(self._server.sockets[0].getsockname()[0])

    @property
    def port(self) -> int:
        assert self._server is not None, "the gateway is not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """``ws://HOST:PORT`` (append ``/ws`` or ``/streams/{ID}``)."""
        host = self.host
        return f"ws://[{host}]:{self.port}" if ":" in host else f"ws://{host}:{self.port}"

    @property
    def http_url(self) -> str:
        return "http" + self.url[2:]

    @property
    def hub(self) -> Hub:
        return self._hub_()

    def _hub_(self) -> Hub:
        assert self._hub is not None, "the gateway is not started"
        return self._hub

    def _live_(self) -> LiveSource:
        assert self._live is not None, "the gateway is not started"
        return self._live

    # --- HTTP and the handshake ------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path = auth.split_target(request.path)[0]
        if not auth.is_websocket_path(path):
            return await self._endpoints.handle(connection, path)

        def header(name: str) -> str | None:
            values = request.headers.get_all(name)
            return values[0] if values else None

        result = auth.admit(self.settings, request.path, header)
        if isinstance(result, auth.Refusal):
            extra = {}
            if result.status == HTTPStatus.UNAUTHORIZED:
                extra["WWW-Authenticate"] = 'Bearer realm="streamfan"'
            return respond(connection, result.status, result.message + "\n", headers=extra)
        self._admissions[connection] = result
        return None

    async def _ready(self) -> str | None:
        try:
            async with asyncio.timeout(2.0):
                reachable = await self._history_().ping()
        except TimeoutError:
            reachable = False
        if not reachable:
            return "Redis is unreachable"
        if not self._live_().up:
            return "the pub/sub connection is down"
        return None

    def _history_(self) -> History:
        assert self._history is not None
        return self._history

    def _render_metrics(self) -> bytes:
        return metrics.render(self.registry)

    # --- one connection ------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        admission = self._admissions.pop(ws, None)
        if admission is None:  # pragma: no cover - process_request always admits first
            await ws.close(CloseCode.INTERNAL_ERROR, "no admission")
            return
        s, hub = self.settings, self._hub_()
        loop = asyncio.get_running_loop()
        session = Session(
            admission.grant,
            max_subscriptions=s.max_subscriptions,
            max_messages_per_s=s.max_messages_per_s,
            now=loop.time(),
        )
        assert self._flusher is not None
        peer = Peer(
            ws,
            session,
            self._flusher,
            self.metrics,
            send_buffer_bytes=s.send_buffer_bytes,
            close_timeout_s=self.tuning.close_timeout_s,
            on_cut=hub.detach,
        )
        if isinstance(ws, wire.Connection):
            ws.on_control = functools.partial(self._on_control, peer)
        self.peers.add(peer)
        self._trim.opened(len(self.peers))
        self.metrics.connections_total += 1
        if self._stopping is not None:
            # Its handshake finished as stop() was closing everything else.
            peer.cut(self._stopping)
        expiry = None
        if session.expires_at is not None:
            delay = max(0.0, session.expires_at - time.time())
            expiry = loop.call_later(delay, peer.cut, CloseCode.TOKEN_EXPIRED)
        try:
            if admission.stream is not None:
                hub.subscribe(peer, admission.stream, admission.position)
            else:
                try:
                    async with asyncio.timeout(s.handshake_timeout_s):
                        first = await ws.recv()
                except TimeoutError:
                    peer.cut(CloseCode.IDLE)
                else:
                    await self._on_frame(peer, first)
            # Read on after a cut too: the client's close frame must be read.
            async for frame in ws:
                await self._on_frame(peer, frame)
        except ConnectionClosed:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            if isinstance(ws, wire.Connection):
                ws.on_control = None
            hub.detach(peer)
            self.peers.discard(peer)
            await peer.wait_closed()

    async def _on_frame(self, peer: Peer, frame: str | bytes) -> None:
        if peer.closing:
            return
        if not peer.session.admit(asyncio.get_running_loop().time()):
            self._flood(peer)
            return
        op = protocol.parse_frame(frame)
        if not isinstance(op, Invalid):
            refusal = peer.session.authorize(op)
            if refusal is not None:
                op = refusal
        if isinstance(op, Invalid):
            self.metrics.error(op.code)
            peer.send(protocol.error(op.stream, op.code, op.message, reply_to=op.reply_to))
        elif isinstance(op, Ping):
            peer.send(protocol.PONG)
        elif isinstance(op, Subscribe):
            self._hub_().subscribe(peer, op.stream, op.position)
        elif isinstance(op, Unsubscribe):
            self._hub_().unsubscribe(peer, op.stream)
        elif isinstance(op, Cancel):
            await self._cancel(peer, op.stream)

    def _on_control(self, peer: Peer) -> None:
        """A PING or PONG from the client: a message like any other to the flood limit."""
        if not peer.closing and not peer.session.admit(asyncio.get_running_loop().time()):
            self._flood(peer)

    def _flood(self, peer: Peer) -> None:
        self.metrics.flood_disconnects += 1
        log.info("client %s flooding: cut", peer.ws.remote_address)
        rate = self.settings.max_messages_per_s
        peer.cut(CloseCode.FLOOD, f"flood: more than {rate:g} messages/s")

    async def _cancel(self, peer: Peer, stream_id: str) -> None:
        s = self.settings
        assert self._redis is not None
        try:
            status = await store.request_cancel(
                self._redis,
                s.keys,
                stream_id,
                reason=CANCEL_REASON,
                retention_s=s.retention_s,
                maxlen=s.maxlen,
            )
        except RedisUnavailable:
            code, message = protocol.UNAVAILABLE, "Redis is unavailable; cancel again shortly"
        else:
            if status != Reply.NOT_FOUND:
                log.info("stream %s: cancel requested by a subscriber (%s)", stream_id, status)
                # The store says "cancelling" for a running job it flagged; the
                # answer gives the stream's status, as every other message does.
                status = events.STATUS_RUNNING if status == Reply.CANCELLING else status
                peer.send(protocol.cancelling(stream_id, status))
                return
            code, message = protocol.NOT_FOUND, f"stream {stream_id!r} not found"
        self.metrics.error(code)
        peer.send(protocol.error(stream_id, code, message, reply_to=protocol.CANCEL))
