"""Fan-out and replay: every client gets every id once, in order, however it joins."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from conftest import Player, WsClient, delta, token

from gateway import Gateway
from streamfan.settings import Settings


async def _follow(url: str, tok: str, stream: str, from_: str = "0") -> WsClient:
    client = await WsClient.open(url + "/ws", tok=tok)
    await client.subscribe(stream, from_)
    return client


async def test_live_events_reach_every_client_in_order_as_the_very_same_frames(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await Player(aredis, gw_settings).create()
    tok = token(gw_settings)
    clients = [await _follow(gateway.url, tok, player.stream_id) for _ in range(20)]
    for c in clients:
        assert await c.next() == {
            "op": "subscribed",
            "stream": player.stream_id,
            "status": "queued",
            "last_id": "0-0",
        }
    await player.begin()
    await player.play(200, batch=4)
    for c in clients:
        assert (await c.finished(player.stream_id))["op"] == "end"
    expected = await player.ids()
    assert len(expected) == 202  # start, 200 deltas, done
    for c in clients:
        assert c.ids(player.stream_id) == expected
        assert c.events(player.stream_id)[-1] == {
            "type": "done",
            "finish_reason": "stop",
            "usage": {"total_tokens": 201},
        }
    # Encoded once: every socket got the same bytes, in the same frames.
    assert all(c.raw == clients[0].raw for c in clients)
    assert gateway.metrics.direct_deliveries > 0
    assert not gateway.hub.streams  # the finished stream is no longer watched
    for c in clients:
        await c.close()


async def test_a_batch_written_in_one_round_trip_leaves_in_one_frame(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    client = await _follow(gateway.url, token(gw_settings), player.stream_id, "$")
    await client.next()  # subscribed
    await player.play(30, batch=10, finish=False)
    await client.until(lambda m: client.count(player.stream_id) == 30)
    # "subscribed", then the writes: a write is never split over frames. (Writes
    # that reach the gateway together may leave together: 10+10 in one frame.)
    sizes = [len(f.splitlines()) for f in client.raw[1:]]
    assert sum(sizes) == 30 and all(n % 10 == 0 for n in sizes), sizes
    assert client.frames == 1 + len(sizes) <= 1 + 3
    await client.close()


async def test_replay_from_0_from_dollar_and_from_an_id(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(30)
    ids = await player.ids()
    tok = token(gw_settings)
    everything = await _follow(gateway.url, tok, player.stream_id, "0")
    assert (await everything.finished(player.stream_id)) == {
        "op": "end",
        "stream": player.stream_id,
        "status": "done",
    }
    assert everything.ids(player.stream_id) == ids
    assert everything.messages[0]["status"] == "done"

    after = await _follow(gateway.url, tok, player.stream_id, ids[9])
    assert (await after.finished(player.stream_id))["op"] == "end"
    assert after.ids(player.stream_id) == ids[10:]

    nothing_next = await _follow(gateway.url, tok, player.stream_id, "$")
    assert (await nothing_next.finished(player.stream_id))["op"] == "end"
    assert nothing_next.ids(player.stream_id) == []

    at_the_end = await _follow(gateway.url, tok, player.stream_id, ids[-1])
    assert (await at_the_end.finished(player.stream_id))["op"] == "end"
    assert at_the_end.ids(player.stream_id) == []
    for c in (everything, after, nothing_next, at_the_end):
        await c.close()


async def test_dollar_on_a_running_stream_gets_exactly_what_comes_next(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(20, finish=False)
    before = await player.ids()
    client = await _follow(gateway.url, token(gw_settings), player.stream_id, "$")
    assert (await client.next())["status"] == "running"
    await player.play(20)
    await client.finished(player.stream_id)
    assert client.ids(player.stream_id) == (await player.ids())[len(before) :]
    await client.close()


async def test_subscribed_says_after_which_id_the_events_start(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(5, finish=False)
    ids = await player.ids()
    ms_only = ids[2].partition("-")[0]
    tok = token(gw_settings)
    for from_, last_id in (
        ("0", "0-0"),
        ("$", ids[-1]),
        (ids[3], ids[3]),
        (ms_only, ms_only + "-0"),
    ):
        client = await _follow(gateway.url, tok, player.stream_id, from_)
        assert await client.next() == {
            "op": "subscribed",
            "stream": player.stream_id,
            "status": "running",
            "last_id": last_id,
        }, from_
        await client.close()
    # An empty stream: "$" is everything, "0-0".
    empty = await Player(aredis, gw_settings).create()
    client = await _follow(gateway.url, tok, empty.stream_id, "$")
    assert (await client.next())["last_id"] == "0-0"
    await client.close()


async def test_a_client_that_drops_before_its_first_event_resumes_from_last_id_and_misses_nothing(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(5, finish=False)
    before = await player.ids()
    tok = token(gw_settings)
    first = await _follow(gateway.url, tok, player.stream_id, "$")
    subscribed = await first.next()
    assert subscribed["last_id"] == before[-1]
    await first.close()  # dropped before any event came
    await player.play(10, finish=False)  # written while it was away
    # Resuming with "$" again would skip those ten; from last_id it gets them all.
    resumed = await _follow(gateway.url, tok, player.stream_id, subscribed["last_id"])
    assert (await resumed.next())["last_id"] == before[-1]
    await player.play(3)  # then live, to the end
    assert (await resumed.finished(player.stream_id))["op"] == "end"
    assert resumed.ids(player.stream_id) == (await player.ids())[len(before) :]
    assert len(resumed.ids(player.stream_id)) == 10 + 3 + 1
    await resumed.close()


async def test_from_dollar_the_events_start_right_after_last_id_while_writes_race_the_subscribe(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    tok = token(gw_settings)
    # One client keeps the stream fanned out, so joiners meet a moving shared position.
    keeper = await _follow(gateway.url, tok, player.stream_id)
    await keeper.until(lambda m: m["op"] == "event")
    playing = asyncio.create_task(player.play(300, batch=2, pace_s=0.001))
    joiners = []
    for i in range(1, 11):
        await player.reached(25 * i)
        joiners.append(await _follow(gateway.url, tok, player.stream_id, "$"))
    await playing
    ids = await player.ids()
    for c in [keeper, *joiners]:
        assert (await c.finished(player.stream_id))["op"] == "end"
    assert keeper.ids(player.stream_id) == ids
    for c in joiners:
        last_id = c.messages[0]["last_id"]
        # No gap and no duplicate: exactly what Redis holds after the reported id.
        assert c.ids(player.stream_id) == ids[ids.index(last_id) + 1 :]
    for c in [keeper, *joiners]:
        await c.close()


async def test_a_late_joiner_gets_history_then_live_without_a_gap_or_disturbing_others(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    tok = token(gw_settings)
    early = [await _follow(gateway.url, tok, player.stream_id) for _ in range(5)]
    for c in early:
        await c.until(lambda m: m["op"] == "event")  # caught up: in step with the fan-out
    playing = asyncio.create_task(player.play(600, batch=2, pace_s=0.001))
    await player.reached(300)
    late = await _follow(gateway.url, tok, player.stream_id, "0")
    await playing
    for c in [*early, late]:
        assert (await c.finished(player.stream_id))["op"] == "end"
    ids = await player.ids()
    for c in [*early, late]:
        assert c.ids(player.stream_id) == ids
    # They were all in step before the stream went on: the same frames, byte for byte.
    assert all(c.raw == early[0].raw for c in early)
    for c in [*early, late]:
        await c.close()


async def test_a_client_that_drops_resumes_from_its_last_id_exactly_once(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    tok = token(gw_settings)
    first = await _follow(gateway.url, tok, player.stream_id)
    playing = asyncio.create_task(player.play(300, pace_s=0.001))
    await first.until(lambda m: first.count(player.stream_id) >= 100)
    seen = first.ids(player.stream_id)
    first.ws.transport.abort()  # the network drops, no closing handshake
    second = await _follow(gateway.url, tok, player.stream_id, seen[-1])
    await playing
    await second.finished(player.stream_id)
    assert seen + second.ids(player.stream_id) == await player.ids()
    await second.close()


async def test_200_clients_joining_at_random_moments_and_50_resuming_each_get_everything(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    rng = random.Random(7)
    n_events = 2000
    player = await (await Player(aredis, gw_settings).create()).begin()
    tok = token(gw_settings)

    async def reader(join_at: int, drop_after: int | None) -> list[str]:
        await player.reached(join_at)
        client = await _follow(gateway.url, tok, player.stream_id, "0")
        seen: list[str] = []
        if drop_after is not None:
            end = await client.collect(player.stream_id, stop_after=drop_after)
            seen = client.ids(player.stream_id)
            client.ws.transport.abort()
            if end is not None:  # it had everything before it could drop
                return seen
            client = await _follow(gateway.url, tok, player.stream_id, seen[-1])
        end = await client.collect(player.stream_id)
        assert end is not None and end["op"] == "end", end
        await client.close()
        return seen + client.ids(player.stream_id)

    readers = [
        asyncio.create_task(
            reader(rng.randint(1, n_events), rng.randint(1, n_events) if i < 50 else None)
        )
        for i in range(200)
    ]
    written = 0
    while written < n_events:
        size = min(rng.randint(1, 5), n_events - written)
        await player.write([delta(written + k) for k in range(size)])
        written += size
        await asyncio.sleep(0.0005)  # waits-on-time-ok: the stream's pace
    await player.finish()
    results = await asyncio.gather(*readers)
    ids = await player.ids()
    assert len(ids) == n_events + 2
    for got in results:
        assert got == ids


async def test_a_client_moved_to_another_gateway_mid_stream_loses_nothing(
    start_gateway: Callable[..., Any], aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    one: Gateway = await start_gateway(gw_settings)
    two: Gateway = await start_gateway(gw_settings)
    player = await (await Player(aredis, gw_settings).create()).begin()
    tok = token(gw_settings)
    on_two = await _follow(two.url, tok, player.stream_id)  # keeps gateway two's fan-out busy
    moving = await _follow(one.url, tok, player.stream_id)
    playing = asyncio.create_task(player.play(400, batch=3, pace_s=0.001))
    await moving.until(lambda m: moving.count(player.stream_id) >= 150)
    seen = moving.ids(player.stream_id)
    await moving.close()
    moved = await _follow(two.url, tok, player.stream_id, seen[-1])
    await playing
    await moved.finished(player.stream_id)
    await on_two.finished(player.stream_id)
    ids = await player.ids()
    assert seen + moved.ids(player.stream_id) == ids
    assert on_two.ids(player.stream_id) == ids
    await moved.close()
    await on_two.close()


async def test_the_stream_url_subscribes_on_connect(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(10)
    ids = await player.ids()
    url = f"{gateway.url}/streams/{player.stream_id}?from={ids[4]}"
    client = await WsClient.open(url, bearer=token(gw_settings, (player.stream_id,)))
    assert (await client.finished(player.stream_id))["op"] == "end"
    assert client.ids(player.stream_id) == ids[5:]
    await client.close()


async def test_one_connection_follows_several_streams_and_can_unsubscribe(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    a = await (await Player(aredis, gw_settings).create()).begin()
    b = await (await Player(aredis, gw_settings).create()).begin()
    c = await (await Player(aredis, gw_settings).create()).begin()
    client = await WsClient.open(gateway.url + "/ws", tok=token(gw_settings))
    for p in (a, b, c):
        await client.subscribe(p.stream_id)
        await client.until(lambda m, p=p: m["op"] == "subscribed" and m["stream"] == p.stream_id)
    await client.send(op="unsubscribe", stream=c.stream_id)
    await client.send(op="ping")
    await client.until(lambda m: m["op"] == "pong")
    await asyncio.gather(a.play(50, batch=2), b.play(50, batch=3), c.play(50))
    await client.finished(a.stream_id)
    await client.finished(b.stream_id)
    assert client.ids(a.stream_id) == await a.ids()
    assert client.ids(b.stream_id) == await b.ids()
    assert client.ids(c.stream_id) == (await c.ids())[:1] or client.ids(c.stream_id) == []
    # Unsubscribed: its slot is free again and a fresh subscription replays it.
    await client.subscribe(c.stream_id)
    await client.finished(c.stream_id)
    assert client.ids(c.stream_id)[-len(await c.ids()) :] == await c.ids()
    await client.close()
