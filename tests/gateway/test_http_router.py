"""One port, two servers: the router's hand-over, keep-alive, and its time limits."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from gateway import Gateway
from streamfan.settings import Settings
from tests.gateway.conftest import FAST, WAIT_S, token

pytestmark = pytest.mark.timeout(60)


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await reader.readexactly(length)


async def test_door_requests_share_a_keep_alive_connection_and_an_idle_one_is_closed(
    start_gateway: Any, gw_settings: Settings
) -> None:
    gw: Gateway = await start_gateway(gw_settings, dataclasses.replace(FAST, http_idle_s=0.3))
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    request = f"GET /streams/nope?token={token(gw_settings)} HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(3):  # the SDKs' connection pools send request after request
        writer.write(request.encode())
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 404 ") and b'"code":"not_found"' in body
    assert await asyncio.wait_for(reader.read(), WAIT_S) == b""  # closed when idle
    writer.close()


async def test_a_connection_that_never_sends_a_head_is_dropped(
    start_gateway: Any, gw_settings: Settings
) -> None:
    gw: Gateway = await start_gateway(gw_settings.replace(handshake_timeout_s=0.3))
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    writer.write(b"GET /streams/x/events HTTP/1.1\r\n")  # and nothing more
    assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
    writer.close()


async def test_stopping_the_gateway_closes_idle_http_connections(
    start_gateway: Any, gw_settings: Settings
) -> None:
    gw: Gateway = await start_gateway(gw_settings)
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    writer.write(
        f"GET /streams/nope?token={token(gw_settings)} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    await read_response(reader)
    await gw.stop()
    assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
    writer.close()


async def test_what_is_not_a_door_still_reaches_websockets_byte_for_byte(
    gateway: Gateway,
) -> None:
    reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = await read_response(reader)
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"ok\n"
    writer.close()
