"""Redis goes away under running streams, with no supervisor: nothing dies, nothing hangs.

Real processes throughout: two `streamfan worker` and two `streamfan gateway`
children, a Valkey with AOF that the test SIGKILLs and restarts on the same port
and data directory (or SIGSTOPs and SIGCONTs: a Redis that hangs instead of
refusing), the mock upstream in the test's loop, and WebSocket readers on the
gateways. Afterwards every process is still alive, every stream ended, every
reply is exactly the mock's scripted reply, every reader got exactly the stream
(every id once, in order), and the streams were moving again within
:data:`RESUME_LIMIT_S` of Redis answering.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from cli.redis_server import RedisServer, free_port
from streamfan.client import Client
from streamfan.events import Event
from streamfan.mock.server import MockUpstream
from streamfan.settings import Settings

from .conftest import WorkerProcess, expected_message, settings_env

#: The issue's bar: an outage of 10 s. (The paused variant is the same length.)
OUTAGE_S = 10.0
STREAMS = 20
#: Every stream appends again within this long of Redis answering.
RESUME_LIMIT_S = 2.0
WAIT_S = 60.0


def body(i: int) -> dict[str, Any]:
    # ~5 s of reply, so every stream is mid-reply when Redis goes and has its
    # tail buffered in the upstream socket when it comes back.
    return {
        "model": "mock-gpt",
        "messages": [{"role": "user", "content": f"stream {i}"}],
        "mock": {"reply_tokens": 120, "tokens_per_s": 24, "seed": i},
    }


class GatewayProcess:
    """``streamfan gateway --port 0`` as a child; learns its URL from its first line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "gateway", "--port", "0", "--insecure-no-auth"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on ws://"), line
        self.url = line.split()[-1]
        self.http_url = "http" + self.url.removeprefix("ws")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class Reader:
    """One WebSocket reader of many streams that resumes from its last ids on a drop."""

    def __init__(self, url: str, stream_ids: list[str]) -> None:
        self.url = url + "/ws"
        self.events: dict[str, list[tuple[str, Event]]] = {sid: [] for sid in stream_ids}
        self.ended: set[str] = set()
        self.reconnects = 0
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        while len(self.ended) < len(self.events):
            try:
                async with connect(self.url, open_timeout=5) as ws:
                    for sid, got in self.events.items():
                        if sid not in self.ended:
                            start = got[-1][0] if got else "0"
                            await ws.send(
                                orjson.dumps(
                                    {"op": "subscribe", "stream": sid, "from": start}
                                ).decode()
                            )
                    self.subscribed.set()
                    await self._read(ws)
            except (OSError, WebSocketException, _Resubscribe):
                self.reconnects += 1
                await asyncio.sleep(0.2)  # waits-on-time-ok: a reconnecting reader's pause

    async def _read(self, ws: Any) -> None:
        async for frame in ws:
            for line in frame.split("\n"):
                msg = orjson.loads(line)
                op, sid = msg["op"], msg.get("stream")
                if op == "event":
                    self.events[sid].append((msg["id"], msg["event"]))
                elif op == "end":
                    self.ended.add(sid)
                elif op == "error" and sid is not None:
                    raise _Resubscribe(msg["code"])  # e.g. unavailable: ask again later
            if len(self.ended) == len(self.events):
                return


class _Resubscribe(Exception):
    pass


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(data_dir=tmp_path / "redis").start()
    try:
        yield server
    finally:
        if server.proc is not None:
            # A test that failed while Redis was paused must not leave it stopped.
            os.kill(server.proc.pid, signal.SIGCONT)
        server.close()


@pytest.fixture
async def fleet(
    persistent_redis: RedisServer,
    pipeline_settings: Settings,
) -> AsyncIterator[dict[str, Any]]:
    settings = pipeline_settings.replace(redis_url=persistent_redis.url)
    gateways: list[GatewayProcess] = []
    workers: list[WorkerProcess] = []
    probes: list[str] = []
    try:
        for _ in range(2):
            env = settings_env(settings)
            port = free_port()
            env["STREAMFAN_WORKER_METRICS_PORT"] = str(port)
            # Short timeouts: a paused Redis is noticed within a second.
            env["STREAMFAN_REDIS_TIMEOUT_S"] = "1.0"
            workers.append(WorkerProcess(env))
            probes.append(f"http://127.0.0.1:{port}/readyz")
        for _ in range(2):
            env = settings_env(settings)
            del env["STREAMFAN_JWT_SECRET"]  # readers come without tokens
            gw = await asyncio.to_thread(GatewayProcess, env)
            gateways.append(gw)
            probes.append(gw.http_url + "/readyz")
        async with Client(settings) as client:
            yield {
                "settings": settings,
                "client": client,
                "workers": workers,
                "gateways": gateways,
                "probes": probes,
            }
    finally:
        for gw in gateways:
            gw.terminate()
        for wp in workers:
            wp.terminate()


async def readiness(http: httpx.AsyncClient, urls: list[str], status: int) -> None:
    """Until every probe answers ``status`` (a refused connection counts as not ready)."""
    pending = set(urls)
    while pending:
        for url in list(pending):
            try:
                got = (await http.get(url, timeout=3.0)).status_code
            except httpx.TransportError:
                got = -1
            if got == status:
                pending.discard(url)
        if pending:
            await asyncio.sleep(0.1)  # waits-on-time-ok: polling readiness probes


async def ride_out(
    fleet: dict[str, Any],
    mock_upstream: MockUpstream,
    go_away: Callable[[], None],
    come_back: Callable[[], None],
) -> float:
    """20 streams, an outage of OUTAGE_S, then every check; returns the resume time."""
    client: Client = fleet["client"]
    async with httpx.AsyncClient() as http:
        await asyncio.wait_for(readiness(http, fleet["probes"], 200), WAIT_S)
        subs = [await client.submit(body(i)) for i in range(STREAMS)]
        ids = [s.stream_id for s in subs]
        readers = [Reader(gw.url, ids) for gw in fleet["gateways"]]
        tasks = [asyncio.create_task(r.run()) for r in readers]
        for r in readers:
            await asyncio.wait_for(r.subscribed.wait(), WAIT_S)
        # Every stream mid-reply: a few chunks already sent by the upstream.
        for i in range(STREAMS):
            await asyncio.wait_for(mock_upstream.wait_chunks(i, 10), WAIT_S)

        await asyncio.to_thread(go_away)
        gone_at = time.monotonic()
        gone_ms = int(time.time() * 1000)
        await asyncio.wait_for(readiness(http, fleet["probes"], 503), WAIT_S)
        remaining = OUTAGE_S - (time.monotonic() - gone_at)
        await asyncio.sleep(max(remaining, 0))  # waits-on-time-ok: the outage's length
        await asyncio.to_thread(come_back)
        answering_ms = int(time.time() * 1000)

        results = [await asyncio.wait_for(client.result(i), WAIT_S) for i in ids]
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
        await asyncio.wait_for(readiness(http, fleet["probes"], 200), WAIT_S)

    resumed_ms = []
    for i, (sid, result) in enumerate(zip(ids, results, strict=True)):
        assert result.status == "done", (sid, result.status)
        assert result.message == expected_message(body(i)), sid
        stored = [(eid, event) async for eid, event in client.events(sid)]
        for reader in readers:
            assert reader.events[sid] == stored, f"{sid}: a reader's stream differs"
        # Entry ids are Redis's clock (this machine's): the first one written
        # after the outage began says when this stream moved again.
        after = [int(eid.split("-")[0]) for eid, _e in stored if int(eid.split("-")[0]) >= gone_ms]
        assert after, f"{sid}: nothing written after the outage"
        resumed_ms.append(after[0] - answering_ms)
    resume_s = max(resumed_ms) / 1000
    for wp in fleet["workers"]:
        assert wp.proc.poll() is None, "a worker exited"
    for gw in fleet["gateways"]:
        assert gw.proc.poll() is None, "a gateway exited"
    assert resume_s < RESUME_LIMIT_S, f"streams resumed {resume_s:.2f} s after Redis answered"
    print(
        f"outage {OUTAGE_S:g} s: resumed within {resume_s:.2f} s; "
        f"reader reconnects {[r.reconnects for r in readers]}"
    )
    return resume_s


async def test_workers_and_gateways_ride_out_redis_killed_for_10_s_and_every_reply_is_exact(
    fleet: dict[str, Any], mock_upstream: MockUpstream, persistent_redis: RedisServer
) -> None:
    await ride_out(fleet, mock_upstream, persistent_redis.kill, persistent_redis.start)


async def test_workers_and_gateways_ride_out_redis_paused_for_10_s_and_every_reply_is_exact(
    fleet: dict[str, Any], mock_upstream: MockUpstream, persistent_redis: RedisServer
) -> None:
    proc = persistent_redis.proc
    assert proc is not None
    await ride_out(
        fleet,
        mock_upstream,
        lambda: os.kill(proc.pid, signal.SIGSTOP),
        lambda: os.kill(proc.pid, signal.SIGCONT),
    )


@pytest.mark.parametrize("outage", ["killed", "paused"])
async def test_a_worker_stopped_while_redis_is_down_exits_cleanly_and_promptly(
    outage: str,
    persistent_redis: RedisServer,
    pipeline_settings: Settings,
    mock_upstream: MockUpstream,
) -> None:
    settings = pipeline_settings.replace(redis_url=persistent_redis.url)
    env = settings_env(settings)
    env["STREAMFAN_REDIS_TIMEOUT_S"] = "1.0"
    worker = WorkerProcess(env)
    try:
        async with Client(settings) as client:
            for i in range(3):
                await client.submit(body(i))
            for i in range(3):
                await asyncio.wait_for(mock_upstream.wait_chunks(i, 5), WAIT_S)
        if outage == "killed":
            await asyncio.to_thread(persistent_redis.kill)
        else:
            assert persistent_redis.proc is not None
            os.kill(persistent_redis.proc.pid, signal.SIGSTOP)
        stopping = time.monotonic()
        worker.proc.terminate()
        code = await asyncio.to_thread(worker.proc.wait, 30)
        took = time.monotonic() - stopping
    finally:
        worker.terminate()
    assert code == 0
    assert took < 10, f"took {took:.1f} s to stop"
