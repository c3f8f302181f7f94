"""The OpenAI-compatible door: ``/v1/chat/completions`` for the official SDKs, any language.

=========================================  ============================================
``POST /v1/chat/completions``              submit (``Idempotency-Key`` = stream id);
                                           ``stream: true`` streams chunks, else waits
                                           and returns the ``ChatCompletion``
``GET /v1/chat/completions/{ID}``          the finished ``ChatCompletion`` (``retrieve``)
``GET /v1/chat/completions/{ID}/stream``   re-attach: the chunks from the start, or
                                           after ``starting_after`` / ``Last-Event-ID``
``POST /v1/chat/completions/{ID}/cancel``  cancel (needs the cancel right)
=========================================  ============================================

Submitting needs a key of ``STREAMFAN_API_KEYS`` (the SDKs' ``api_key``) or a
JWT with ``submit: true``; each credential may submit
``STREAMFAN_SUBMITS_PER_MINUTE`` times a minute (429 with ``Retry-After``
beyond). A submit is :meth:`streamfan.Client.submit` with the request's SHA-256
recorded in the meta: the same ``Idempotency-Key`` with another body is 409.
Responses carry ``x-streamfan-stream-id`` and ``x-streamfan-token`` (a token
that reads and cancels this stream). A client that disconnects does not stop
the job. The chunks are :mod:`gateway.chunks`'; errors have OpenAI's shape.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from gateway.chunks import WITH_USAGE, WITHOUT_USAGE, ChunkSink, error_object
from gateway.doors import Doors, created
from gateway.http import Exchange
from gateway.session import Session, TokenBucket
from streamfan import events, protocol, store
from streamfan.client import Client
from streamfan.errors import InvalidRequest, RedisUnavailable
from streamfan.keys import Meta, is_valid_stream_id, new_stream_id
from streamfan.page import Entry
from streamfan.positions import FROM_START, parse_position
from streamfan.protocol import CloseCode
from streamfan.requests import validate_chat_request
from streamfan.scripts import Reply
from streamfan.tokens import Grant, mint_token

if TYPE_CHECKING:
    from gateway.batch import Batch
    from gateway.streams import Subscription

PATH = "/v1/chat/completions"
#: Rate-limit buckets kept before full (idle) ones are forgotten.
MAX_BUCKETS = 10_000
CANCEL_REASON = "cancelled through /v1/chat/completions"
TERMINAL_ERRORS: dict[str, tuple[int, str]] = {
    events.STATUS_ERROR: (502, "server_error"),
    events.STATUS_CANCELLED: (409, "invalid_request_error"),
}


def request_digest(body: dict[str, Any]) -> str:
    """What makes two submits "the same request": the body but ``stream``, key order aside."""
    canonical = {k: v for k, v in body.items() if k != "stream"}
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


class OpenAIDoor:
    def __init__(self, doors: Doors) -> None:
        self.doors = doors
        self.ctx = doors.ctx
        self._client: Client | None = None
        #: Submits in flight at once: each holds a connection of the client's pools
        #: (unbounded in redis-py and arq), so this bounds the gateway's connections
        #: to the queue's Redis whatever the number of submitters.
        self._submitting = asyncio.Semaphore(self.ctx.settings.read_pool_size)
        self._buckets: dict[str, TokenBucket] = {}
        doors.v1 = self.handle
        doors.closers.append(self.aclose)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _submitter(self) -> Client:
        if self._client is None:
            self._client = Client(self.ctx.settings)
        return self._client

    # --- routing ---------------------------------------------------------------------------

    async def handle(self, ex: Exchange) -> None:
        path, fail = ex.path.rstrip("/"), self.doors.fail
        if path == PATH:
            if ex.method != "POST":
                fail(ex, "method_not_allowed", f"use POST {PATH}", headers=[("Allow", "POST")])
                return
            await self._create(ex)
            return
        if not path.startswith(PATH + "/"):
            fail(ex, protocol.NOT_FOUND, f"no such endpoint: {ex.path}")
            return
        parts = path[len(PATH) + 1 :].split("/")
        sid, action = parts[0], "/".join(parts[1:])
        method = {"": "GET", "stream": "GET", "cancel": "POST"}.get(action)
        if method is None:
            fail(ex, protocol.NOT_FOUND, f"no such endpoint: {ex.path}")
        elif ex.method != method:
            fail(ex, "method_not_allowed", f"use {method}", headers=[("Allow", method)])
        elif not is_valid_stream_id(sid):
            fail(ex, protocol.BAD_REQUEST, "invalid completion id in the path")
        elif (grant := self.doors.grant(ex)) is None:
            return
        elif action == "cancel":
            await self._cancel(ex, grant, sid)
        elif not grant.can_read(sid):
            fail(ex, protocol.FORBIDDEN, f"this credential does not allow reading {sid!r}")
        elif action == "stream":
            await self._reattach(ex, grant, sid)
        else:
            await self._retrieve(ex, sid)

    # --- POST /v1/chat/completions -------------------------------------------------------------

    async def _create(self, ex: Exchange) -> None:
        fail = self.doors.fail
        grant = self.doors.grant(ex)
        if grant is None:
            return
        if not grant.submit:
            fail(ex, protocol.FORBIDDEN, "this credential may not submit (no 'submit' right)")
            return
        wait = self._rate_limited(ex)
        if wait is not None:
            fail(
                ex,
                "rate_limited",
                f"more than {self.ctx.settings.submits_per_minute:g} submits a minute",
                headers=[("Retry-After", str(max(1, round(wait))))],
            )
            return
        try:
            body = orjson.loads(ex.body)
        except orjson.JSONDecodeError:
            fail(ex, protocol.BAD_REQUEST, "the request body is not JSON")
            return
        if not isinstance(body, dict):
            fail(ex, protocol.BAD_REQUEST, "the request body must be a JSON object")
            return
        streaming = body.get("stream") is True
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        job = {k: v for k, v in body.items() if k != "stream"}
        try:
            validate_chat_request(job)
        except InvalidRequest as exc:
            fail(ex, protocol.BAD_REQUEST, str(exc), param=_param_of(str(exc)))
            return
        key = ex.header("idempotency-key")
        if key is not None and not is_valid_stream_id(key):
            msg = "invalid Idempotency-Key: 1-128 characters of A-Z a-z 0-9 . _ : -"
            fail(ex, protocol.BAD_REQUEST, msg)
            return
        sid = key or new_stream_id()
        digest = request_digest(body)
        fields = {Meta.REQUEST_DIGEST: digest, Meta.INCLUDE_USAGE: "1" if include_usage else "0"}
        try:
            async with self._submitting:
                sub = await self._submitter().submit(job, stream_id=sid, meta_fields=fields)
            if not sub.created:
                (known,) = await self.ctx.history.meta_fields(sid, [Meta.REQUEST_DIGEST])
                if known is None or known.decode() != digest:
                    fail(
                        ex,
                        "idempotency_conflict",
                        f"Idempotency-Key {sid!r} was used for a different request",
                    )
                    return
        except RedisUnavailable:
            fail(ex, protocol.UNAVAILABLE, "Redis is unavailable; try again shortly")
            return
        headers = self._headers(sid)
        if streaming:
            self._stream(ex, grant, sid, FROM_START, include_usage, headers)
        else:
            await self._wait_and_answer(ex, grant, sid, headers)

    def _rate_limited(self, ex: Exchange) -> float | None:
        """None, or the seconds until this credential may submit again."""
        s = self.ctx.settings
        credential = (ex.header("authorization") or "") + (ex.param("token") or "")
        name = hashlib.sha256(credential.encode()).hexdigest()
        now = asyncio.get_running_loop().time()
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_idle(now)
            rate = s.submits_per_minute / 60.0
            bucket = self._buckets[name] = TokenBucket(rate, max(1.0, s.submits_per_minute), now)
        if bucket.take(now):
            return None
        return (1 - bucket.tokens) / bucket.rate

    def _forget_idle(self, now: float) -> None:
        for name, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.stamp) * bucket.rate >= bucket.capacity:
                del self._buckets[name]

    def _headers(self, sid: str) -> list[tuple[str, str]]:
        headers = [("x-streamfan-stream-id", sid)]
        secret = self.ctx.settings.jwt_secret
        if secret:
            tok = mint_token(secret, [sid], ttl_s=self.ctx.settings.token_ttl_s, cancel=True)
            headers.append(("x-streamfan-token", tok))
        return headers

    def _stream(
        self,
        ex: Exchange,
        grant: Grant,
        sid: str,
        position: str,
        include_usage: bool,
        headers: list[tuple[str, str]],
    ) -> None:
        codec = WITH_USAGE if include_usage else WITHOUT_USAGE
        had_output = parse_position(position) not in (FROM_START, "0-0")
        self.doors.stream(
            ex,
            grant,
            sid,
            position,
            codec,
            headers,
            make=lambda *a, **kw: ChunkSink(*a, had_output=had_output, **kw),
        )

    async def _wait_and_answer(
        self, ex: Exchange, grant: Grant, sid: str, headers: list[tuple[str, str]]
    ) -> None:
        """``stream: false``: the hub tells when the stream ends; then the reply, whole."""
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _EndWaiter(grant, ended)
        self.ctx.hub.subscribe(waiter, sid, FROM_START)
        try:
            await ended
        finally:
            self.ctx.hub.detach(waiter)
        await self._retrieve(ex, sid, headers)

    # --- GET .../{ID}, GET .../{ID}/stream, POST .../{ID}/cancel ---------------------------------

    async def _retrieve(
        self, ex: Exchange, sid: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        fail = self.doors.fail
        try:
            found = await self.doors.reply(sid)
        except RedisUnavailable:
            fail(ex, protocol.UNAVAILABLE, "Redis is unavailable; try again shortly")
            return
        if isinstance(found, str):
            fail(ex, found, f"no chat completion {sid!r}")
            return
        meta, reply = found
        extra = [*(headers or []), *self.doors.cors(ex)]
        if reply is None:  # still queued or running
            body = {"id": sid, "object": "chat.completion", "created": created(meta)}
            body.update(model=meta.model, status=meta.status, choices=[], usage=None)
            ex.respond(200, orjson.dumps(body), headers=extra)
            return
        if meta.status in TERMINAL_ERRORS:
            status, kind = TERMINAL_ERRORS[meta.status]
            err = reply.error or {}
            code = str(err.get("code") or meta.status)
            message = str(err.get("message") or f"the reply ended with {meta.status}")
            # An SDK retries a 5xx by itself; the same request would end the same way.
            extra.append(("x-should-retry", "false"))
            ex.respond(status, orjson.dumps(error_object(code, message, kind)), headers=extra)
            return
        completion = reply.chat_completion(sid, meta.model or "", created(meta))
        ex.respond(200, orjson.dumps(completion), headers=extra)

    async def _reattach(self, ex: Exchange, grant: Grant, sid: str) -> None:
        raw = ex.header("last-event-id") or ex.param("starting_after") or FROM_START
        position = parse_position(raw.strip())
        if position is None:
            self.doors.fail(
                ex,
                protocol.BAD_REQUEST,
                "invalid starting_after: an entry id",
                param="starting_after",
            )
            return
        try:
            (usage,) = await self.ctx.history.meta_fields(sid, [Meta.INCLUDE_USAGE])
        except RedisUnavailable:
            self.doors.fail(ex, protocol.UNAVAILABLE, "Redis is unavailable; try again shortly")
            return
        # Streams submitted elsewhere (the client API) asked for usage: the worker always does.
        self._stream(ex, grant, sid, position, usage != b"0", self._headers(sid))

    async def _cancel(self, ex: Exchange, grant: Grant, sid: str) -> None:
        fail = self.doors.fail
        if not grant.can_cancel(sid):
            fail(ex, protocol.FORBIDDEN, f"this credential does not allow cancelling {sid!r}")
            return
        s = self.ctx.settings
        try:
            status = await store.request_cancel(
                self.ctx.history.r,
                s.keys,
                sid,
                reason=CANCEL_REASON,
                retention_s=s.retention_s,
                maxlen=s.maxlen,
            )
        except RedisUnavailable:
            fail(ex, protocol.UNAVAILABLE, "Redis is unavailable; try again shortly")
            return
        if status == Reply.NOT_FOUND:
            fail(ex, protocol.NOT_FOUND, f"no chat completion {sid!r}")
            return
        shown = events.STATUS_RUNNING if status == Reply.CANCELLING else status
        body = {"id": sid, "object": "chat.completion", "status": shown}
        ex.respond(200, orjson.dumps(body), headers=self.doors.cors(ex))


def _param_of(message: str) -> str | None:
    for name in ("messages", "model", "stream_options"):
        if f"'{name}'" in message or message.startswith(name):
            return name
    return None


class _EndWaiter:
    """A hub subscriber that only waits for the stream to end (``stream: false``)."""

    __slots__ = ("ended", "session")

    def __init__(self, grant: Grant, ended: asyncio.Future[None]) -> None:
        self.session = Session(grant, max_subscriptions=1, max_messages_per_s=1.0, now=0.0)
        self.ended = ended

    @property
    def closing(self) -> bool:
        return self.ended.done()

    def _done(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    def subscribed(self, sub: Subscription, status: str, last_id: str) -> None:
        pass

    def replay(self, sub: Subscription, entries: Sequence[Entry], final_status: str | None) -> None:
        if final_status is not None:
            self._done()

    def joined(self, sub: Subscription) -> None:
        pass

    def deliver(self, batch: Batch, first: int = 0) -> None:
        if batch.status is not None:
            self._done()

    def end(self, sub: Subscription, status: str) -> None:
        self._done()

    def error(self, sub: Subscription, code: str, message: str, *, answered: bool) -> None:
        self._done()  # the retrieve that follows answers with what Redis holds

    async def drained(self, patience_s: float) -> bool:
        return not self.closing

    def cut(self, code: CloseCode, reason: str | None = None) -> None:
        self._done()
