"""What the mock upstream's tests share: request bodies, SSE parsing, raw exchanges."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx

from streamfan.mock.script import BOM
from streamfan.mock.server import MockUpstream

AUTH = {"Authorization": "Bearer sk-test"}
MESSAGES = [{"role": "user", "content": "Hello"}]


def chat(mock: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    request.update(body)
    if mock is not None:
        request["mock"] = mock
    return request


def sse_data(body: bytes) -> list[bytes]:
    text = body.removeprefix(BOM).replace(b"\r\n", b"\n")
    return [
        line[6:] for block in text.split(b"\n\n") for line in block.split(b"\n")
        if line.startswith(b"data: ")
    ]  # fmt: skip


async def read_all(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[httpx.Response, bytes]:
    async with http.stream("POST", "/chat/completions", json=body) as response:
        data = b"".join([part async for part in response.aiter_bytes()])
    return response, data


async def read_until(response: httpx.Response, predicate: Any) -> bytes:
    """Read the body until ``predicate(bytes so far)`` holds (the response stays open)."""
    got = b""
    async with contextlib.aclosing(response.aiter_raw()) as parts:
        async for part in parts:
            got += part
            if predicate(got):
                return got
    raise AssertionError(f"the body ended first: {got!r}")


async def raw_exchange(mock: MockUpstream, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", mock.port)
    try:
        writer.write(data)
        return await reader.read(-1)
    finally:
        writer.close()
        await writer.wait_closed()


def request_bytes(method: str, path: str, body: bytes = b"", *, close: bool = False) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body
