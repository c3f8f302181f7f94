"""Memory after connections leave: freed at once by reference counting, and trimmed."""

from __future__ import annotations

import asyncio
import dataclasses
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from conftest import FAST, WAIT_S, Player, WsClient, eventually, token

from gateway import Gateway
from streamfan.settings import Settings


async def answered(client: WsClient) -> WsClient:
    """The client, once the gateway answered its ping (its handler is running)."""
    await client.send(op="ping")
    await client.until(lambda m: m["op"] == "pong")
    return client


@pytest.mark.parametrize("ending", ["closed", "dropped"])
@pytest.mark.usefixtures("no_cyclic_gc")
async def test_a_connection_that_ended_is_freed_without_the_cyclic_gc(
    gateway: Gateway, gw_settings: Settings, ending: str
) -> None:
    client = await answered(await WsClient.open(gateway.url + "/ws", tok=token(gw_settings)))
    (peer,) = gateway.peers
    # The socket's objects that used to sit in reference cycles until a full collection.
    left = [weakref.ref(o) for o in (peer.ws, peer.ws.protocol, peer.ws.transport)]
    del peer
    if ending == "closed":
        await client.ws.close()
    else:
        client.ws.transport.abort()
    await eventually(lambda: all(ref() is None for ref in left))


@pytest.mark.usefixtures("no_cyclic_gc")
async def test_a_stream_nobody_watches_is_not_kept_alive_by_the_safety_net(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    checked = asyncio.Event()
    last_ids = gateway.hub.history.last_ids

    async def spied(stream_ids: Sequence[str]) -> list[bytes | None]:
        found = await last_ids(stream_ids)
        if player.stream_id in stream_ids:
            checked.set()
        return found

    monkeypatch.setattr(gateway.hub.history, "last_ids", spied)
    client = await WsClient.open(
        gateway.url + "/streams/" + player.stream_id, tok=token(gw_settings)
    )
    await client.until(lambda m: m["op"] == "event")  # the start event
    # StreamState has no __weakref__ slot: watch the subscriber set it owns.
    subs = weakref.ref(gateway.hub.streams[player.stream_id].in_step)
    async with asyncio.timeout(WAIT_S):
        await checked.wait()  # the safety net looked at the quiet stream
    await client.ws.close()
    await eventually(lambda: subs() is None)


async def test_the_gateway_trims_once_most_connections_left(
    start_gateway: Callable[..., Any], gw_settings: Settings
) -> None:
    tuning = dataclasses.replace(FAST, trim_check_s=0.02, trim_min_drop=4, trim_fraction=0.5)
    gw: Gateway = await start_gateway(gw_settings, tuning)
    tok = token(gw_settings)
    clients = [await answered(await WsClient.open(gw.url + "/ws", tok=tok)) for _ in range(6)]
    for c in clients[:4]:  # 2 of 6 left: not enough gone
        await c.ws.close()
    await eventually(lambda: len(gw.peers) == 2)
    for c in clients[4:]:
        await c.ws.close()
    await eventually(lambda: gw.metrics.memory_trims == 1)
    async with httpx.AsyncClient() as http:
        text = (await http.get(gw.http_url + "/metrics")).text
    assert "streamfan_gateway_memory_trims_total 1.0" in text
    assert "streamfan_gateway_memory_trim_seconds_total" in text
