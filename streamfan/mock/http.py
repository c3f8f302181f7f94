"""The HTTP/1.1 core of the mock upstream: request parsing and response encoding (pure).

:class:`RequestParser` takes bytes in (``feed``) and hands complete requests out
(``next_request``), keeping whatever follows for the next request of a keep-alive
connection. It understands what OpenAI clients send: a request line, header
fields, a ``Content-Length`` body and ``Expect: 100-continue``. Anything else is
refused with an :class:`HTTPError` carrying the status to answer (400, 413, 431,
501, 505) rather than guessed at. No sockets here: ``server`` does the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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

# RFC 9110 token characters (method, field names).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP/(\d)\.(\d)")


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


@dataclass(slots=True)
class _Head:
    method: str
    target: str
    version: tuple[int, int]
    headers: tuple[tuple[str, str], ...]
    length: int
    expect_continue: bool


class RequestParser:
    """Incremental request parser for one connection: ``feed()`` bytes, ``next_request()``."""

    def __init__(
        self, *, max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self._buffer = bytearray()
        self._head: _Head | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def expects_continue(self) -> bool:
        """A head asked for ``100 Continue`` and its body has not fully arrived."""
        return self._head is not None and self._head.expect_continue

    def next_request(self) -> Request | None:
        """The next complete request, or None if more bytes are needed."""
        if self._head is None:
            # RFC 9112 2.2: ignore empty lines before a request line.
            while self._buffer[:2] == b"\r\n":
                del self._buffer[:2]
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self.max_header_bytes:
                    raise HTTPError(431, "request header fields too large")
                return None
            if end + 4 > self.max_header_bytes:
                raise HTTPError(431, "request header fields too large")
            self._head = self._parse_head(bytes(self._buffer[:end]))
            del self._buffer[: end + 4]
        head = self._head
        if len(self._buffer) < head.length:
            return None
        body = bytes(self._buffer[: head.length])
        del self._buffer[: head.length]
        self._head = None
        return Request(head.method, head.target, head.version, head.headers, body)

    def _parse_head(self, raw: bytes) -> _Head:
        lines = raw.split(b"\r\n")
        match = _REQUEST_LINE.fullmatch(lines[0])
        if match is None:
            raise HTTPError(400, "malformed request line")
        version = (int(match.group(3)), int(match.group(4)))
        if version not in ((1, 0), (1, 1)):
            raise HTTPError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        if len(lines) - 1 > MAX_HEADER_FIELDS:
            raise HTTPError(431, "too many header fields")
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            # No obsolete line folding, no whitespace before the colon (RFC 9112 5.1).
            if not colon or _TOKEN.fullmatch(name) is None:
                raise HTTPError(400, "malformed header field")
            try:
                text = value.strip(b" \t").decode("latin-1")
            except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
                raise HTTPError(400, "malformed header field") from None
            headers.append((name.decode("ascii").lower(), text))
        fields = dict(headers)
        if "transfer-encoding" in fields:
            # OpenAI clients send Content-Length; without chunked decoding we could
            # not find where the body ends, so refuse rather than misread.
            raise HTTPError(501, "chunked request bodies are not supported")
        lengths = {v.strip() for k, v in headers if k == "content-length"}
        length = 0
        if lengths:
            if len(lengths) > 1 or not next(iter(lengths)).isdigit():
                raise HTTPError(400, "invalid Content-Length")
            length = int(next(iter(lengths)))
            if length > self.max_body_bytes:
                raise HTTPError(413, f"request body larger than {self.max_body_bytes} bytes")
        expect = fields.get("expect", "").lower() == "100-continue" and version >= (1, 1)
        return _Head(
            method=match.group(1).decode("ascii"),
            target=match.group(2).decode("latin-1"),
            version=version,
            headers=tuple(headers),
            length=length,
            expect_continue=expect and length > 0,
        )

    def body_pending(self) -> bool:
        """Whether a parsed head still waits for (more of) its body."""
        return self._head is not None


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
