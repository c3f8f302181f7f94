"""One chat request of the mock upstream: record it, answer it, notice the client leaving.

:meth:`Responder.chat` runs the reply in one task and, beside it, a task that reads
the socket: the client closing its side (EOF) or resetting it ends the reply at
once, even while it is stalled or sleeping between tokens, and marks the record
``disconnected``. Bytes read meanwhile are a pipelined next request, kept.

The script decided every byte and when it is due; the server's
:class:`~streamfan.mock.pacer.Pacer` writes each send at its deadline, and this
module ends the body as the plan says: cleanly, by closing (FIN) or resetting
(RST) the connection, or by stalling until the client goes away.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Coroutine, Iterable
from typing import Any

import orjson

from streamfan.mock.http import (
    Request,
    RequestParser,
    chunk_frame,
    encode_head,
    encode_response,
    openai_error,
)
from streamfan.mock.options import DEFAULT_STREAM_ERROR, Defaults, Fault, MockOptionError
from streamfan.mock.pacer import PacedStream, Pacer
from streamfan.mock.plan import Ending, Send, split_sends
from streamfan.mock.records import (
    ABORTED,
    COMPLETE,
    DISCONNECTED,
    DROPPED,
    Recorder,
    RequestRecord,
)
from streamfan.mock.script import BOM, MALFORMED_DATA, Script

READ_SIZE = 64 * 1024

#: (message, type, code) of the HTTP faults, as OpenAI words them.
_HTTP_ERRORS: dict[int, tuple[str, str, str | None]] = {
    401: ("Incorrect API key provided: sk-mock****.", "invalid_request_error", "invalid_api_key"),
    429: (
        "Rate limit reached for requests. Please try again in 1s.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
}


class Connection:
    """One client connection: its streams and the parser holding unread request bytes."""

    __slots__ = ("parser", "reader", "writer")

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: RequestParser
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = parser


class Responder:
    """Answers chat requests and keeps their :class:`RequestRecord` up to date."""

    def __init__(self, records: Recorder, defaults: Defaults) -> None:
        self.records = records
        self.defaults = defaults
        self.pacer = Pacer()

    def close(self) -> None:
        self.pacer.close()

    async def chat(
        self, conn: Connection, request: Request, auth_error: tuple[int, bytes] | None
    ) -> bool:
        """Answer ``POST /chat/completions``; returns whether the connection may be reused."""
        loop = asyncio.get_running_loop()
        try:
            body: Any = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            body = None
        record = self.records.add(
            lambda index: RequestRecord(
                index=index,
                method=request.method,
                path=request.path,
                headers=request.header_dict(),
                body=body,
                started_at=loop.time(),
                started_wall=time.time(),
            )
        )
        error = auth_error or _check_body(body)
        script = None
        if error is None:
            try:
                script = Script.from_request(
                    body,
                    self.defaults,
                    completion_id=f"chatcmpl-mock-{record.index}",
                    created=int(time.time()),
                )
            except MockOptionError as exc:
                message = openai_error(
                    str(exc), "invalid_request_error", "invalid_mock_option", exc.option
                )
                error = (400, message)
        work: Coroutine[Any, Any, bool]
        if script is None:
            assert error is not None
            work = self.simple(conn.writer, record, *error, keep_alive=request.keep_alive)
        else:
            record.script = script
            record.stream = script.stream
            record.fault_key = key = script.options.fault_key
            record.attempt = self.records.count_attempt(key) if key is not None else 0
            fault = script.fault
            active = fault is not None and fault.applies(record.attempt)
            record.fault = fault.name if fault is not None and active else None
            work = self.reply(conn.writer, record, script, active, request)
        return await self._watched(conn, record, work)

    async def _watched(
        self, conn: Connection, record: RequestRecord, work: Coroutine[Any, Any, bool]
    ) -> bool:
        """Run ``work`` (it writes one response) while watching for the client leaving."""
        work_task = asyncio.ensure_future(work)
        watch_task = asyncio.ensure_future(_watch(conn))
        try:
            await asyncio.wait((work_task, watch_task), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await _cancel(work_task, watch_task)
            self.finish(record, ABORTED)
            raise
        if work_task.done():
            await _cancel(watch_task)
            try:
                return work_task.result()
            except OSError:  # a write failed: the client is gone
                self.finish(record, DISCONNECTED)
                return False
        self.finish(record, DISCONNECTED)
        await _cancel(work_task)
        return False

    # --- the record ---------------------------------------------------------------

    def finish(self, record: RequestRecord, outcome: str) -> None:
        if record.outcome is not None:
            return
        record.outcome = outcome
        record.ended_at = asyncio.get_running_loop().time()
        if outcome == DISCONNECTED:
            record.disconnected_at = record.ended_at
            record.disconnect_event.set()
        record.done_event.set()
        self.records.changed()

    def _written(self, record: RequestRecord, chunks: int, keepalives: int) -> None:
        record.keepalives_sent += keepalives
        if chunks:
            if record.first_chunk_at is None:
                record.first_chunk_at = asyncio.get_running_loop().time()
            record.chunks_sent += chunks
            self.records.changed()

    # --- responses ----------------------------------------------------------------

    async def simple(
        self,
        writer: asyncio.StreamWriter,
        record: RequestRecord,
        status: int,
        body: bytes,
        *,
        keep_alive: bool,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> bool:
        """A whole JSON response (an error, or a non-streaming completion)."""
        record.status = status
        writer.write(encode_response(status, body, headers=headers, keep_alive=keep_alive))
        await writer.drain()
        self.finish(record, COMPLETE)
        return keep_alive

    async def reply(
        self,
        writer: asyncio.StreamWriter,
        record: RequestRecord,
        script: Script,
        fault_active: bool,
        request: Request,
    ) -> bool:
        """The reply ``script`` describes; returns whether the connection may be reused."""
        options = script.options
        keep_alive = request.keep_alive
        fault = script.fault if fault_active else None
        if options.headers_delay_s:
            await asyncio.sleep(options.headers_delay_s)
        if fault is not None and fault.kind == "http":
            return await self._http_fault(writer, record, fault, keep_alive)
        if script.stream:
            # HTTP/1.0 has no chunked encoding: its body is raw and ends with the connection.
            chunked = request.version >= (1, 1)
            return await self._stream(
                writer, record, script, fault_active, keep_alive and chunked, chunked
            )
        return await self._complete(writer, record, script, fault, keep_alive)

    async def _http_fault(
        self, writer: asyncio.StreamWriter, record: RequestRecord, fault: Fault, keep_alive: bool
    ) -> bool:
        status = fault.status or 500
        default_type = "server_error" if status >= 500 else "invalid_request_error"
        message, type_, code = _HTTP_ERRORS.get(
            status, (f"mock fault: HTTP {status}", default_type, None)
        )
        if fault.error:
            message = str(fault.error.get("message", message))
            type_ = str(fault.error.get("type", type_))
            code = fault.error.get("code", code)
        headers = (("Retry-After", fault.retry_after),) if fault.retry_after is not None else ()
        body = openai_error(message, type_, code)
        return await self.simple(
            writer, record, status, body, keep_alive=keep_alive, headers=headers
        )

    async def _complete(
        self,
        writer: asyncio.StreamWriter,
        record: RequestRecord,
        script: Script,
        fault: Fault | None,
        keep_alive: bool,
    ) -> bool:
        # A non-streaming upstream answers once the whole reply is generated.
        if script.duration_s:
            await asyncio.sleep(script.duration_s)
        kind = fault.kind if fault is not None else None
        if kind == "stall":
            await asyncio.get_running_loop().create_future()  # until the client leaves
        if kind in ("drop", "reset"):
            return await self._end_connection(writer, record, reset=kind == "reset")
        body = orjson.dumps(script.completion())
        if kind == "malformed":
            body = MALFORMED_DATA
        elif kind == "error_chunk":
            assert fault is not None
            body = orjson.dumps({"error": {**DEFAULT_STREAM_ERROR, **(fault.error or {})}})
        if script.options.bom or kind == "bom":
            body = BOM + body
        if kind == "truncate":
            # Promise the whole body, send half, close: the client sees it cut short.
            record.status = 200
            response = encode_response(200, body, keep_alive=keep_alive)
            writer.write(response[: len(response) - len(body) // 2])
            return await self._end_connection(writer, record, reset=False)
        return await self.simple(writer, record, 200, body, keep_alive=keep_alive)

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        record: RequestRecord,
        script: Script,
        fault_active: bool,
        keep_alive: bool,
        chunked: bool,
    ) -> bool:
        options = script.options
        plan = script.plan(fault_active=fault_active)
        framing = (("Transfer-Encoding", "chunked"),) if chunked else ()
        loop = asyncio.get_running_loop()
        record.status = 200
        writer.write(
            encode_head(
                200,
                (
                    ("Content-Type", "text/event-stream; charset=utf-8"),
                    ("Cache-Control", "no-cache"),
                    *framing,
                    ("Connection", "keep-alive" if keep_alive else "close"),
                    ("X-Request-Id", f"req_mock_{record.index}"),
                ),
            )
        )
        await writer.drain()
        sends: Iterable[Send] = plan
        if options.split_bytes:
            sends = split_sends(plan, options.split_bytes)
        paced = PacedStream(
            writer.transport,
            sends,
            start=loop.time(),
            end_body=plan.ending is Ending.END,
            keepalive_s=options.keepalive_s,
            keepalive_frame=chunk_frame(script.keepalive) if chunked else script.keepalive,
            forever=plan.ending is Ending.STALL,
            split_delay_s=options.split_delay_s if options.split_bytes else None,
            on_write=lambda chunks, keepalives: self._written(record, chunks, keepalives),
            chunked=chunked,
        )
        self.pacer.add(paced)
        try:
            await paced.done
            if plan.ending is Ending.STALL:
                # Keep-alives (if asked) go on from the pacer until the client leaves.
                await loop.create_future()
        finally:
            paced.cancel()
        if plan.ending is Ending.END:
            await writer.drain()
            self.finish(record, COMPLETE)
            return keep_alive
        return await self._end_connection(writer, record, reset=plan.ending is Ending.RESET)

    async def _end_connection(
        self, writer: asyncio.StreamWriter, record: RequestRecord, *, reset: bool
    ) -> bool:
        """Close mid-response on purpose, after what was written reached the kernel."""
        transport = writer.transport
        # With a high-water mark of 0, drain() returns only once the buffer is empty,
        # so the client gets exactly the chunks the plan sent before the fault.
        transport.set_write_buffer_limits(high=0)
        await writer.drain()
        if reset:
            sock = writer.get_extra_info("socket")
            if sock is not None:  # SO_LINGER with timeout 0: close() sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.close()
        self.finish(record, DROPPED)
        return False


async def _watch(conn: Connection) -> None:
    """Return when the client closes the connection (EOF) or it breaks."""
    limit = conn.parser.max_header_bytes + conn.parser.max_body_bytes
    try:
        while data := await conn.reader.read(READ_SIZE):
            # A pipelined next request: kept, and served after this response.
            conn.parser.feed(data)
            if conn.parser.buffered > limit:
                return
    except OSError:
        return


async def _cancel(*tasks: asyncio.Future[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _check_body(body: Any) -> tuple[int, bytes] | None:
    if not isinstance(body, dict):
        return 400, openai_error(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            "invalid_request_error",
        )
    if not isinstance(body.get("messages"), list):
        return 400, openai_error(
            "Missing required parameter: 'messages'.",
            "invalid_request_error",
            "missing_required_parameter",
            "messages",
        )
    return None
