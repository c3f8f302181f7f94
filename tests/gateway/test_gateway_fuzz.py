"""Hostile frames at a live gateway while a well-behaved reader keeps an exact stream.

Each example starts a gateway on the suite's Redis, plays a stream into it and
subscribes a reader from ``0``; meanwhile a hostile client, on real sockets,
sends what hypothesis draws: arbitrary text and binary frames (the client-frame
fuzz of ``tests/unit/test_fuzz.py``), control frames, fragmented messages,
oversized frames, floods, a cancel it may not make, and raw TCP junk before and
after a handshake. Checked per example: the reader got every entry once, in
order, and ``end``; every answer the hostile client got is a protocol message;
a close it got is one of the documented abuse codes; nothing was logged at
WARNING or above and no traceback. Bounded and derandomized.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from conftest import FAST, WAIT_S, Player, WsClient, token
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from cli.redis_server import RedisServer
from gateway import Gateway
from streamfan import protocol
from streamfan.keys import new_stream_id
from streamfan.settings import Settings
from tests.conftest import TEST_JWT_SECRET
from tests.unit.test_fuzz import frames

MAX_FRAME = 2048
#: What the gateway may close an abusive client with: flood, too big, bad frames,
#: and a bare /ws that sent no message in time (control frames are not messages).
ABUSE_CLOSES = {1008, 1009, 1002, 1007, 4002}
SERVER_OPS = {"subscribed", "event", "end", "error", "pong", "cancelling"}

PIPELINED = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\nGET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
STRAY_LINE = b"GET /readyz HTTP/1.1\r\nHost: gw\r\n\r\n\r\n"
junk = st.sampled_from(
    [
        PIPELINED,
        STRAY_LINE,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET /ws HTTP/1.1\r\nHost: gw\r\n",
        b"\r\n\r\n",
    ]
) | st.binary(max_size=120)
actions = st.lists(
    st.tuples(st.just("frame"), frames)
    | st.tuples(st.just("binary"), st.binary(max_size=200))
    | st.tuples(st.sampled_from(["ping", "pong"]), st.binary(max_size=125))
    | st.tuples(st.just("fragments"), st.lists(st.text(max_size=30), min_size=1, max_size=4))
    | st.tuples(st.sampled_from(["oversize", "flood", "cancel", "follow"]), st.none())
    | st.tuples(st.sampled_from(["raw", "raw_after_upgrade"]), st.tuples(junk, st.booleans())),
    min_size=1,
    max_size=14,
)


@pytest.fixture(scope="module")
def redis_for_fuzz(redis_server: RedisServer) -> Iterator[str]:
    # Module-scoped (hypothesis runs many examples per test): a prefix of its
    # own instead of a flush, so that no example sees another's keys.
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    yield redis_server.url


class Hostile:
    """A client that sends what it is told and checks whatever comes back."""

    def __init__(self, gw: Gateway, settings: Settings, target: str) -> None:
        self.gw, self.settings, self.target = gw, settings, target
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.closes: list[int | None] = []
        self.pings = 0
        self.problems: list[str] = []

    async def conn(self) -> ClientConnection:
        if self.ws is None or self.ws.close_code is not None:
            await self.drop()
            url = self.gw.url + "/ws?token=" + token(self.settings)  # read-only: no cancel
            self.ws = await connect(url, open_timeout=WAIT_S, max_size=None, ping_interval=None)
            self.reader = asyncio.create_task(self._read(self.ws))
        return self.ws

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                for msg in protocol.split_frame(frame):
                    if msg.get("op") not in SERVER_OPS:
                        self.problems.append(f"unknown message {msg!r}")
                    elif msg["op"] == "error" and msg["code"] not in protocol.ERROR_CODES:
                        self.problems.append(f"unknown error code {msg!r}")
                    elif msg["op"] == "cancelling":
                        self.problems.append(f"a read-only token cancelled: {msg!r}")
        except ConnectionClosed:
            pass
        except Exception as exc:
            self.problems.append(f"unreadable answer: {exc!r}")
        self.closes.append(ws.close_code)

    async def drop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            if self.reader is not None:
                await self.reader
        self.ws = None

    async def act(self, kind: str, arg: Any) -> None:
        # Cut by an earlier action: the next one reconnects.
        with contextlib.suppress(ConnectionClosed):
            await self._act(kind, arg)

    async def _act(self, kind: str, arg: Any) -> None:
        if kind in ("raw", "raw_after_upgrade"):
            data, half_close = arg
            await self.raw(data, upgrade=kind == "raw_after_upgrade", half_close=half_close)
            return
        ws = await self.conn()
        if kind == "frame":
            try:
                await ws.send(arg.decode())
            except UnicodeDecodeError:
                await ws.send(arg)
        elif kind == "binary":
            await ws.send(arg)
        elif kind == "ping":
            self.pings += 1  # websockets refuses two pending pings with one payload
            await ws.ping(b"%d:" % self.pings + arg[:120])
        elif kind == "pong":
            await ws.pong(arg)
        elif kind == "fragments":
            await ws.send(iter(arg))
        elif kind == "oversize":
            await ws.send("x" * (MAX_FRAME + 1))
            await ws.wait_closed()
        elif kind == "flood":
            for _ in range(300):
                await ws.send('{"op":"ping"}')
            await ws.wait_closed()
        elif kind == "cancel":
            await ws.send(orjson.dumps({"op": "cancel", "stream": self.target}).decode())
        elif kind == "follow":
            await ws.send(orjson.dumps({"op": "subscribe", "stream": self.target}).decode())

    async def raw(self, data: bytes, *, upgrade: bool, half_close: bool) -> None:
        reader, writer = await asyncio.open_connection(self.gw.host, self.gw.port)
        try:
            if upgrade:
                key = os.urandom(16).hex()[:22] + "=="
                writer.write(
                    b"GET /ws?token=" + token(self.settings).encode() + b" HTTP/1.1\r\n"
                    b"Host: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: " + key.encode() + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
            writer.write(data)
            if half_close:
                writer.write_eof()
            with contextlib.suppress(ConnectionError):
                async with asyncio.timeout(WAIT_S):
                    await reader.read()
        finally:
            writer.close()


class Loud(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING or record.exc_info:
            self.records.append(record)


async def scenario(s: Settings, plan: list[tuple[str, Any]]) -> None:
    loud = Loud()
    root, gateway_log = logging.getLogger(), logging.getLogger("gateway")
    root.addHandler(loud)
    old_level = gateway_log.level
    gateway_log.setLevel(logging.INFO)
    r = aioredis.Redis.from_url(s.redis_url)
    gw = await Gateway(s, tuning=FAST).start()
    try:
        player = await (await Player(r, s).create()).begin()
        reader = await WsClient.open(gw.url + "/streams/" + player.stream_id, tok=token(s))
        await reader.until(lambda m: m["op"] == "event")  # subscribed and reading
        playing = asyncio.create_task(player.play(60, batch=2, pace_s=0.001))
        hostile = Hostile(gw, s, player.stream_id)
        for kind, arg in plan:
            await hostile.act(kind, arg)
        await hostile.drop()
        final = await reader.collect(player.stream_id)
        await playing
        assert final == {"op": "end", "stream": player.stream_id, "status": "done"}
        assert reader.ids(player.stream_id) == await player.ids()  # exact: once, in order
        assert hostile.problems == []
        assert set(hostile.closes) <= ABUSE_CLOSES | {1000, 1005, None}
        # And the gateway still serves a newcomer the whole stream.
        late = await WsClient.open(gw.url + "/streams/" + player.stream_id, tok=token(s))
        assert (await late.collect(player.stream_id))["op"] == "end"
        assert late.ids(player.stream_id) == await player.ids()
        await reader.close()
        await late.close()
    finally:
        await gw.stop()
        await r.aclose()
        root.removeHandler(loud)
        gateway_log.setLevel(old_level)
    assert [(x.levelname, x.name, x.getMessage()) for x in loud.records] == []


@settings(
    deadline=None,
    derandomize=True,
    database=None,
    max_examples=20,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(plan=actions)
# The findings, every run: junk that made websockets log an ERROR and a traceback.
@example(plan=[("raw", (PIPELINED, False)), ("raw", (STRAY_LINE, False)), ("ping", b"")])
def test_hostile_frames_leave_a_live_readers_stream_exact(
    redis_for_fuzz: str, plan: list[tuple[str, Any]]
) -> None:
    s = Settings(
        redis_url=redis_for_fuzz,
        prefix="fuzz-" + new_stream_id(),
        jwt_secret=TEST_JWT_SECRET,
        host="127.0.0.1",
        port=0,
        max_frame_bytes=MAX_FRAME,
        handshake_timeout_s=0.3,
    )
    asyncio.run(scenario(s, plan))
