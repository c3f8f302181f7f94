"""The mock upstream's server: an OpenAI-compatible HTTP server with scripted replies and faults.

Serves ``POST /v1/chat/completions`` (SSE when ``stream`` is true, else a
``chat.completion``), ``GET /v1/models``, and for tests run as a separate process
``GET /_mock/requests`` (what it saw) and ``POST /_mock/reset``. What each reply
says, how fast, and what goes wrong comes from the server's :class:`Defaults` and
the request's ``"mock"`` field (every option is described in
:mod:`streamfan.mock.options`). The ``streamfan mock-upstream`` command
(``cli/mock.py``) runs one.

In-process use::

    async with MockUpstream(api_key="sk-test") as mock:
        client = AsyncOpenAI(base_url=mock.base_url, api_key="sk-test")
        ...
        record = await mock.wait_disconnect("job-1")   # the client went away

One asyncio task per connection plus, while a response is being written, one that
watches the socket, so a client that goes away is noticed at once, even while the
reply is stalled or sleeping between tokens. Chunks are encoded as they come due
and written by the server's one pacing timer (:mod:`streamfan.mock.pacer`) at
deadlines computed from each response's start, so pacing does not drift and costs
little per chunk.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import weakref
from typing import Any
from urllib.parse import parse_qs

import orjson

from streamfan.errors import StreamfanError
from streamfan.mock.http import (
    CONTINUE,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    HTTPError,
    Request,
    RequestParser,
    encode_response,
    openai_error,
)
from streamfan.mock.options import Defaults
from streamfan.mock.records import (
    DISCONNECTED,
    RECORD_LIMIT,
    Recorder,
    RequestRecord,
    Selector,
)
from streamfan.mock.respond import READ_SIZE, Connection, Responder

log = logging.getLogger(__name__)

#: Where ``streamfan mock-upstream`` listens unless told (the class itself defaults to port 0).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8700
#: Listen backlog: benchmarks open a thousand connections at once.
BACKLOG = 2048
MODELS = ("mock-gpt", "gpt-4o-mini", "gpt-4o")

_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_MODELS_PATHS = frozenset({"/v1/models", "/models"})


class MockUpstream:
    """The scripted OpenAI-compatible server. ``start()`` it, or use ``async with``.

    ``api_key``: accept only this bearer token. ``require_auth=False``: accept
    requests with no Authorization at all. ``defaults``: what a request gets when its
    ``mock`` field does not say. ``max_header_bytes`` / ``max_body_bytes``: larger
    requests are refused with 431 / 413. ``record_limit``: requests remembered.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        api_key: str | None = None,
        require_auth: bool = True,
        defaults: Defaults | None = None,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
        record_limit: int = RECORD_LIMIT,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.api_key = api_key
        self.require_auth = require_auth
        self.defaults = defaults or Defaults()
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.records = Recorder(record_limit)
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._tasks: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        # Closed connections whose last bytes are still being flushed to a slow client.
        self._flushing: weakref.WeakSet[asyncio.WriteTransport] = weakref.WeakSet()
        self._responder = Responder(self.records, self.defaults)

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> int:
        """Listen; returns the bound port (a free one when constructed with port 0)."""
        if self._server is not None:
            raise RuntimeError("already started")
        try:
            self._server = await asyncio.start_server(
                self._on_connect, self.host, self._requested_port, backlog=BACKLOG
            )
        except OSError as exc:
            where = f"{self.host}:{self._requested_port}"
            raise StreamfanError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        self._port = int(self._server.sockets[0].getsockname()[1])
        log.debug("mock upstream listening on %s", self.base_url)
        return self._port

    async def stop(self) -> None:
        """Stop listening and end every connection (responses in flight are aborted)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        writers = list(self._tasks.values())
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._responder.close()
        # Nothing outlives stop(): not even bytes a client never read.
        for transport in [*(w.transport for w in writers), *self._flushing]:
            transport.abort()
        await server.wait_closed()

    async def __aenter__(self) -> MockUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the mock upstream is not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``: ``http://HOST:PORT/v1``."""
        return self.url + "/v1"

    # --- what it saw --------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Every chat request remembered, oldest first."""
        return list(self.records)

    def requests_for(self, fault_key: str) -> list[RequestRecord]:
        return self.records.select(fault_key)

    def reset(self) -> None:
        """Forget every request and every fault_key's attempt count."""
        self.records.clear()

    async def wait_request(self, which: Selector, attempt: int | None = None) -> RequestRecord:
        """The request ``which`` names (index, or fault_key [and attempt]), once it arrived."""
        return await self.records.wait(which, attempt, lambda r: True)

    async def wait_chunks(
        self, which: Selector, count: int, attempt: int | None = None
    ) -> RequestRecord:
        """Once the named request has sent at least ``count`` chunks."""
        return await self.records.wait(which, attempt, lambda r: r.chunks_sent >= count)

    async def wait_disconnect(self, which: Selector, attempt: int | None = None) -> RequestRecord:
        """Once the client of the named request went away before its response ended."""
        return await self.records.wait(which, attempt, lambda r: r.outcome == DISCONNECTED)

    async def wait_done(self, which: Selector, attempt: int | None = None) -> RequestRecord:
        """Once the named request's response ended, however it ended."""
        return await self.records.wait(which, attempt, lambda r: r.outcome is not None)

    # --- connections --------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = writer
        conn = Connection(
            reader,
            writer,
            RequestParser(
                max_header_bytes=self.max_header_bytes, max_body_bytes=self.max_body_bytes
            ),
        )
        try:
            await self._serve(conn)
        except (OSError, asyncio.CancelledError):
            # A broken connection, or stop(): nothing to answer. Cancellation ends
            # here because this task is ours alone, and asyncio would log it.
            pass
        finally:
            del self._tasks[task]
            # Flushes what is buffered, then closes; no need to wait for it here.
            writer.close()
            if writer.transport.get_write_buffer_size():
                self._flushing.add(writer.transport)

    async def _serve(self, conn: Connection) -> None:
        while True:
            try:
                request = await self._read_request(conn)
            except HTTPError as exc:
                body = openai_error(exc.message, "invalid_request_error")
                conn.writer.write(encode_response(exc.status, body, keep_alive=False))
                await conn.writer.drain()
                return
            if request is None:
                return
            if not await self._dispatch(conn, request) or not request.keep_alive:
                return

    async def _read_request(self, conn: Connection) -> Request | None:
        sent_continue = False
        while (request := conn.parser.next_request()) is None:
            if conn.parser.expects_continue and not sent_continue:
                conn.writer.write(CONTINUE)
                sent_continue = True
            data = await conn.reader.read(READ_SIZE)
            if not data:
                return None
            conn.parser.feed(data)
        return request

    async def _dispatch(self, conn: Connection, request: Request) -> bool:
        """Answer one request; returns whether the connection may serve another."""
        path, method, keep = request.path, request.method, request.keep_alive
        if path in _CHAT_PATHS and method == "POST":
            return await self._responder.chat(conn, request, self._check_auth(request))
        if path in _MODELS_PATHS and method == "GET":
            status, body = self._check_auth(request) or (200, _models_body())
        elif path == "/_mock/requests" and method == "GET":
            keys = parse_qs(request.query).get("fault_key")
            records = self.records.select(keys[0]) if keys else list(self.records)
            status, body = 200, orjson.dumps([r.summary() for r in records])
        elif path == "/_mock/reset" and method == "POST":
            self.reset()
            status, body = 200, b'{"ok":true}'
        elif path in _CHAT_PATHS | _MODELS_PATHS | {"/_mock/requests", "/_mock/reset"}:
            status = 405
            body = openai_error(f"Method {method} not allowed for {path}", "invalid_request_error")
        else:
            status = 404
            body = openai_error(f"Invalid URL ({method} {path})", "invalid_request_error")
        conn.writer.write(encode_response(status, body, keep_alive=keep))
        await conn.writer.drain()
        return True

    def _check_auth(self, request: Request) -> tuple[int, bytes] | None:
        """None if the request may proceed, else (401, OpenAI's error body)."""
        if not self.require_auth and self.api_key is None:
            return None
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return 401, openai_error(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            )
        if self.api_key is not None and not hmac.compare_digest(
            token.encode(), self.api_key.encode()
        ):
            shown = token[:3] + "*" * max(len(token) - 7, 0) + token[-4:]
            return 401, openai_error(
                f"Incorrect API key provided: {shown}.", "invalid_request_error", "invalid_api_key"
            )
        return None


def _models_body() -> bytes:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "streamfan"} for m in MODELS]
    return orjson.dumps({"object": "list", "data": data})
