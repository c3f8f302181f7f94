"""The HTTP doors: ``GET /streams/{ID}/events`` (SSE), ``GET /streams/{ID}``, and ``/v1``.

Every door reads through the same :class:`~gateway.hub.Hub` as the WebSocket:
a reader is an :class:`~gateway.httpsink.HttpSink` subscribed like a socket,
so it is caught up from history page by page and then fanned out to with the
same bytes as every other reader of its format, with the same ``too_slow``
cut and no Redis read of its own once live.

Before the hub: the ``Origin`` allow-list (``STREAMFAN_ALLOWED_ORIGINS``, 403
— the WebSocket's rule; allowed browsers get CORS headers, preflights are
answered), the credential (:func:`gateway.auth.credentials`: 401), the right to
read the stream (403), the id and position (400). Every refusal is JSON in
OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, the
``code`` being the WebSocket protocol's (``not_found``, ``gone``…).

The OpenAI-compatible door (``/v1/chat/completions``) is :mod:`gateway.completions`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

import h11
import orjson

from gateway import auth, sse
from gateway.history import History
from gateway.http import Exchange, HttpConnection
from gateway.httpsink import HttpCodec, HttpSink
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.peer import Flusher
from gateway.session import Session
from gateway.tuning import Tuning
from streamfan import events, protocol
from streamfan.assembler import Assembler
from streamfan.errors import InvalidEvent, RedisUnavailable
from streamfan.keys import is_valid_stream_id
from streamfan.page import terminal_status
from streamfan.positions import FROM_START, ZERO, parse_id, parse_position
from streamfan.protocol import CloseCode
from streamfan.settings import Settings
from streamfan.store import StreamMeta
from streamfan.tokens import Grant

log = logging.getLogger(__name__)

V1_PREFIX = "/v1/"
EVENTS_SUFFIX = "/events"
#: Response headers a browser's script may read (``fetch``; the demo page).
EXPOSED_HEADERS = "x-streamfan-stream-id, x-streamfan-token"

#: The protocol's error codes (and the doors' own) → HTTP status.
STATUS_FOR_CODE: dict[str, int] = {
    protocol.BAD_REQUEST: 400,
    "unauthorized": 401,
    protocol.FORBIDDEN: 403,
    protocol.NOT_FOUND: 404,
    "method_not_allowed": 405,
    "idempotency_conflict": 409,
    protocol.GONE: 410,
    "request_too_large": 413,
    "rate_limited": 429,
    protocol.TOO_MANY_SUBSCRIPTIONS: 429,
    protocol.UNAVAILABLE: 503,
    protocol.TOO_SLOW: 503,
}
#: HTTP status → the ``type`` OpenAI's SDKs know.
ERROR_TYPES: dict[int, str] = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def error_body(status: int, code: str, message: str, param: str | None = None) -> bytes:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def is_door(request: h11.Request) -> bool:
    """Whether the router gives this request to the doors rather than to websockets."""
    path = urlsplit(request.target).path  # origin-form or absolute-form
    if path.startswith(V1_PREFIX.encode()):
        return True
    if not path.startswith(auth.STREAMS_PATH.encode()):
        return False
    if path.endswith(EVENTS_SUFFIX.encode()):
        return True
    upgrade = any(name == b"upgrade" for name, _ in request.headers)
    return not upgrade  # ``/streams/{ID}`` with Upgrade is the WebSocket shortcut


@dataclass
class Context:
    """What the doors share with the rest of the gateway."""

    settings: Settings
    tuning: Tuning
    hub: Hub
    history: History
    metrics: Metrics
    flusher: Flusher


class Doors:
    """The HTTP handler: routes, CORS and credentials; streams through the hub."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.sinks: set[HttpSink] = set()
        #: Open HTTP connections, streaming or idle (gateway.router.HttpDoors).
        self.connections: set[HttpConnection] = set()
        self.head_timeout_s = ctx.settings.handshake_timeout_s
        self.idle_s = ctx.tuning.http_idle_s
        self._expiries: dict[HttpSink, asyncio.TimerHandle] = {}
        #: ``/v1/…`` (the OpenAI-compatible door, :mod:`gateway.completions`, which
        #: builds on this module and mounts itself here).
        self.v1: Callable[[Exchange], Awaitable[None]] | None = None
        #: Awaited by :meth:`aclose` (a mounted door's own resources).
        self.closers: list[Callable[[], Awaitable[None]]] = []

    def start(self) -> Doors:
        self.ctx.hub.spawn(self._keepalive(), name="http keep-alive")
        return self

    async def aclose(self) -> None:
        """After :meth:`stop`: what the mounted doors hold (the submitter's pools)."""
        for close in self.closers:
            await close()

    def stop(self) -> None:
        for sink in list(self.sinks):
            sink.cut(CloseCode.GOING_AWAY)
        # Idle keep-alive connections, and requests still waiting for a reply
        # (stream: false): a client retries elsewhere.
        for conn in list(self.connections):
            conn.close()

    # --- helpers for every door ----------------------------------------------------------

    def fail(
        self,
        ex: Exchange,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        status = STATUS_FOR_CODE.get(code, 500)
        extra = list(headers or []) + self.cors(ex)
        if status == HTTPStatus.UNAUTHORIZED:
            extra.append(("WWW-Authenticate", 'Bearer realm="streamfan"'))
        self.ctx.metrics.error(code)
        ex.respond(status, error_body(status, code, message, param), headers=extra)

    def cors(self, ex: Exchange) -> list[tuple[str, str]]:
        origin = ex.header("origin")
        if origin is None:
            return []
        allowed = self.ctx.settings.allowed_origins
        return [
            ("Access-Control-Allow-Origin", origin if allowed else "*"),
            ("Vary", "Origin"),
            ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
        ]

    def grant(self, ex: Exchange) -> Grant | None:
        """The request's credential, or None after answering 401."""
        got = auth.credentials(self.ctx.settings, ex.query, ex.header)
        if isinstance(got, auth.Refusal):
            self.fail(ex, "unauthorized", got.message)
            return None
        return got

    def stream(
        self,
        ex: Exchange,
        grant: Grant,
        stream_id: str,
        position: str,
        codec: HttpCodec,
        headers: list[tuple[str, str]],
        make: Callable[..., HttpSink] = HttpSink,
    ) -> HttpSink:
        """Subscribe a streamed response to ``stream_id`` through the hub."""
        s, loop = self.ctx.settings, asyncio.get_running_loop()
        session = Session(
            grant, max_subscriptions=1, max_messages_per_s=s.max_messages_per_s, now=loop.time()
        )
        sink = make(
            ex,
            session,
            codec,
            self.ctx.flusher,
            self.ctx.metrics,
            send_buffer_bytes=s.send_buffer_bytes,
            close_timeout_s=self.ctx.tuning.close_timeout_s,
            # X-Accel-Buffering: a proxy (nginx) must pass each chunk on at once.
            headers=[*headers, ("X-Accel-Buffering", "no"), *self.cors(ex)],
            refuse=lambda e, code, message: self.fail(e, code, message),
            on_cut=self._done,
        )
        ex.on_lost = sink.lost
        self.sinks.add(sink)
        self.ctx.metrics.connections_total += 1
        if session.expires_at is not None:
            delay = max(0.0, session.expires_at - time.time())
            self._expiries[sink] = loop.call_later(delay, sink.cut, CloseCode.TOKEN_EXPIRED)
        self.ctx.hub.subscribe(sink, stream_id, position)
        return sink

    def _done(self, sink: HttpSink) -> None:
        self.ctx.hub.detach(sink)
        self.sinks.discard(sink)
        timer = self._expiries.pop(sink, None)
        if timer is not None:
            timer.cancel()

    async def _keepalive(self) -> None:
        interval = self.ctx.tuning.http_keepalive_s
        while True:
            await asyncio.sleep(interval)
            for sink in list(self.sinks):
                # Silent for a whole interval (at most two): a comment.
                if not sink.wrote and sink.exchange.started:
                    sink.send(sse.KEEPALIVE)
                sink.wrote = False

    # --- routing ---------------------------------------------------------------------------

    async def handle(self, ex: Exchange) -> None:
        origin = ex.header("origin")
        allowed = self.ctx.settings.allowed_origins
        if allowed and origin is not None and origin not in allowed:
            self.fail(ex, protocol.FORBIDDEN, f"origin {origin!r} is not allowed")
            return
        if ex.method == "OPTIONS":
            self._preflight(ex)
            return
        if ex.path.startswith(V1_PREFIX):
            if self.v1 is None:
                self.fail(ex, protocol.NOT_FOUND, f"no such endpoint: {ex.path}")
            else:
                await self.v1(ex)
            return
        rest = ex.path[len(auth.STREAMS_PATH) :]
        events_path = rest.endswith(EVENTS_SUFFIX)
        if events_path:
            rest = rest[: -len(EVENTS_SUFFIX)]
        stream_id = unquote(rest)
        if ex.method != "GET":
            self.fail(
                ex,
                "method_not_allowed",
                f"{ex.method} is not allowed here",
                headers=[("Allow", "GET")],
            )
        elif not is_valid_stream_id(stream_id):
            self.fail(ex, protocol.BAD_REQUEST, "invalid stream id in the path")
        elif events_path:
            self._events(ex, stream_id)
        else:
            await self._status(ex, stream_id)

    def _preflight(self, ex: Exchange) -> None:
        headers = self.cors(ex)
        asked = ex.header("access-control-request-headers")
        headers += [
            ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
            ("Access-Control-Allow-Headers", asked or "authorization, content-type"),
            ("Access-Control-Max-Age", "600"),
        ]
        ex.respond(204, b"", headers=headers)

    # --- GET /streams/{ID}/events ------------------------------------------------------------

    def _events(self, ex: Exchange, stream_id: str) -> None:
        # What a reconnecting EventSource sends wins over the URL it was opened with.
        raw = ex.header("last-event-id") or ex.param("from") or FROM_START
        position = parse_position(raw.strip())
        if position is None:
            self.fail(
                ex, protocol.BAD_REQUEST, "invalid 'from' or Last-Event-ID: use 0, $ or an id"
            )
            return
        grant = self.grant(ex)
        if grant is None:
            return
        if not grant.can_read(stream_id):
            self.fail(ex, protocol.FORBIDDEN, f"token does not allow stream {stream_id!r}")
            return
        self.stream(ex, grant, stream_id, position, sse.EVENT_STREAM, [])

    # --- GET /streams/{ID} --------------------------------------------------------------------

    async def _status(self, ex: Exchange, stream_id: str) -> None:
        grant = self.grant(ex)
        if grant is None:
            return
        if not grant.can_read(stream_id):
            self.fail(ex, protocol.FORBIDDEN, f"token does not allow stream {stream_id!r}")
            return
        try:
            found = await self.reply(stream_id)
        except RedisUnavailable:
            self.fail(ex, protocol.UNAVAILABLE, "Redis is unavailable; try again shortly")
            return
        if isinstance(found, str):
            what = "not found" if found == protocol.NOT_FOUND else "gone (expired or trimmed)"
            self.fail(ex, found, f"stream {stream_id!r} {what}")
            return
        meta, reply = found
        body: dict[str, Any] = meta.as_dict()
        del body["owner"]
        if reply is not None:
            body.update(
                message=reply.message(),
                finish_reason=reply.finish_reason,
                usage=reply.usage,
                choices=reply.chat_completion(stream_id, meta.model or "", created(meta))[
                    "choices"
                ],
            )
        ex.respond(200, orjson.dumps(body), headers=self.cors(ex))

    async def reply(self, stream_id: str) -> tuple[StreamMeta, Assembler | None] | str:
        """The meta and, when the stream has finished, its assembled reply (read from
        history in pages of the pool's reads); a protocol code when there is none."""
        history = self.ctx.history
        meta = await history.meta(stream_id)
        if meta is None:
            return protocol.NOT_FOUND
        if not meta.finished:
            return meta, None
        assembler, at = Assembler(), ZERO
        while True:
            page = await history.read_after(stream_id, at, self.ctx.tuning.pump_page)
            if page.gone or page.missing:
                return protocol.GONE
            for _eid, data in page.entries:
                try:
                    assembler.feed(events.decode_event(data))
                except InvalidEvent:  # a foreign row: every reader skips it
                    continue
                if terminal_status(data) is not None:
                    return meta, assembler
            at = max(page.read_to, parse_id(page.entries[-1][0]) if page.entries else at)
            if page.complete:
                return meta, assembler


def created(meta: StreamMeta) -> int:
    """The stream's ``created`` in seconds, as OpenAI's objects carry it."""
    return int((meta.created_at or 0) / 1000)
