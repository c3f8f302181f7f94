"""The SSE door's wire format (pure): one Server-Sent Events message per entry.

Per the WHATWG ``text/event-stream`` rules a message is ``field: value`` lines
ended by a blank line; ``id`` sets what a browser's ``EventSource`` sends back as
``Last-Event-ID`` when it reconnects by itself, ``event`` names the listener it
is dispatched to, ``retry`` sets its reconnection delay, and a line that starts
with ``:`` is a comment, ignored (a keep-alive)::

    id: 1700000000000-3
    event: delta
    data: {"type":"delta","choices":[...]}

After the terminal event: ``event: end`` with ``{"status": ...}``. Trouble after
the first byte: ``event: error`` with ``{"code": ..., "message": ...}``, the
WebSocket protocol's codes. The event JSON is spliced in as Redis holds it; a
row with a raw newline (only a foreign writer makes one) is re-encoded, since a
newline would end the ``data`` line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import orjson

from gateway.http import chunk
from streamfan import protocol

if TYPE_CHECKING:
    from gateway.streams import StreamState

CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"
#: A comment: keeps proxies and browsers from timing out an idle response.
KEEPALIVE: Final = b": keep-alive\n\n"
#: The first bytes: a comment, so a client sees the response is live at once.
#: (No ``retry:`` field: a block without ``data`` is one that some clients,
#: httpx-sse among them, hand on as an empty message.)
PREAMBLE: Final = b": streamfan\n\n"
#: After ``unavailable``, EventSource waits this long (ms) before it reconnects.
UNAVAILABLE_RETRY_MS: Final = 2000
END_EVENT: Final = "end"
ERROR_EVENT: Final = "error"


def message(event: str, data: bytes, entry_id: bytes | None = None) -> bytes:
    head = b"id: %b\n" % entry_id if entry_id is not None else b""
    return b"%bevent: %b\ndata: %b\n\n" % (head, event.encode(), data)


def error(code: str, text: str) -> bytes:
    head = b"retry: %d\n" % UNAVAILABLE_RETRY_MS if code == protocol.UNAVAILABLE else b""
    return head + message(ERROR_EVENT, orjson.dumps({"code": code, "message": text}))


def _safe(name: str | None) -> str:
    if not name or "\n" in name or "\r" in name:
        return "message"
    return name


class EventStream:
    """:class:`gateway.httpsink.HttpCodec` of ``GET /streams/{ID}/events``."""

    content_type = CONTENT_TYPE
    #: Redis is down: say so in the stream, and the browser's EventSource retries.
    in_band = frozenset({protocol.UNAVAILABLE})

    def preamble(self) -> bytes:
        return PREAMBLE

    def failure(self, code: str, message: str) -> bytes:
        return error(code, message)

    def entry(self, state: StreamState, entry_id: bytes, event_json: bytes) -> bytes:
        if b"\n" in event_json or b"\r" in event_json:
            event_json = orjson.dumps(orjson.loads(event_json))
        return message(_safe(protocol.event_type(event_json)), event_json, entry_id)

    def end(self, stream_id: str, status: str) -> bytes:
        return message(END_EVENT, orjson.dumps({"status": status}))

    def join(self, messages: list[bytes]) -> bytes:
        return b"".join(messages)

    def frame(self, payload: bytes) -> bytes:
        return chunk(payload)


EVENT_STREAM = EventStream()
