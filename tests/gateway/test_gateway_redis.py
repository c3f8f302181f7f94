"""Redis trouble and Redis facts: restarts, killed pub/sub, trimmed history, connection counts."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import httpx
import redis.asyncio as aioredis
from conftest import Player, WsClient, eventually, token

from cli.redis_server import RedisServer
from gateway import Gateway
from gateway.live import CLIENT_NAME as LIVE_NAME
from gateway.server import READ_CLIENT_NAME
from streamfan.settings import Settings


async def _follow(gw: Gateway, settings: Settings, stream: str, from_: str = "0") -> WsClient:
    client = await WsClient.open(gw.url + "/ws", tok=token(settings))
    await client.subscribe(stream, from_)
    return client


async def test_every_client_gets_everything_across_a_pubsub_kill_and_a_redis_restart(
    persistent_redis: RedisServer, settings: Settings, start_gateway: Callable[..., Any]
) -> None:
    s = settings.replace(redis_url=persistent_redis.url)
    gw: Gateway = await start_gateway(s)
    r = aioredis.Redis.from_url(persistent_redis.url)
    player = await (await Player(r, s).create()).begin()
    clients = [await _follow(gw, s, player.stream_id) for _ in range(10)]
    playing = asyncio.create_task(player.play(600, batch=2, pace_s=0.002))

    await player.reached(150)
    killed = await r.client_kill_filter(_type="pubsub")
    assert killed >= 1
    await player.reached(300)
    await asyncio.to_thread(persistent_redis.restart)
    await playing

    for c in clients:
        assert (await c.collect(player.stream_id))["op"] == "end"  # type: ignore[index]
    ids = await player.ids()
    assert len(ids) == 602
    for c in clients:
        assert c.ids(player.stream_id) == ids
    assert gw.metrics.redis_reconnects >= 2
    for c in clients:
        await c.close()
    await r.aclose()


async def test_readyz_is_503_while_redis_is_down_and_200_again_after(
    private_redis: RedisServer, settings: Settings, start_gateway: Callable[..., Any]
) -> None:
    gw: Gateway = await start_gateway(settings.replace(redis_url=private_redis.url))
    async with httpx.AsyncClient(base_url=gw.http_url) as http:

        async def ready_is(status: int) -> httpx.Response:
            while True:
                resp = await http.get("/readyz")
                if resp.status_code == status:
                    return resp
                await asyncio.sleep(0.05)  # waits-on-time-ok: polling readiness

        async with asyncio.timeout(20):
            assert (await ready_is(200)).text == "ready\n"
            await asyncio.to_thread(private_redis.kill)
            assert "Redis is unreachable" in (await ready_is(503)).text
            assert (await http.get("/healthz")).status_code == 200  # alive all the same
            await asyncio.to_thread(private_redis.start)
            await ready_is(200)


async def test_a_subscribe_while_redis_is_down_is_answered_unavailable(
    private_redis: RedisServer, settings: Settings, start_gateway: Callable[..., Any]
) -> None:
    s = settings.replace(redis_url=private_redis.url)
    gw: Gateway = await start_gateway(s)
    await asyncio.to_thread(private_redis.kill)
    client = await _follow(gw, s, "some-stream")
    msg = await client.finished("some-stream")
    assert (msg["op"], msg["code"]) == ("error", "unavailable")
    await client.send(op="ping")  # the connection stays open
    assert (await client.next())["op"] == "pong"
    await client.close()


async def test_redis_connections_do_not_grow_with_clients_or_streams(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    players = [await (await Player(aredis, gw_settings).create()).begin() for _ in range(30)]
    clients = []
    for i in range(60):
        client = await WsClient.open(gateway.url + "/ws", tok=token(gw_settings))
        for p in players[i % 3 :: 3]:
            await client.subscribe(p.stream_id, "0")
        clients.append(client)
    await asyncio.gather(*(p.play(20, batch=2) for p in players))
    for i, client in enumerate(clients):
        for p in players[i % 3 :: 3]:
            assert (await client.finished(p.stream_id))["op"] == "end"
            assert client.ids(p.stream_id) == await p.ids()
    names = [c.get("name", "") for c in await aredis.client_list()]
    assert names.count(LIVE_NAME) == 1
    assert names.count(READ_CLIENT_NAME) <= gw_settings.read_pool_size
    # Every stream ended: nothing is watched any more, no channel is left subscribed.
    assert not gateway.hub.streams
    assert await aredis.pubsub_numsub(*(gw_settings.keys.live(p.stream_id) for p in players)) == [
        (gw_settings.keys.live(p.stream_id).encode(), 0) for p in players
    ]
    for client in clients:
        await client.close()


async def test_a_trimmed_position_is_gone_and_a_kept_one_is_not(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(50, finish=False)
    ids = await player.ids()
    await aredis.xtrim(gw_settings.keys.events(player.stream_id), maxlen=10, approximate=False)
    kept = await player.ids()
    assert kept == ids[-10:]
    # Redis does not record which id was trimmed last, so any position before the
    # first entry kept may have lost successors: gone, even the newest trimmed id.
    for position in ("0", ids[0], ids[20], ids[-11]):
        client = await _follow(gateway, gw_settings, player.stream_id, position)
        msg = await client.finished(player.stream_id)
        assert (msg["op"], msg["code"]) == ("error", "gone"), position
        # The subscribe was answered ("subscribed"); this error answers nothing.
        assert client.messages[0]["op"] == "subscribed"
        assert msg["reply_to"] is None
        assert client.ids(player.stream_id) == []
        await client.close()
    for position, expected in ((kept[0], kept[1:]), (kept[3], kept[4:]), ("$", [])):
        client = await _follow(gateway, gw_settings, player.stream_id, position)
        await client.until(lambda m: m["op"] == "subscribed")  # "$" counts from here
        await player.write([{"type": "delta", "choices": []}])
        new_id = (await player.ids())[-1]
        await client.until(lambda m, i=new_id: m.get("id") == i)
        assert client.ids(player.stream_id)[: len(expected)] == expected
        await client.close()


async def test_an_unknown_stream_is_not_found_and_an_expired_one_is_gone(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    client = await WsClient.open(gateway.url + "/ws", tok=token(gw_settings))
    for position, code in (("0", "not_found"), ("$", "not_found"), ("1700000000000-0", "gone")):
        await client.subscribe("never-was", position)
        msg = await client.until(lambda m: m["op"] == "error")
        assert (msg["stream"], msg["code"], msg["reply_to"]) == ("never-was", code, "subscribe")
    # A stream whose keys expired while a client was away: its id is gone.
    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(5)
    last = (await player.ids())[-2]
    await aredis.delete(
        gw_settings.keys.events(player.stream_id), gw_settings.keys.meta(player.stream_id)
    )
    await client.subscribe(player.stream_id, last)
    msg = await client.until(lambda m: m["op"] == "error")
    assert msg["code"] == "gone"
    await client.close()


async def test_an_unresponsive_redis_is_noticed_by_the_pubsub_ping_and_nothing_is_lost(
    private_redis: RedisServer, settings: Settings, start_gateway: Callable[..., Any]
) -> None:
    s = settings.replace(redis_url=private_redis.url)
    gw: Gateway = await start_gateway(s)
    r = aioredis.Redis.from_url(private_redis.url)
    player = await (await Player(r, s).create()).begin()
    clients = [await _follow(gw, s, player.stream_id) for _ in range(3)]
    await player.play(50, finish=False)
    assert private_redis.proc is not None
    # Frozen, not dead: sockets stay open and reads just hang (like a half-open link).
    private_redis.proc.send_signal(signal.SIGSTOP)
    try:
        await eventually(lambda: not gw.hub.live.up)  # the PING went unanswered
    finally:
        private_redis.proc.send_signal(signal.SIGCONT)
    await player.play(50)
    for c in clients:
        assert (await c.collect(player.stream_id))["op"] == "end"  # type: ignore[index]
        assert c.ids(player.stream_id) == await player.ids()
        await c.close()
    assert gw.metrics.redis_reconnects >= 1
    await r.aclose()
