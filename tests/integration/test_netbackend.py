"""The worker's httpx client on :mod:`worker.netbackend`, against a real local server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from cli.redis_server import free_port
from streamfan.errors import UpstreamError, UpstreamStalled
from streamfan.settings import Settings
from worker.netbackend import HIGH_WATER, AsyncioTransport
from worker.upstream import Upstream

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Start = Callable[[Handler], Awaitable[str]]


async def read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.fixture
async def server() -> AsyncIterator[Start]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        srv = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(srv)
        return f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1"

    yield start
    for srv in servers:
        srv.close()


def upstream(url: str, **settings: object) -> Upstream:
    up = Upstream(Settings.from_env({}, upstream_base_url=url, **settings))
    assert isinstance(up.client._transport, AsyncioTransport)
    return up


async def body_of(up: Upstream) -> bytes:
    out = b""
    async with up.stream({"model": "m", "messages": []}) as reads:
        async for data in reads:
            out += data
    return out


async def test_a_kept_alive_connection_serves_the_next_stream(server: Start) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for _ in range(3):
            await read_request(reader)
            writer.write(HEAD + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        writer.close()

    up = upstream(await server(handler))
    try:
        for _ in range(3):
            assert await body_of(up) == b"data: [DONE]\n\n"
    finally:
        await up.aclose()
    assert connections == 1


async def test_a_body_larger_than_the_buffer_limit_arrives_whole(server: Start) -> None:
    piece = b"data: " + b"x" * 60_000 + b"\n\n"
    count = 3 * HIGH_WATER // len(piece)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(HEAD + chunk(piece) * count + b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    up = upstream(await server(handler))
    try:
        out = b""
        async with up.stream({"model": "m", "messages": []}) as reads:
            async for data in reads:
                out += data
                await asyncio.sleep(0)  # waits-on-time-ok: a slow reader (pause, resume)
    finally:
        await up.aclose()
    assert out == piece * count


async def test_silence_longer_than_the_read_timeout_is_a_stall(server: Start) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(HEAD + chunk(b": hello\n\n"))
        await release.wait()
        writer.close()

    up = upstream(await server(handler), upstream_read_timeout_s=0.2)
    try:
        with pytest.raises(UpstreamStalled):
            await body_of(up)
    finally:
        release.set()
        await up.aclose()


async def test_a_connection_dropped_mid_body_is_a_retryable_disconnect(server: Start) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(HEAD + chunk(b"data: {}\n\n"))
        await writer.drain()
        writer.transport.abort()

    up = upstream(await server(handler))
    try:
        with pytest.raises(UpstreamError) as info:
            await body_of(up)
    finally:
        await up.aclose()
    assert info.value.code == "upstream_disconnected" and info.value.retryable


async def test_nothing_listening_is_unreachable() -> None:
    up = upstream(f"http://127.0.0.1:{free_port()}/v1")
    try:
        with pytest.raises(UpstreamError) as info:
            await body_of(up)
    finally:
        await up.aclose()
    assert info.value.code == "upstream_unreachable"
