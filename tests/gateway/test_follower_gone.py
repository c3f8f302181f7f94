"""A live follower whose stream vanishes is told ``gone``, not left waiting.

The hub's shared read asks the shared rule (:mod:`streamfan.history`) whether
history after its last id was lost, and also gives up on a stream whose events
key has disappeared after it delivered entries (expired or deleted): no
terminal event can come any more. By the shared rule alone, nothing was lost
after the newest id the follower had, so it would wait forever, re-read by the
safety net every few seconds.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from conftest import Player, WsClient, eventually, token

from gateway import Gateway
from streamfan.settings import Settings


async def test_a_live_follower_of_a_stream_whose_keys_vanish_is_told_gone(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(3, finish=False)
    ws = await WsClient.open(gateway.url + "/ws", tok=token(gw_settings))
    await ws.subscribe(player.stream_id)
    ids = await player.ids()
    await ws.until(lambda m: m["op"] == "event" and m["id"] == ids[-1])

    def in_step() -> bool:
        st = gateway.hub.streams.get(player.stream_id)
        return st is not None and bool(st.in_step)

    await eventually(in_step)
    keys = gw_settings.keys
    await aredis.delete(keys.events(player.stream_id), keys.meta(player.stream_id))
    # The safety net finds no meta last_id behind a stream it delivered from and
    # re-reads it (within FAST.safety_poll_s).
    msg = await ws.finished(player.stream_id)
    assert msg["op"] == "error" and msg["code"] == "gone", msg
    assert ws.ids(player.stream_id) == ids
    assert player.stream_id not in gateway.hub.streams
    await ws.close()
