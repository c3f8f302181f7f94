"""The ``gone`` rule, asked of both readers: the client API and the gateway agree.

Each test damages a finished stream the way Redis can (``MAXLEN`` trimming,
trimming to empty, ``XDEL``, an events key that expired before its meta) and
reads it from several positions through ``Client.events`` and through a
WebSocket subscription: both must give the same ids to the end, or the same
error. The cases where the two old implementations differed are marked.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from conftest import WAIT_S, Player, WsClient, token

from gateway import Gateway
from streamfan.client import Client
from streamfan.errors import HistoryGone, StreamNotFound
from streamfan.settings import Settings

#: The ids read up to the end of the stream, or the error code.
Outcome = list[str] | str


async def via_client(settings: Settings, stream_id: str, position: str) -> Outcome:
    async with asyncio.timeout(WAIT_S), Client(settings) as client:
        try:
            return [entry_id async for entry_id, _ in client.events(stream_id, from_=position)]
        except HistoryGone:
            return "gone"
        except StreamNotFound:
            return "not_found"


async def via_gateway(gw: Gateway, settings: Settings, stream_id: str, position: str) -> Outcome:
    ws = await WsClient.open(gw.url + "/ws", tok=token(settings))
    try:
        await ws.subscribe(stream_id, position)
        msg = await ws.finished(stream_id)
        return ws.ids(stream_id) if msg["op"] == "end" else str(msg["code"])
    finally:
        await ws.close()


async def read_both(gw: Gateway, settings: Settings, stream_id: str, position: str) -> Outcome:
    by_client = await via_client(settings, stream_id, position)
    by_gateway = await via_gateway(gw, settings, stream_id, position)
    assert by_client == by_gateway, (position, by_client, by_gateway)
    return by_client


async def finished_stream(r: aioredis.Redis, settings: Settings, deltas: int) -> Player:
    """start, ``deltas`` deltas, done; its meta says ``done``."""
    player = await (await Player(r, settings).create()).begin()
    await player.play(deltas)
    return player


async def test_both_readers_call_a_position_before_the_oldest_kept_entry_gone(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await finished_stream(aredis, gw_settings, 20)
    ids = await player.ids()
    await aredis.xtrim(gw_settings.keys.events(player.stream_id), maxlen=5, approximate=False)
    kept = ids[-5:]
    cases: list[tuple[str, Outcome]] = [
        ("0", "gone"),  # everything was asked for; not everything is kept
        (ids[0], "gone"),
        (ids[-6], "gone"),  # the newest trimmed id: Redis cannot tell it was the last
        (kept[0], kept[1:]),
        (kept[-1], []),  # the terminal event itself: nothing follows
        ("$", []),
    ]
    for position, expected in cases:
        assert await read_both(gateway, gw_settings, player.stream_id, position) == expected


async def test_a_position_at_the_end_of_a_stream_trimmed_to_empty_lost_nothing(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    # The old client check said gone here (entries removed, none kept); the old
    # gateway read did not. Nothing was ever written after the newest id.
    player = await finished_stream(aredis, gw_settings, 5)
    ids = await player.ids()
    await aredis.xtrim(gw_settings.keys.events(player.stream_id), maxlen=0, approximate=False)
    assert await player.ids() == []
    for position, expected in ((ids[-1], []), ("$", []), (ids[-2], "gone"), ("0", "gone")):
        assert await read_both(gateway, gw_settings, player.stream_id, position) == expected


async def test_an_entry_deleted_after_a_readable_position_is_skipped_whether_or_not_it_is_kept(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    # The old gateway read said gone from ids[2] (deleted itself, with a deleted
    # successor: max-deleted-entry-id) but not from ids[1] (kept, same deleted
    # successors); the old client check said neither. Head trimming is what
    # ``gone`` reports; an XDEL'd entry in the middle is an operator's edit.
    player = await finished_stream(aredis, gw_settings, 5)
    ids = await player.ids()
    await aredis.xdel(gw_settings.keys.events(player.stream_id), ids[2], ids[3])
    cases: list[tuple[str, Outcome]] = [
        (ids[1], ids[4:]),
        (ids[2], ids[4:]),
        (ids[3], ids[4:]),
        # Entries were removed and "0" is before the oldest kept: Redis cannot
        # tell that none came from the head, so everything is not guaranteed.
        ("0", "gone"),
    ]
    for position, expected in cases:
        assert await read_both(gateway, gw_settings, player.stream_id, position) == expected


async def test_a_stream_whose_events_expired_before_its_meta_is_gone_before_its_last_id(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    # The old client waited (the events key was missing, the meta still there);
    # the old gateway said gone even to a reader that had everything.
    player = await finished_stream(aredis, gw_settings, 5)
    ids = await player.ids()
    await aredis.delete(gw_settings.keys.events(player.stream_id))
    for position, expected in ((ids[-1], []), ("$", []), (ids[0], "gone"), ("0", "gone")):
        assert await read_both(gateway, gw_settings, player.stream_id, position) == expected


async def test_a_stream_with_no_meta_is_not_found_from_the_start_and_gone_from_an_id(
    gateway: Gateway, gw_settings: Settings
) -> None:
    # "0-0" is "0" spelled out: the old client said gone to it.
    cases = (("0", "not_found"), ("0-0", "not_found"), ("$", "not_found"), ("1-0", "gone"))
    for position, expected in cases:
        assert await read_both(gateway, gw_settings, "never-was", position) == expected


async def test_a_client_reader_that_falls_behind_what_maxlen_keeps_is_told_instead_of_skipping(
    aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    s = gw_settings.replace(maxlen=10)
    player = await (await Player(aredis, s).create()).begin()
    async with Client(s) as client:
        reader = client.events(player.stream_id, from_="0")
        first_id, first = await anext(reader)
        assert first["type"] == "start"
        # The reader pauses while the writer goes far past MAXLEN.
        await player.play(300)
        assert first_id not in await player.ids()
        try:
            async with asyncio.timeout(WAIT_S):
                await anext(reader)
            raise AssertionError("the reader skipped trimmed entries silently")
        except HistoryGone as exc:
            assert exc.position == first_id
        finally:
            await reader.aclose()
