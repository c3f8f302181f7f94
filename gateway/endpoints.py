"""Plain HTTP on the gateway's port, answered from websockets' ``process_request``.

``GET /healthz`` the process is alive; ``GET /readyz`` Redis answers and the
pub/sub connection is up (503 otherwise, so a load balancer routes around a
gateway that cannot deliver); ``GET /metrics`` Prometheus text; ``GET /`` the
demo page and ``GET /streamfan.js`` the browser client, read from
``gateway/static/`` on each request (404 if absent).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: path → (file in STATIC_DIR, content type)
STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/streamfan.js": ("streamfan.js", "text/javascript; charset=utf-8"),
}


def respond(
    connection: ServerConnection,
    status: HTTPStatus,
    body: bytes | str,
    content_type: str = "text/plain; charset=utf-8",
    headers: dict[str, str] | None = None,
) -> Response:
    text = body if isinstance(body, str) else ""
    response = connection.respond(status, text)
    if isinstance(body, bytes):
        response.body = body
        del response.headers["Content-Length"]
        response.headers["Content-Length"] = str(len(body))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class Endpoints:
    def __init__(
        self,
        ready: Callable[[], Awaitable[str | None]],
        metrics: Callable[[], bytes],
        static_dir: Path = STATIC_DIR,
    ) -> None:
        #: Returns None when ready, else the reason it is not.
        self._ready = ready
        self._metrics = metrics
        self._static_dir = static_dir

    async def handle(self, connection: ServerConnection, path: str) -> Response:
        if path == "/healthz":
            return respond(connection, HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            problem = await self._ready()
            if problem is None:
                return respond(connection, HTTPStatus.OK, "ready\n")
            return respond(connection, HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {problem}\n")
        if path == "/metrics":
            return respond(connection, HTTPStatus.OK, self._metrics(), CONTENT_TYPE_LATEST)
        static = STATIC_FILES.get(path)
        if static is not None:
            name, content_type = static
            try:
                data = (self._static_dir / name).read_bytes()
            except OSError:
                return respond(connection, HTTPStatus.NOT_FOUND, f"{name} is not installed\n")
            return respond(connection, HTTPStatus.OK, data, content_type)
        return respond(connection, HTTPStatus.NOT_FOUND, "not found\n")
