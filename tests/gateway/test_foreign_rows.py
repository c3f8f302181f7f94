"""Rows streamfan did not write: both readers skip them, move past them, and go on.

Anyone with access to Redis can ``XADD`` to a stream. A row with no ``e`` field,
or whose ``e`` is not a JSON object with a string ``type``, is no event: the
client API and the gateway skip it (with a warning) and carry on from after it.
Pages small enough to be filled by such rows alone show that no reader stays on
one (before, a full page of them left the position where it was, forever), and
subscribers of other streams on the same socket or gateway see nothing of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import FAST, WAIT_S, Player, WsClient, delta, eventually, token

from gateway import Gateway
from streamfan import client as client_module
from streamfan import events
from streamfan.client import Client
from streamfan.events import encode_event
from streamfan.history import PageReader, is_event_json
from streamfan.positions import parse_id
from streamfan.settings import Settings

#: Pages of four: a few foreign rows fill one.
SMALL_PAGES = dataclasses.replace(FAST, catch_up_page=4, pump_page=4)

#: Rows no reader may deliver, one of each kind.
FOREIGN: tuple[dict[str, bytes], ...] = (
    {"x": b"1"},  # no ``e`` field at all
    {"e": b""},
    {"e": b"not json"},
    {"e": b'{"type":"delta",\n'},  # not JSON, and a raw newline (broke the framing)
    {"e": b'{"type":"\xff\xfe"}'},  # not UTF-8 (would fail a text frame)
    {"e": b"null"},
    {"e": b"42"},
    {"e": b'["a"]'},
    {"e": b'{"no":"type"}'},
    {"e": b'{"type":7}'},
)

#: A well-formed object of a type no reader knows: the gateway relays it (it does
#: not validate events), the client API skips it (it does).
UNKNOWN_TYPE = b'{"type":"mystery","x":1}'


async def add_foreign(r: aioredis.Redis, settings: Settings, stream_id: str, rounds: int) -> None:
    key = settings.keys.events(stream_id)
    for _ in range(rounds):
        for fields in FOREIGN:
            await r.xadd(key, fields)  # type: ignore[arg-type]


async def add_raw(r: aioredis.Redis, settings: Settings, stream_id: str, ev: bytes) -> str:
    """An ``XADD`` with no wake-up (as if the wake-up was lost); the meta's last_id follows."""
    entry_id: bytes = await r.xadd(settings.keys.events(stream_id), {"e": ev})
    await r.hset(settings.keys.meta(stream_id), "last_id", entry_id)  # type: ignore[misc]
    return entry_id.decode()


async def real_ids(r: aioredis.Redis, settings: Settings, stream_id: str) -> list[str]:
    """The ids of the rows that hold an event, from Redis."""
    rows = await r.xrange(settings.keys.events(stream_id))
    return [eid.decode() for eid, f in rows if b"e" in f and is_event_json(f[b"e"])]


async def poisoned_stream(r: aioredis.Redis, settings: Settings, rounds: int = 2) -> Player:
    """start, then ``rounds`` of every kind of foreign row, then 3 deltas and done."""
    player = await (await Player(r, settings).create()).begin()
    await add_foreign(r, settings, player.stream_id, rounds)
    await player.play(3)
    return player


async def client_ids(settings: Settings, stream_id: str, position: str = "0") -> list[str]:
    async with asyncio.timeout(WAIT_S), Client(settings) as client:
        return [entry_id async for entry_id, _ in client.events(stream_id, from_=position)]


async def gateway_ids(gw: Gateway, settings: Settings, stream_id: str, position: str) -> list[str]:
    ws = await WsClient.open(gw.url + "/ws", tok=token(settings))
    try:
        await ws.subscribe(stream_id, position)
        assert (await ws.finished(stream_id))["op"] == "end"
        return ws.ids(stream_id)
    finally:
        await ws.close()


def test_only_a_json_object_with_a_string_type_counts_as_an_event() -> None:
    for fields in FOREIGN[1:]:
        assert not is_event_json(fields["e"]), fields
    assert is_event_json(UNKNOWN_TYPE)
    assert is_event_json(encode_event(delta(0)))


async def test_a_page_never_comes_back_empty_unless_it_reached_the_end(
    aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await poisoned_stream(aredis, gw_settings)
    ids = await player.ids()
    real = await real_ids(aredis, gw_settings, player.stream_id)
    pages = PageReader(aredis, gw_settings.keys)
    # From the start event: 20 foreign rows (five pages of 4), then the first delta.
    page = await pages.read(player.stream_id, parse_id(real[0]), 4)
    assert [eid.decode() for eid, _ in page.entries] == real[1:5]
    assert not page.complete
    assert page.read_to == parse_id(real[4])
    # Foreign rows to the end: an empty page, but complete, and past them.
    tail = await aredis.xadd(gw_settings.keys.events(player.stream_id), {"x": b"1"})
    page = await pages.read(player.stream_id, parse_id(ids[-1]), 4)
    assert page.entries == []
    assert page.complete
    assert page.read_to == parse_id(tail)


async def test_both_readers_read_past_pages_of_foreign_rows_from_any_position(
    start_gateway: Callable[..., Any],
    aredis: aioredis.Redis,
    gw_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(client_module, "READ_COUNT", 4)
    gw: Gateway = await start_gateway(gw_settings, SMALL_PAGES)
    player = await poisoned_stream(aredis, gw_settings)
    ids = await player.ids()
    real = await real_ids(aredis, gw_settings, player.stream_id)
    assert len(real) == 5 and len(ids) == 5 + 2 * len(FOREIGN)
    foreign = [i for i in ids if i not in real]
    # A position may even be a foreign row's id: everything after it follows.
    for position, expected in (("0", real), (real[0], real[1:]), (foreign[3], real[1:])):
        assert await client_ids(gw_settings, player.stream_id, position) == expected
        assert await gateway_ids(gw, gw_settings, player.stream_id, position) == expected
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(player.stream_id in m and "skipped" in m for m in skipped), skipped


async def test_subscribers_of_other_streams_on_the_same_socket_are_undisturbed(
    start_gateway: Callable[..., Any], aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    gw: Gateway = await start_gateway(gw_settings, SMALL_PAGES)
    clean = await (await Player(aredis, gw_settings).create()).begin()
    both = await WsClient.open(gw.url + "/ws", tok=token(gw_settings))
    other = await WsClient.open(gw.url + "/ws", tok=token(gw_settings))
    await other.subscribe(clean.stream_id)
    poisoned = await poisoned_stream(aredis, gw_settings)
    await both.subscribe(poisoned.stream_id)
    await both.subscribe(clean.stream_id)
    await clean.play(20)
    # Every frame both sockets received parsed as JSON Lines (WsClient splits
    # them with orjson) and as UTF-8 (websockets checks text frames).
    for ws in (both, other):
        assert (await ws.finished(clean.stream_id))["op"] == "end"
        assert ws.ids(clean.stream_id) == await clean.ids()
    assert (await both.finished(poisoned.stream_id))["op"] == "end"
    assert both.ids(poisoned.stream_id) == await real_ids(aredis, gw_settings, poisoned.stream_id)
    for ws in (both, other):
        await ws.close()


async def test_a_live_follower_is_read_past_foreign_rows_when_a_wakeup_was_lost(
    start_gateway: Callable[..., Any], aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    # The shared read (the hub's pump) goes through the foreign rows only when it
    # cannot deliver from a wake-up: here the real events come with none, and a
    # bare wake-up (or the safety net, a moment later) makes the hub read.
    gw: Gateway = await start_gateway(gw_settings, SMALL_PAGES)
    player = await (await Player(aredis, gw_settings).create()).begin()
    bystander = await (await Player(aredis, gw_settings).create()).begin()
    ws = await WsClient.open(gw.url + "/ws", tok=token(gw_settings))
    await ws.subscribe(player.stream_id)
    await ws.subscribe(bystander.stream_id)
    await ws.until(lambda m: m["op"] == "event" and m["stream"] == player.stream_id)

    def in_step() -> bool:
        st = gw.hub.streams.get(player.stream_id)
        return st is not None and bool(st.in_step)

    await eventually(in_step)
    await add_foreign(aredis, gw_settings, player.stream_id, 2)
    written = [
        await add_raw(aredis, gw_settings, player.stream_id, encode_event(ev))
        for ev in (delta(0), events.done("stop", None))
    ]
    await aredis.publish(gw_settings.keys.live(player.stream_id), b"0-0")
    assert (await ws.finished(player.stream_id))["op"] == "end"
    assert ws.ids(player.stream_id) == [(await player.ids())[0], *written]
    await bystander.play(5)
    assert (await ws.finished(bystander.stream_id))["op"] == "end"
    assert ws.ids(bystander.stream_id) == await bystander.ids()
    await ws.close()


async def test_an_object_of_unknown_type_is_relayed_by_the_gateway_and_skipped_by_the_client(
    gateway: Gateway,
    aredis: aioredis.Redis,
    gw_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    raw: bytes = await aredis.xadd(gw_settings.keys.events(player.stream_id), {"e": UNKNOWN_TYPE})
    odd = raw.decode()
    await player.play(2)
    ids = await player.ids()
    assert await gateway_ids(gateway, gw_settings, player.stream_id, "0") == ids
    assert await client_ids(gw_settings, player.stream_id) == [i for i in ids if i != odd]
    warned = [r.getMessage() for r in caplog.records if r.name == "streamfan.client"]
    assert any(player.stream_id in m and odd in m and "mystery" in m for m in warned), warned


async def test_a_client_at_the_end_waits_after_the_foreign_rows_it_skipped(
    aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    # Before, it waited for entries after the last event it yielded: XREAD
    # answered at once with the foreign rows, and the reader spun until the
    # next real event. Now it blocks in XREAD like any reader that caught up.
    player = await (await Player(aredis, gw_settings).create()).begin()
    async with Client(gw_settings) as client:
        reader = client.events(player.stream_id, from_="0")
        try:
            async with asyncio.timeout(WAIT_S):
                assert (await anext(reader))[1]["type"] == "start"
            await add_foreign(aredis, gw_settings, player.stream_id, 1)
            nxt = asyncio.ensure_future(anext(reader))

            async def blocked_in_xread() -> bool:
                clients = await aredis.client_list()
                return any(c["cmd"] == "xread" and "b" in c["flags"] for c in clients)

            async with asyncio.timeout(WAIT_S):
                while not await blocked_in_xread():
                    assert not nxt.done()
                    await asyncio.sleep(0.01)  # waits-on-time-ok: polling Redis state
            await player.play(1, finish=False)
            async with asyncio.timeout(WAIT_S):
                entry_id, event = await nxt
            assert event["type"] == "delta"
            assert entry_id == (await player.ids())[-1]
        finally:
            await reader.aclose()
