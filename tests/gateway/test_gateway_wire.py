"""Junk on the wire, over raw sockets: answered or closed quietly, never an ERROR.

Before gateway/wire.py, two requests pipelined on one connection (or one request
and a stray blank line) made websockets parse the extra bytes as a WebSocket
frame, fail, half-close, then trip its own assertion when the answer went out:
``ERROR unexpected internal error`` with a traceback, for anyone, 3 connections
in 10 (every one, when the bytes come in the request's read). Each case runs
ten times for that race. Logs are captured at INFO, as a gateway runs.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
from conftest import WAIT_S, GatewayProcess, WsClient, token
from websockets.frames import Frame, Opcode

from gateway import Gateway
from gateway.wire import HOLD_LIMIT
from streamfan.settings import Settings

GET = b"GET %s HTTP/1.1\r\nHost: gw\r\n\r\n"
PIPELINED = GET % b"/healthz" + GET % b"/healthz"
REPEAT = 10


def upgrade(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )


async def exchange(gw: Gateway, *writes: bytes, half_close: bool = False) -> bytes:
    """Write each piece (one write each), maybe half-close, and read until the gateway closes."""
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    try:
        for data in writes:
            writer.write(data)
            await writer.drain()
        if half_close:
            writer.write_eof()
        async with asyncio.timeout(WAIT_S):
            return await reader.read()
    finally:
        writer.close()


def assert_quiet(caplog: pytest.LogCaptureFixture) -> None:
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert loud == [], [(r.levelname, r.name, r.getMessage()) for r in loud]


def responses(data: bytes) -> int:
    return data.count(b"HTTP/1.1 ")


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)
    return caplog


async def test_two_pipelined_requests_get_one_answer_and_a_close_without_an_error(
    gateway: Gateway, info_logs: pytest.LogCaptureFixture
) -> None:
    for _ in range(REPEAT):
        data = await exchange(gateway, PIPELINED)
        assert data.startswith(b"HTTP/1.1 200 OK") and responses(data) == 1
        assert b"Connection: close" in data
    assert_quiet(info_logs)


@pytest.mark.parametrize("path", [b"/healthz", b"/readyz", b"/ws"])
async def test_a_stray_blank_line_after_a_request_changes_nothing(
    gateway: Gateway, info_logs: pytest.LogCaptureFixture, path: bytes
) -> None:
    for _ in range(REPEAT):
        together = await exchange(gateway, GET % path + b"\r\n")
        apart = await exchange(gateway, GET % path, b"\r\n")
        for data in (together, apart):
            assert responses(data) == 1
            # /ws without a token or an upgrade is answered as HTTP, not failed.
            assert data.startswith(b"HTTP/1.1 200" if path != b"/ws" else b"HTTP/1.1 401")
    assert_quiet(info_logs)


async def test_stray_bytes_after_a_request_are_discarded_with_the_connection(
    gateway: Gateway, info_logs: pytest.LogCaptureFixture
) -> None:
    for _ in range(REPEAT):
        data = await exchange(gateway, GET % b"/metrics" + b"\x00\xff\x81junk\r\n\r\nmore")
        assert data.startswith(b"HTTP/1.1 200 OK") and responses(data) == 1
    assert_quiet(info_logs)


async def test_a_request_whose_sender_half_closes_is_still_answered(
    gateway: Gateway, info_logs: pytest.LogCaptureFixture
) -> None:
    for _ in range(REPEAT):
        data = await exchange(gateway, b"GET /healthz HTTP/1.0\r\n\r\n", half_close=True)
        assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"ok\n")
    assert_quiet(info_logs)


@pytest.mark.parametrize(
    "junk",
    [b"GET /ws HTTP/1.1\r\nHost: gw\r\n", b"\x16\x03\x01\x02\x00\x01\x00", b"\r\n\r\n", b"HELLO\n"],
)
async def test_half_open_handshakes_and_garbage_are_closed_quietly(
    start_gateway: Callable[..., Any],
    gw_settings: Settings,
    info_logs: pytest.LogCaptureFixture,
    junk: bytes,
) -> None:
    gw: Gateway = await start_gateway(gw_settings.replace(handshake_timeout_s=0.2))
    for _ in range(3):
        assert await exchange(gw, junk, half_close=True) == b""
        # Left open: the handshake timeout ends it.
        assert responses(await exchange(gw, junk)) <= 1
    assert_quiet(info_logs)


async def test_frames_sent_with_the_upgrade_request_are_read_after_the_101(
    gateway: Gateway, gw_settings: Settings, info_logs: pytest.LogCaptureFixture
) -> None:
    ping = Frame(Opcode.TEXT, b'{"op":"ping"}').serialize(mask=True)
    for _ in range(REPEAT):
        reader, writer = await asyncio.open_connection(gateway.host, gateway.port)
        writer.write(upgrade("/ws?token=" + token(gw_settings)) + ping + ping)
        data = b""
        async with asyncio.timeout(WAIT_S):
            while data.count(b'{"op":"pong"}') < 2:
                more = await reader.read(4096)
                assert more, data
                data += more
        assert data.startswith(b"HTTP/1.1 101 Switching Protocols")
        writer.close()
    assert_quiet(info_logs)


async def test_a_client_that_sends_too_much_before_the_answer_is_cut(
    gateway: Gateway, gw_settings: Settings, info_logs: pytest.LogCaptureFixture
) -> None:
    try:
        data = await exchange(
            gateway, upgrade("/ws?token=" + token(gw_settings)), b"x" * HOLD_LIMIT * 2
        )
    except ConnectionResetError:  # cut while the bytes were still coming
        data = b""
    assert b'"op"' not in data
    assert_quiet(info_logs)


async def test_control_frame_pings_count_against_the_flood_limit(
    start_gateway: Callable[..., Any], gw_settings: Settings
) -> None:
    # 5 messages/s and a burst of 10 (two seconds' worth: one subscription allowed).
    s = gw_settings.replace(max_messages_per_s=5.0, max_subscriptions=1)
    gw: Gateway = await start_gateway(s)
    client = await WsClient.open(gw.url + "/ws", tok=token(s))
    await client.send(op="ping")
    await client.until(lambda m: m["op"] == "pong")
    for _ in range(30):
        await client.ws.ping()  # not awaited: a flood does not wait for pongs
    await client.send(op="ping")
    assert await client.closed() == (1008, "flood: more than 5 messages/s")
    assert gw.metrics.flood_disconnects == 1


def test_the_gateway_command_logs_nothing_loud_for_junk(
    gateway_process: Callable[..., GatewayProcess], gw_settings: Settings
) -> None:
    proc = gateway_process(gw_settings)
    host, port = proc.url.removeprefix("ws://").rsplit(":", 1)

    async def probe() -> None:
        gw: Any = type("Addr", (), {"host": host, "port": int(port)})
        for _ in range(REPEAT):
            await exchange(gw, PIPELINED)
            await exchange(gw, GET % b"/readyz" + b"\r\n")
            await exchange(gw, b"GET /ws HTTP/1.1\r\n", half_close=True)

    asyncio.run(probe())
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(WAIT_S) == 0
    err = proc.stderr()
    assert "Traceback" not in err and " ERROR " not in err and " WARNING " not in err, err
    # At most one line per junk connection (at INFO the connection log is quiet).
    assert sum("gateway.connections" in line for line in err.splitlines()) <= 3 * REPEAT
