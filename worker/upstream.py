"""The streaming call to the OpenAI-compatible upstream (the only module using httpx).

``Upstream.stream(body)`` opens ``POST {base}/chat/completions`` and yields the
raw bytes of each network read; every httpx exception and every non-2xx answer
is mapped here to an :class:`~streamfan.errors.UpstreamError` that says whether a
retry may help. The API key lives only in this object's headers: no error
message, event or log line built here contains it or any request header. What
the upstream sends back is redacted (:func:`streamfan.redact.redact`) before
anything cuts it to a length: a key cut in two matches neither way.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson

from streamfan import codes
from streamfan.errors import (
    UpstreamError,
    UpstreamHTTPError,
    UpstreamStalled,
)
from streamfan.redact import redact
from streamfan.settings import Settings

log = logging.getLogger(__name__)

#: Statuses worth another attempt: timeouts, conflicts, rate limits, server trouble.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
#: How much of an error body we read to find its message.
ERROR_BODY_LIMIT = 16 * 1024
#: Longest upstream error message carried into an ``error`` event.
MESSAGE_LIMIT = 500


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return None
        seconds = when - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def error_message(body: bytes, status: int, secrets: tuple[str, ...] = ()) -> str:
    """The upstream's own error message if its body has one (OpenAI's shape), else generic.

    ``secrets`` are redacted from it before it is cut to :data:`MESSAGE_LIMIT`.
    """
    try:
        obj: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    message = None
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict):
            message = err.get("message")
        elif isinstance(err, str):
            message = err
        message = message or obj.get("message")
    if not isinstance(message, str) or not message:
        message = f"upstream answered HTTP {status}"
    return redact(message, secrets)[:MESSAGE_LIMIT]


class Upstream:
    """One per worker process: a pooled httpx client for the upstream."""

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None):
        self.settings = settings
        headers = {"Accept": "text/event-stream"}
        if settings.upstream_api_key:
            headers["Authorization"] = f"Bearer {settings.upstream_api_key}"
        self._secrets = settings.secrets
        self.client = httpx.AsyncClient(
            base_url=settings.upstream_base_url,
            headers=headers,
            timeout=httpx.Timeout(
                connect=settings.upstream_connect_timeout_s,
                read=settings.upstream_read_timeout_s,
                write=settings.upstream_connect_timeout_s,
                # Waiting for a pooled connection is not the upstream's fault.
                pool=None,
            ),
            # Streams are long-lived and many run at once: no cap on connections.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    @asynccontextmanager
    async def stream(self, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[bytes]]:
        """POST ``body`` and yield an iterator over the response's raw network reads."""
        request = self.client.build_request(
            "POST",
            "/chat/completions",
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        try:
            response = await self.client.send(request, stream=True)
            try:
                if response.status_code >= 400:
                    await self._raise_for_status(response)
                yield self._reads(response)
            finally:
                # Shielded: a cancel (the job's) can arrive again while closing,
                # and an interrupted close leaves the socket open, so the upstream
                # would go on generating for nobody. Seen in tests, 1 run in 5.
                await asyncio.shield(response.aclose())
        except UpstreamError:
            raise
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                raise UpstreamError(
                    "timed out connecting to the upstream", code=codes.UPSTREAM_UNREACHABLE.code
                ) from exc
            raise UpstreamStalled(
                f"upstream sent nothing for {self.settings.upstream_read_timeout_s:g} s"
            ) from exc
        except httpx.ConnectError as exc:
            raise UpstreamError(
                "cannot connect to the upstream: "
                + (redact(str(exc), self._secrets)[:MESSAGE_LIMIT] or type(exc).__name__),
                code=codes.UPSTREAM_UNREACHABLE.code,
            ) from exc
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise UpstreamError(
                "the upstream closed the connection mid-reply",
                code=codes.UPSTREAM_DISCONNECTED.code,
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"upstream request failed: {type(exc).__name__}",
                code=codes.UPSTREAM_REQUEST_FAILED.code,
            ) from exc

    async def _reads(self, response: httpx.Response) -> AsyncIterator[bytes]:
        # aiter_bytes, not aiter_raw: it undoes a gzip Content-Encoding, and yields
        # each network read as it arrives (no re-chunking when chunk_size is None).
        async for data in response.aiter_bytes():
            yield data

    async def _raise_for_status(self, response: httpx.Response) -> None:
        status = response.status_code
        body = b""
        async for part in response.aiter_raw():
            body += part
            if len(body) >= ERROR_BODY_LIMIT:
                break
        retryable = status in RETRYABLE_STATUSES
        raise UpstreamHTTPError(
            # The body's cut is safe: nothing of a body that is not whole JSON
            # travels (a cut one parses as JSON only if the cut fell in trailing space).
            error_message(body[:ERROR_BODY_LIMIT], status, self._secrets),
            retryable=retryable,
            upstream_status=status,
            retry_after=parse_retry_after(response.headers.get("retry-after"))
            if retryable
            else None,
        )
