"""One worker through a Redis outage, in the test's loop: probes, writes and leases.

The fleet-level proof (processes, 20 streams, kill and pause) is
``test_redis_outage.py``; these pin down the parts.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from cli.redis_server import RedisServer, free_port
from streamfan import events
from streamfan.client import Client
from streamfan.events import decode_event
from streamfan.settings import Settings
from streamfan.store import create_meta
from worker.publisher import Publisher

from .conftest import RunningWorker, expected_message


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(data_dir=tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.close()


async def status_is(http: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    while True:
        resp = await http.get(path)
        if resp.status_code == status:
            return resp
        await asyncio.sleep(0.05)  # waits-on-time-ok: polling a probe


async def test_the_worker_survives_redis_dying_and_its_readyz_fails_then_recovers_by_itself(
    aof_redis: RedisServer,
    pipeline_settings: Settings,
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    port = free_port()
    s = pipeline_settings.replace(redis_url=aof_redis.url, worker_metrics_port=port)
    async with (
        start_worker(s) as worker,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http,
    ):
        async with asyncio.timeout(30):
            assert (await status_is(http, "/readyz", 200)).text == "ready\n"
            assert "streamfan_worker_redis_up 1.0" in (await http.get("/metrics")).text
            await asyncio.to_thread(aof_redis.kill)
            assert "unreachable" in (await status_is(http, "/readyz", 503)).text
            assert (await http.get("/healthz")).status_code == 200  # alive: never restart it
            while "streamfan_worker_redis_up 0.0" not in (await http.get("/metrics")).text:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # waits-on-time-ok: the poll notices
            assert worker.task is not None and not worker.task.done()
            await asyncio.to_thread(aof_redis.start)
            await status_is(http, "/readyz", 200)
        # And it works again: a new job runs to the end.
        async with Client(s) as client:
            body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "again"}]}
            sub = await client.submit(body)
            result = await asyncio.wait_for(client.result(sub.stream_id), 20)
        assert (result.status, result.message) == ("done", expected_message(body))
        assert worker.state.queue_outage.count >= 1


async def test_a_write_waits_out_an_outage_and_lands_exactly_once(
    aof_redis: RedisServer, settings: Settings
) -> None:
    r = aioredis.Redis.from_url(aof_redis.url, socket_timeout=1, socket_connect_timeout=1)
    pub = Publisher(r, settings)
    try:
        await create_meta(r, settings.keys, "w1", model="m", owner=None)
        claim = await pub.begin("w1", "tok", "m")
        writer = pub.writer("w1", claim.attempt)
        await writer.write([events.start("w1", "m", 1, claim.attempt)])
        await asyncio.to_thread(aof_redis.kill)
        delta = events.delta([{"index": 0, "delta": {"content": "x"}}])
        pending = asyncio.create_task(writer.write([delta]))
        while pub.outage.up:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # waits-on-time-ok: the write noticing the outage
        assert not pending.done()
        await asyncio.to_thread(aof_redis.start)
        await asyncio.wait_for(pending, 10)
        rows = await r.xrange(settings.keys.events("w1"))
        assert [decode_event(f[b"e"])["type"] for _i, f in rows] == ["start", "delta"]
        assert pub.outage.up
    finally:
        await pub.aclose()
        await r.aclose()


async def test_a_lapsed_lease_is_taken_back_only_by_the_attempt_that_still_owns_the_stream(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    await create_meta(aredis, settings.keys, "l1", model="m", owner=None)
    pub = Publisher(aredis, settings)
    lease = settings.keys.lease("l1")
    first = await pub.begin("l1", "tok-1", "m")
    await aredis.delete(lease)  # as if its TTL ran out while Redis was away
    assert (await pub.renew("l1", "tok-1"))[0] is False  # no attempt named: lost
    assert (await pub.renew("l1", "tok-1", attempt=first.attempt))[0] is True
    assert await aredis.get(lease) == b"tok-1"
    assert 0 < await aredis.pttl(lease) <= pub.lease_ms
    # Once another attempt began, the old one never takes the stream back.
    await aredis.delete(lease)
    second = await pub.begin("l1", "tok-2", "m")
    assert second.attempt == first.attempt + 1
    await aredis.delete(lease)
    assert (await pub.renew("l1", "tok-1", attempt=first.attempt))[0] is False
    assert await aredis.get(lease) is None
    await pub.aclose()


async def test_a_worker_started_while_redis_is_down_waits_for_it_instead_of_exiting(
    tmp_path: Path,
    pipeline_settings: Settings,
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    server = RedisServer(data_dir=tmp_path / "later")
    s = pipeline_settings.replace(redis_url=server.url)
    running = start_worker(s)
    entering = asyncio.create_task(running.__aenter__())
    try:
        while running.worker.queue_outage.up:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # waits-on-time-ok: the first failed PING
        assert not entering.done()
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(entering, 20)
        async with Client(s) as client:
            body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "late"}]}
            sub = await client.submit(body)
            result = await asyncio.wait_for(client.result(sub.stream_id), 20)
        assert (result.status, result.message) == ("done", expected_message(body))
        await running.__aexit__(None, None, None)
    finally:
        entering.cancel()
        server.close()


async def test_the_control_listener_notices_a_paused_redis_and_resubscribes_after(
    private_redis: RedisServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import control

    # A paused Redis accepts connections and writes and answers nothing: only the
    # missing PONG (or subscribe confirmation) gives it away. Shortened for the test.
    monkeypatch.setattr(control, "PING_INTERVAL_S", 0.2)
    monkeypatch.setattr(control, "PONG_TIMEOUT_S", 0.3)
    r = aioredis.Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=1)
    channel = control.ControlChannel(r, settings.keys.cancel_channel, settings.keys.jobs_channel)
    proc = private_redis.proc
    assert proc is not None
    channel.start()
    try:
        async with asyncio.timeout(20):
            await channel.subscribed.wait()
            os.kill(proc.pid, signal.SIGSTOP)
            while channel.subscribed.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # waits-on-time-ok: the PONG deadline
            assert not channel.outage.up
            os.kill(proc.pid, signal.SIGCONT)
            await channel.subscribed.wait()
            assert channel.outage.up
            channel.work_available.clear()
            await r.publish(settings.keys.jobs_channel, "a-job")
            await channel.work_available.wait()  # nudges flow again
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        await channel.stop()
        await r.aclose()
