"""The HTTP/1.1 wire of the mock upstream: requests parsed by h11, responses as raw bytes.

:class:`RequestParser` takes bytes in (``feed``) and hands complete requests out
(``next_request``), keeping whatever follows for the next request of a keep-alive
connection. The parsing is h11's (request line, header fields, ``Content-Length``
and chunked bodies, ``Expect: 100-continue``); this module adds the mock's limits
and refusals: a request that cannot be served raises :class:`HTTPError` with the
status to answer (400, 413, 431, 501, 505) rather than being guessed at.

Responses are encoded here by hand (``encode_head``, ``encode_response``,
``chunk_frame``), not through ``h11.Connection.send``: the faults the mock exists
for are responses no correct HTTP library writes — a body cut short of its
``Content-Length``, a chunked body that never ends, a connection closed or reset
mid-chunk — and the pacer writes pre-framed chunks of a thousand streams straight
to their transports from one timer. h11 would refuse the first and add a state
machine per write to the second. So each request cycle gets a fresh h11
connection that only reads; what it did not consume (a pipelined next request)
seeds the next one. No sockets here: :mod:`streamfan.mock.server` does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import h11
import orjson

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_HEADER_FIELDS = 100

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The zero-length chunk that ends a chunked body.
LAST_CHUNK = b"0\r\n\r\n"
_VERSIONS = {b"1.0": (1, 0), b"1.1": (1, 1)}


class HTTPError(Exception):
    """A request that cannot be served; ``status`` is what to answer, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    version: tuple[int, int]
    headers: tuple[tuple[str, str], ...]  # (lower-cased name, value), in order
    body: bytes

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> str | None:
        """The field's value (repeated fields joined with ", "), or None."""
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    def header_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in self.headers:
            out[name] = f"{out[name]}, {value}" if name in out else value
        return out

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        if self.version >= (1, 1):
            return "close" not in tokens
        return "keep-alive" in tokens


class RequestParser:
    """Incremental request parser for one connection: ``feed()`` bytes, ``next_request()``.

    ``max_header_bytes`` bounds the request line and header fields together (431
    beyond it), ``max_body_bytes`` the body, declared or chunked (413).
    """

    def __init__(
        self, *, max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._pending = bytearray()  # received, not yet handed to h11
        self._conn: h11.Connection | None = None  # the current request's reader
        self._fed = 0  # bytes handed to the current reader
        self._head: h11.Request | None = None
        self._body = bytearray()

    def feed(self, data: bytes) -> None:
        self._pending += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as a request (body so far included)."""
        return len(self._pending) + self._fed

    @property
    def expects_continue(self) -> bool:
        """A head asked for ``100 Continue`` and none of its body has arrived yet."""
        return self._conn is not None and self._conn.they_are_waiting_for_100_continue

    def next_request(self) -> Request | None:
        """The next complete request, or None if more bytes are needed."""
        if self._conn is None:
            # RFC 9112 2.2: ignore empty lines before a request line (h11 does not).
            while self._pending[:2] == b"\r\n" or self._pending[:1] == b"\n":
                del self._pending[: 2 if self._pending[:1] == b"\r" else 1]
            if not self._pending or self._pending == b"\r":
                return None
            self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
            self._fed = 0
        conn = self._conn
        while True:
            self._hand_over(conn)
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise HTTPError(exc.error_status_hint, str(exc)) from None
            if event is h11.NEED_DATA:
                if self._head is None and self._fed >= self.max_header_bytes:
                    raise HTTPError(431, "request header fields too large")
                return None
            if isinstance(event, h11.Request):
                self._head = self._check_head(event)
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > self.max_body_bytes:
                    raise HTTPError(413, f"request body larger than {self.max_body_bytes} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return self._finish(conn)
            else:  # pragma: no cover - PAUSED comes after EndOfMessage, ConnectionClosed after EOF
                raise AssertionError(f"unexpected h11 event {event!r}")

    def _hand_over(self, conn: h11.Connection) -> None:
        """Give h11 what it may read: within the header limit until the head is in."""
        room = len(self._pending)
        if self._head is None:
            # h11 checks its limit only while a head is incomplete: a whole oversized
            # head arriving in one read would pass, so it never sees more than ours.
            room = min(room, self.max_header_bytes - self._fed)
        if room > 0:
            conn.receive_data(bytes(self._pending[:room]))
            del self._pending[:room]
            self._fed += room

    def _check_head(self, head: h11.Request) -> h11.Request:
        if head.http_version not in _VERSIONS:
            raise HTTPError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        if len(head.headers) > MAX_HEADER_FIELDS:
            raise HTTPError(431, "too many header fields")
        for name, value in head.headers:
            # h11 has checked the value is one number, the same in every field.
            if name == b"content-length" and int(value) > self.max_body_bytes:
                raise HTTPError(413, f"request body larger than {self.max_body_bytes} bytes")
        return head

    def _finish(self, conn: h11.Connection) -> Request:
        head, body = self._head, bytes(self._body)
        assert head is not None
        # What h11 read past this request is the start of the next one.
        self._pending[:0] = conn.trailing_data[0]
        self._conn, self._fed, self._head = None, 0, None
        self._body.clear()
        return Request(
            method=head.method.decode("ascii"),
            target=head.target.decode("latin-1"),
            version=_VERSIONS[head.http_version],
            headers=tuple((n.decode("ascii"), v.decode("latin-1")) for n, v in head.headers),
            body=body,
        )


def encode_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_response(
    status: int,
    body: bytes,
    *,
    content_type: str = "application/json",
    headers: Iterable[tuple[str, str]] = (),
    keep_alive: bool = True,
) -> bytes:
    """A whole response with a ``Content-Length`` body."""
    fields = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Connection", "keep-alive" if keep_alive else "close"),
        *headers,
    ]
    return encode_head(status, fields) + body


def chunk_frame(data: bytes) -> bytes:
    """``data`` as one chunk of a ``Transfer-Encoding: chunked`` body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def openai_error(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> bytes:
    """An error body in OpenAI's shape: ``{"error": {message, type, param, code}}``."""
    error: Mapping[str, Any] = {"message": message, "type": type_, "param": param, "code": code}
    return orjson.dumps({"error": error})
