"""Fixtures for the gateway: real gateways, real Redis, real WebSocket clients.

* ``start_gateway(settings, tuning=...)`` starts a :class:`Gateway` in this event
  loop on port 0 (stopped at teardown); ``gateway`` is one on the session Redis.
* ``gateway_process(settings)`` runs ``streamfan gateway --port 0`` as a child
  process and reads the port from its ``listening on ws://…`` line.
* :class:`Player` writes a stream exactly as the worker does (``Publisher`` and
  ``create_meta``: the same Lua scripts, wake-ups and meta), at a chosen pace,
  and lets a test wait until it has written *n* events.
* :class:`WsClient` is a WebSocket client that splits JSON Lines frames and keeps
  every message, with waits that end on a message, never on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from cli.redis_server import RedisServer
from gateway import Gateway, Tuning
from streamfan import events, protocol
from streamfan.errors import RedisUnavailable
from streamfan.events import Event
from streamfan.keys import new_stream_id
from streamfan.settings import Settings
from streamfan.store import create_meta
from streamfan.tokens import mint_token
from worker.publisher import AttemptWriter, Publisher

#: Short timings so Redis trouble heals in well under a second in tests.
FAST = Tuning(
    close_timeout_s=2.0,
    live_ping_interval_s=0.5,
    live_ping_timeout_s=0.5,
    backoff_max_s=0.2,
    safety_poll_s=1.0,
    safety_poll_down_s=0.25,
    redis_connect_timeout_s=1.0,
    redis_read_timeout_s=2.0,
    drain_timeout_s=5.0,
)

#: How long any single wait in these tests may take before it fails.
WAIT_S = 20.0


async def eventually(condition: Callable[[], bool], within_s: float = WAIT_S) -> None:
    """Poll ``condition`` until it holds: for state no event announces."""
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # waits-on-time-ok: polling state with no event


def token(
    settings: Settings,
    streams: tuple[str, ...] = ("*",),
    *,
    cancel: bool = False,
    ttl_s: float = 600,
) -> str:
    assert settings.jwt_secret is not None
    return mint_token(settings.jwt_secret, streams, cancel=cancel, ttl_s=ttl_s)


@pytest.fixture
def gw_settings(settings: Settings) -> Settings:
    return settings.replace(host="127.0.0.1", port=0)


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[..., Any]]:
    started: list[Gateway] = []

    async def start(settings: Settings, tuning: Tuning = FAST) -> Gateway:
        gw = await Gateway(settings.replace(port=0), tuning=tuning).start()
        started.append(gw)
        return gw

    yield start
    for gw in reversed(started):
        await gw.stop()


@pytest.fixture
async def gateway(start_gateway: Callable[..., Any], gw_settings: Settings) -> Gateway:
    gw: Gateway = await start_gateway(gw_settings)
    return gw


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server with an append-only file: a restart keeps every stream."""
    server = RedisServer(data_dir=tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.close()


# --- the write side ----------------------------------------------------------------


def delta(i: int) -> Event:
    return events.delta([{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}])


class Player:
    """Plays a scripted reply into a stream the way the worker writes it."""

    def __init__(self, r: aioredis.Redis, settings: Settings, stream_id: str | None = None):
        self.r = r
        self.settings = settings
        self.stream_id = stream_id or new_stream_id()
        self.publisher = Publisher(r, settings)
        self.writer: AttemptWriter | None = None
        self.count = 0
        self._progress = asyncio.Condition()

    async def create(self) -> Player:
        await create_meta(self.r, self.settings.keys, self.stream_id, model="m", owner=None)
        return self

    async def begin(self) -> Player:
        claim = await self.publisher.begin(self.stream_id, "test-worker", "m")
        assert claim.outcome == "run", claim
        self.writer = self.publisher.writer(self.stream_id, claim.attempt)
        await self.write([events.start(self.stream_id, "m", 1, claim.attempt)])
        return self

    async def write(self, batch: list[Event]) -> None:
        assert self.writer is not None
        while True:
            try:
                await self.writer.write(batch)
                break
            except RedisUnavailable:
                # Redis is restarting in this test: the write is idempotent, retry it.
                await asyncio.sleep(0.05)  # waits-on-time-ok: polling for Redis to come back
        async with self._progress:
            self.count += len(batch)
            self._progress.notify_all()

    async def finish(self) -> None:
        assert self.writer is not None
        while True:
            try:
                await self.writer.finish(events.done("stop", {"total_tokens": self.count}))
                break
            except RedisUnavailable:
                await asyncio.sleep(0.05)  # waits-on-time-ok: polling for Redis to come back
        async with self._progress:
            self.count += 1
            self._progress.notify_all()

    async def play(
        self, n: int, *, batch: int = 1, pace_s: float = 0.0, finish: bool = True
    ) -> None:
        """Write ``n`` deltas in batches (one round trip each), then ``done``."""
        for first in range(0, n, batch):
            await self.write([delta(i) for i in range(first, min(n, first + batch))])
            # Pacing the producer, not synchronising the test.
            await asyncio.sleep(pace_s)  # waits-on-time-ok: the stream's pace
        if finish:
            await self.finish()

    async def reached(self, n: int) -> None:
        """Until ``n`` events (start included) have been written."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.count >= n)

    async def ids(self) -> list[str]:
        """Every entry id in the stream, from Redis: the truth clients are checked against."""
        rows = await self.r.xrange(self.settings.keys.events(self.stream_id))
        return [eid.decode() for eid, _ in rows]


async def stream_ids(r: aioredis.Redis, settings: Settings, stream_id: str) -> list[str]:
    rows = await r.xrange(settings.keys.events(stream_id))
    return [eid.decode() for eid, _ in rows]


# --- the read side ---------------------------------------------------------------------


class Ended(Exception):
    """The connection closed while a test was waiting for a message."""


@dataclass
class WsClient:
    ws: ClientConnection
    messages: list[dict[str, Any]] = field(default_factory=list)
    frames: int = 0
    #: Every frame as received (to check that sockets got the very same bytes).
    raw: list[str | bytes] = field(default_factory=list)
    #: Size of every frame read by :meth:`collect`.
    sizes: list[int] = field(default_factory=list)
    _buffer: deque[dict[str, Any]] = field(default_factory=deque)
    _ids: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    async def open(
        cls, url: str, *, bearer: str | None = None, tok: str | None = None, **kwargs: Any
    ) -> WsClient:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
        if tok is not None:
            url += ("&" if "?" in url else "?") + "token=" + tok
        ws = await connect(url, additional_headers=headers, open_timeout=WAIT_S, **kwargs)
        return cls(ws)

    async def send(self, **msg: Any) -> None:
        await self.ws.send(orjson.dumps(msg).decode())

    async def subscribe(self, stream: str, from_: str = "0") -> None:
        await self.send(op="subscribe", stream=stream, **{"from": from_})

    async def next(self, within_s: float = WAIT_S) -> dict[str, Any]:
        while not self._buffer:
            async with asyncio.timeout(within_s):
                try:
                    frame = await self.ws.recv()
                except Exception as exc:
                    raise Ended(str(exc)) from exc
            self.frames += 1
            self.raw.append(frame)
            self._buffer.extend(protocol.split_frame(frame))
        msg = self._buffer.popleft()
        self.messages.append(msg)
        if msg["op"] == "event":
            self._ids.setdefault(msg["stream"], []).append(msg["id"])
        return msg

    async def until(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            msg = await self.next()
            if pred(msg):
                return msg

    async def finished(self, stream: str) -> dict[str, Any]:
        """Until ``end`` or ``error`` for ``stream`` (perhaps already received); returns it."""

        def last(m: dict[str, Any]) -> bool:
            return m.get("stream") == stream and m["op"] in ("end", "error")

        done = [m for m in self.messages if last(m)]
        return done[-1] if done else await self.until(last)

    async def collect(self, stream: str, *, stop_after: int | None = None) -> dict[str, Any] | None:
        """Read frames until ``end``/``error`` of ``stream`` (returned), or until
        ``stop_after`` of its events were seen (None returned). The lean path for
        heavy tests: ids only, one timeout for the whole wait."""
        assert not self._buffer, "collect() after next() left messages unread"
        ids = self._ids.setdefault(stream, [])
        loads = orjson.loads
        async with asyncio.timeout(WAIT_S * 3):
            while stop_after is None or len(ids) < stop_after:
                try:
                    frame = await self.ws.recv(decode=False)
                except Exception as exc:
                    raise Ended(str(exc)) from exc
                self.frames += 1
                self.sizes.append(len(frame))
                final = None
                for line in frame.split(b"\n"):
                    msg = loads(line)
                    if msg["op"] == "event" and msg["stream"] == stream:
                        ids.append(msg["id"])
                        continue
                    self.messages.append(msg)
                    if msg.get("stream") == stream and msg["op"] in ("end", "error"):
                        final = msg
                if final is not None:
                    return final
        return None

    def ids(self, stream: str) -> list[str]:
        return list(self._ids.get(stream, ()))

    def count(self, stream: str) -> int:
        return len(self._ids.get(stream, ()))

    def events(self, stream: str) -> list[dict[str, Any]]:
        return [m["event"] for m in self.messages if m["op"] == "event" and m["stream"] == stream]

    async def close(self) -> None:
        await self.ws.close()

    async def closed(self) -> tuple[int | None, str | None]:
        """Read until the server closes; the close code and reason."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(WAIT_S):
                async for _ in self.ws:
                    pass
        await self.ws.wait_closed()
        return self.ws.close_code, self.ws.close_reason


# --- a gateway as a child process ---------------------------------------------------------


def settings_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        STREAMFAN_REDIS_URL=settings.redis_url,
        STREAMFAN_JWT_SECRET=settings.jwt_secret or "",
        STREAMFAN_PREFIX=settings.prefix,
        STREAMFAN_LOG_LEVEL="INFO",
    )
    return env


class GatewayProcess:
    """``streamfan gateway --port 0`` as a child process."""

    def __init__(self, settings: Settings, *extra: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "gateway", "--port", "0", *extra],
            env={**settings_env(settings), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = self._read_url()

    def _read_url(self, timeout_s: float = WAIT_S) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        prefix = "listening on "
        if not line.startswith(prefix):
            self.stop()
            raise AssertionError(f"gateway did not start: {line!r} {self.stderr()}")
        return line[len(prefix) :].strip()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(WAIT_S)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()


@pytest.fixture
def gateway_process() -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(settings: Settings, *extra: str, env: dict[str, str] | None = None) -> GatewayProcess:
        gp = GatewayProcess(settings, *extra, env=env)
        started.append(gp)
        return gp

    yield start
    for gp in started:
        gp.stop()
        for stream in (gp.proc.stdout, gp.proc.stderr):
            if stream is not None:
                stream.close()
