"""The client API for backend services: submit, events, result, status, cancel.

The example is README.md's "From a backend service", which the suite runs as it
stands (tests/integration/test_docs_samples.py); it is not copied here to drift.

It talks to Redis only: the arq queue to enqueue, the event streams to read.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings

from streamfan import events
from streamfan.assembler import Assembler
from streamfan.cluster import EventsRedis, connect_events
from streamfan.errors import (
    HistoryGone,
    InvalidEvent,
    StreamfanError,
    StreamNotFound,
    TokenError,
)
from streamfan.events import Event, decode_event
from streamfan.history import PageReader
from streamfan.keys import JOB_FUNCTION, new_stream_id, validate_stream_id
from streamfan.positions import ZERO, format_id, parse_id, validate_position
from streamfan.protocol import GONE
from streamfan.recovery import Deliver, End, Read, Reader, Refuse, Wait
from streamfan.redis_edge import redis_errors
from streamfan.requests import validate_chat_request
from streamfan.scripts import Reply
from streamfan.serialization import job_deserializer, job_serializer
from streamfan.settings import Settings
from streamfan.store import (
    StreamMeta,
    create_meta,
    now_ms,
    read_meta,
    request_cancel,
)
from streamfan.tokens import mint_token

log = logging.getLogger(__name__)

#: How long one blocking read waits before checking the stream still exists
#: (the page read after every wait carries the meta's status).
BLOCK_MS = 5000
#: Entries fetched per read.
READ_COUNT = 1000


@dataclass(frozen=True, slots=True)
class Submission:
    """What :meth:`Client.submit` returns: hand ``stream_id`` and ``token`` to a browser."""

    stream_id: str
    #: A subscribe token for this stream, or None when no JWT secret is configured.
    token: str | None
    #: False when the id was already submitted (idempotent: no second job ran).
    created: bool


@dataclass(frozen=True, slots=True)
class Result:
    """The finished reply, assembled from the stream's events."""

    stream_id: str
    status: str
    message: dict[str, Any]
    finish_reason: str | None
    usage: dict[str, Any] | None
    error: dict[str, Any] | None
    #: The same reply shaped as an OpenAI ``ChatCompletion`` dict.
    chat_completion: dict[str, Any]

    @property
    def text(self) -> str:
        content = self.message.get("content")
        return content if isinstance(content, str) else ""


class Client:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = settings.keys
        self._queue: ArqRedis | None = None
        self._events: EventsRedis | None = None
        self._page_reader: PageReader | None = None

    @classmethod
    def from_url(
        cls, url: str | None = None, *, settings: Settings | None = None, **overrides: Any
    ) -> Client:
        """A client for the Redis at ``url`` (default: ``STREAMFAN_REDIS_URL``)."""
        base = settings or Settings.from_env(**overrides)
        if url is not None:
            base = base.replace(redis_url=url)
        return cls(base)

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def connect(self) -> None:
        s = self.settings
        if self._queue is None:
            async with redis_errors():
                # arq retries a failed connect 5 times, a second apart; a client
                # should say at once that Redis is down, not after five seconds.
                redis_settings = dataclasses.replace(
                    RedisSettings.from_dsn(s.redis_url), conn_retries=0
                )
                self._queue = await create_pool(
                    redis_settings,
                    job_serializer=job_serializer,
                    job_deserializer=job_deserializer,
                    default_queue_name=s.queue_name,
                )
        if self._events is None:
            # A Redis Cluster node is detected and the cluster client used.
            self._events = await connect_events(s.events_url)

    async def aclose(self) -> None:
        if self._queue is not None:
            await self._queue.aclose()
            self._queue = None
        if self._events is not None:
            await self._events.aclose()
            self._events = None
            self._page_reader = None

    @property
    def redis(self) -> EventsRedis:
        if self._events is None:
            raise StreamfanError("the client is not connected: use 'async with Client(...)'")
        return self._events

    # --- writing ------------------------------------------------------------------

    async def submit(
        self,
        request: Mapping[str, Any],
        *,
        stream_id: str | None = None,
        owner: str | None = None,
        meta_fields: Mapping[str, str] | None = None,
    ) -> Submission:
        """Write the stream's meta and enqueue its job; idempotent on ``stream_id``.

        ``meta_fields``: more fields of the stream's meta, written with it (the
        gateway's OpenAI door records its request digest so)."""
        body = validate_chat_request(dict(request) if isinstance(request, Mapping) else request)
        sid = new_stream_id() if stream_id is None else validate_stream_id(stream_id)
        if owner is not None and not isinstance(owner, str):
            raise StreamfanError("owner must be a string")
        await self.connect()
        assert self._queue is not None
        created = await create_meta(
            self.redis, self.keys, sid, model=body["model"], owner=owner, fields=meta_fields
        )
        if not created:
            meta = await read_meta(self.redis, self.keys, sid)
            if meta is None or meta.status != events.STATUS_QUEUED:
                return Submission(sid, self._mint([sid]), created=False)
        # arq answers None when this job id is queued, running or kept as a result:
        # that is the idempotent case (a retried submit after a crash lands here too).
        async with redis_errors():
            # Indexed before enqueueing: a stream whose job is then lost (or never
            # enqueued, if this process dies here) is found and ended by the
            # workers' orphan sweep (worker/sweep.py).
            await self._queue.zadd(self.keys.open_streams, {sid: now_ms()}, nx=True)
            await self._queue.enqueue_job(JOB_FUNCTION, body, _job_id=sid)
            # Wake an idle worker now rather than at its next poll.
            await self.redis.execute_command("PUBLISH", self.keys.jobs_channel, sid)
        return Submission(sid, self._mint([sid]), created=created)

    async def cancel(self, stream_id: str, reason: str = "cancelled by client") -> str:
        """Cancel a stream; returns its status afterwards (``cancelling`` while the
        worker stops). Raises :class:`StreamNotFound` for an unknown id."""
        validate_stream_id(stream_id)
        await self.connect()
        s = self.settings
        status = await request_cancel(
            self.redis,
            self.keys,
            stream_id,
            reason=reason,
            retention_s=s.retention_s,
            maxlen=s.maxlen,
        )
        if status == Reply.NOT_FOUND:
            raise StreamNotFound(stream_id)
        return status

    def token(
        self,
        stream_ids: Iterable[str],
        *,
        ttl_s: float | None = None,
        cancel: bool = False,
        submit: bool = False,
    ) -> str:
        """Mint a subscribe token (needs ``STREAMFAN_JWT_SECRET``); ``submit``: it may
        also submit through the gateway's OpenAI-compatible door."""
        if not self.settings.jwt_secret:
            raise TokenError("no JWT secret configured (STREAMFAN_JWT_SECRET)")
        return mint_token(
            self.settings.jwt_secret,
            stream_ids,
            ttl_s=ttl_s or self.settings.token_ttl_s,
            cancel=cancel,
            submit=submit,
        )

    def _mint(self, stream_ids: list[str]) -> str | None:
        return self.token(stream_ids) if self.settings.jwt_secret else None

    # --- reading ------------------------------------------------------------------

    def _pages(self) -> PageReader:
        if self._page_reader is None:
            self._page_reader = PageReader(self.redis, self.keys)
        return self._page_reader

    async def status(self, stream_id: str) -> StreamMeta:
        validate_stream_id(stream_id)
        await self.connect()
        meta = await read_meta(self.redis, self.keys, stream_id)
        if meta is None:
            raise StreamNotFound(stream_id)
        return meta

    async def events(self, stream_id: str, from_: str = "0") -> AsyncIterator[tuple[str, Event]]:
        """Yield ``(entry_id, event)`` after ``from_`` until the terminal event.

        Ends without error if the position is already at or past the terminal
        event. Raises :class:`HistoryGone` when events after the position were
        trimmed or expired before they could be read (the rule is
        :mod:`streamfan.history`'s, shared with the gateway), at the start or
        later, if this reader falls behind what Redis keeps.

        Rows that hold no valid event (written by something other than
        streamfan) are skipped with a warning, as the gateway skips them: they
        neither end the read nor hold it back. A JSON object that is not a valid
        event (an unknown type, a missing field) is skipped here too, though the
        gateway, which does not validate events, relays it.
        """
        validate_stream_id(stream_id)
        position = validate_position(from_)
        reader = Reader(stream_id, position)
        await self.connect()
        pages = self._pages()
        meta = await read_meta(self.redis, self.keys, stream_id)
        if meta is None:
            opened = reader.open(None, ZERO)
        else:
            opened = reader.open(meta.status, parse_id(meta.last_id) if meta.last_id else ZERO)
        if isinstance(opened, Refuse):
            raise self._refusal(stream_id, opened, position)
        while True:
            step = reader.step()
            if isinstance(step, End):
                return
            assert isinstance(step, Read | Wait)
            if isinstance(step, Wait):
                page = await pages.wait_and_read(
                    stream_id,
                    step.after,
                    READ_COUNT,
                    block_ms=BLOCK_MS,
                    known_last=reader.known_last,
                )
            else:
                page = await pages.read(
                    stream_id, step.after, READ_COUNT, known_last=reader.known_last
                )
            out = reader.feed(page)
            if isinstance(out, Refuse):
                raise self._refusal(stream_id, out, format_id(step.after).decode())
            if isinstance(out, Deliver):
                for raw_id, data in out.entries:
                    try:
                        event = decode_event(data)
                    except InvalidEvent as exc:
                        log.warning(
                            "stream %s: entry %s skipped: %s", stream_id, raw_id.decode(), exc
                        )
                        continue
                    yield raw_id.decode(), event
                if out.final_status is not None:
                    return

    @staticmethod
    def _refusal(stream_id: str, refused: Refuse, position: str) -> StreamfanError:
        if refused.code == GONE:
            return HistoryGone(stream_id, position)
        return StreamNotFound(stream_id)

    async def result(self, stream_id: str) -> Result:
        """Wait for the stream to end; return the assembled reply."""
        assembler = Assembler()
        async for _id, event in self.events(stream_id, from_="0"):
            assembler.feed(event)
        meta = await self.status(stream_id)
        return Result(
            stream_id=stream_id,
            status=meta.status,
            message=assembler.message(),
            finish_reason=assembler.finish_reason,
            usage=assembler.usage,
            error=assembler.error,
            chat_completion=assembler.chat_completion(
                stream_id, meta.model or "", int((meta.created_at or 0) / 1000)
            ),
        )
