"""The exception tree of streamfan.

::

    StreamfanError                  base of everything raised on purpose
    ├── ConfigError                 a STREAMFAN_* setting is invalid (names the variable)
    ├── InvalidStreamId             an id that does not match ^[A-Za-z0-9._:-]{1,128}$
    ├── InvalidRequest              a chat request body that cannot be submitted
    ├── InvalidEvent                bytes that are not a valid streamfan event
    ├── MockOptionError             a bad ``mock`` option (streamfan.mock.options)
    ├── StreamNotFound              no meta for this stream id
    ├── HistoryGone                 the position asked for was trimmed or expired
    ├── RedisUnavailable            Redis could not be reached (streamfan.redis_edge)
    │   └── RedisRefused            Redis answered with an error (READONLY, OOM, BUSY...)
    ├── TokenError                  a JWT that is missing, malformed, expired or not allowed
    └── UpstreamError               the upstream failed; carries code, retryable, status
        ├── UpstreamHTTPError       a non-2xx answer before the stream
        ├── UpstreamStalled         no bytes / no content for too long
        ├── UpstreamTruncated       the body ended without [DONE] or a finish_reason
        ├── UpstreamBadData         bytes that break the SSE/JSON protocol
        └── UpstreamStreamError     a chunk carried an ``error`` object

Third-party exceptions (``redis.*``, ``httpx.*``, ``jwt.*``) never leak past the
module that does the I/O: they are raised again as one of these, ``from`` the
original (Redis's by the one mapping in :mod:`streamfan.redis_edge`).
"""

from __future__ import annotations

from streamfan import codes


class StreamfanError(Exception):
    """Base class of every exception streamfan raises on purpose."""


class ConfigError(StreamfanError):
    def __init__(self, variable: str, message: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {message}")


class InvalidStreamId(StreamfanError, ValueError):
    def __init__(self, stream_id: object) -> None:
        self.stream_id = stream_id
        shown = repr(stream_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(
            f"invalid stream id {shown}: must be 1-128 characters of A-Z a-z 0-9 . _ : -"
        )


class InvalidRequest(StreamfanError, ValueError):
    """The chat request body cannot be submitted (nothing was written)."""


class InvalidEvent(StreamfanError, ValueError):
    """Bytes that do not decode to a streamfan event."""


class StreamNotFound(StreamfanError, LookupError):
    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id!r} not found (never submitted, or expired)")


class HistoryGone(StreamfanError, LookupError):
    def __init__(self, stream_id: str, position: str) -> None:
        self.stream_id = stream_id
        self.position = position
        super().__init__(
            f"stream {stream_id!r}: history after {position} is gone (trimmed or expired); "
            "follow what comes next with '$' ('0' is gone too once anything was trimmed)"
        )


class RedisUnavailable(StreamfanError, ConnectionError):
    """Redis could not be reached."""


class RedisRefused(RedisUnavailable):
    """Redis answered a command with an error (a read-only replica after a failover,
    out of memory, busy with a script...): a later try may succeed, as after
    :class:`RedisUnavailable`, but the same call on the same connection will not."""


class TokenError(StreamfanError):
    """A token that is missing, malformed, expired, wrongly signed or not allowed."""


class UpstreamError(StreamfanError):
    """The upstream failed. ``code`` is the event's error code (:mod:`streamfan.codes`);
    ``retryable`` defaults to what the table says of it."""

    code = codes.UPSTREAM_REQUEST_FAILED.code

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        upstream_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.retryable = codes.TABLE[self.code].retryable if retryable is None else retryable
        self.upstream_status = upstream_status
        self.retry_after = retry_after


class UpstreamHTTPError(UpstreamError):
    code = codes.UPSTREAM_HTTP_ERROR.code


class UpstreamStalled(UpstreamError):
    code = codes.UPSTREAM_STALLED.code


class UpstreamTruncated(UpstreamError):
    code = codes.UPSTREAM_TRUNCATED.code


class UpstreamBadData(UpstreamError):
    code = codes.UPSTREAM_BAD_DATA.code


class UpstreamStreamError(UpstreamError):
    code = codes.UPSTREAM_STREAM_ERROR.code
