"""The worker's HTTP port (``STREAMFAN_WORKER_METRICS_PORT``): probes and metrics.

``GET /healthz`` 200 while the process runs its event loop (a liveness probe:
never restart a worker for a Redis outage, it rides it out and a restart would
only cut its streams); ``GET /readyz`` 200 when the queue's and the events'
Redis answer a PING within :data:`READY_TIMEOUT_S`, 503 otherwise, recovering by
itself; ``GET /metrics`` Prometheus text. The same paths and meaning as the
gateway's. Served on the worker's own event loop, so a loop that is stuck fails
the probes as it should.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

#: A probe's PING that takes longer than this counts as Redis unreachable.
READY_TIMEOUT_S = 2.0
#: A client gets this long to send its request line and headers.
REQUEST_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 8192


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class HealthServer:
    def __init__(
        self, registry: CollectorRegistry, ready: Callable[[], Awaitable[str | None]]
    ) -> None:
        """``ready()`` returns None when ready, else the reason it is not."""
        self.registry = registry
        self._ready = ready
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (useful with 0)."""
        self._server = await asyncio.start_server(self._handle, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.write(await self._answer(head))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass  # a probe that hung up or sent junk gets nothing; nothing to log
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, head: bytes) -> bytes:
        parts = head[:MAX_REQUEST_BYTES].split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            return _response("405 Method Not Allowed", b"GET only\n")
        path = parts[1].split(b"?", 1)[0]
        if path == b"/healthz":
            return _response("200 OK", b"ok\n")
        if path == b"/readyz":
            problem = await self._ready()
            if problem is None:
                return _response("200 OK", b"ready\n")
            return _response("503 Service Unavailable", f"not ready: {problem}\n".encode())
        if path == b"/metrics":
            return _response("200 OK", generate_latest(self.registry), CONTENT_TYPE_LATEST)
        return _response("404 Not Found", b"not found\n")


async def ping_within(ping: Callable[[], Awaitable[object]], timeout_s: float) -> bool:
    """Whether ``ping()`` answered within ``timeout_s`` (any error: no)."""
    try:
        async with asyncio.timeout(timeout_s):
            await ping()
    except Exception:  # any failure means "not reachable"
        return False
    return True
