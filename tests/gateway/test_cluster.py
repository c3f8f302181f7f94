"""The gateway with the event keys on a 3-master Redis Cluster: sharded pub/sub on
one connection per shard, history and resume, and the whole pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from conftest import Player, WsClient, token

from cli.redis_cluster import RedisCluster
from gateway import Gateway
from gateway.cluster_live import ClusterLive
from gateway.live import CLIENT_NAME as LIVE_NAME
from streamfan.client import Client
from streamfan.cluster import EventsRedis, connect_events, slot
from streamfan.keys import new_stream_id
from streamfan.mock.server import MockUpstream
from streamfan.settings import Settings
from tests.integration.conftest import RunningWorker


@pytest.fixture
def cl_settings(cluster_settings: Settings) -> Settings:
    return cluster_settings.replace(host="127.0.0.1", port=0)


@pytest.fixture
async def acluster(cluster_url: str) -> AsyncIterator[EventsRedis]:
    r = await connect_events(cluster_url)
    try:
        yield r
    finally:
        await r.aclose()


@pytest.fixture
async def cl_gateway(start_gateway: Callable[..., Any], cl_settings: Settings) -> Gateway:
    gw: Gateway = await start_gateway(cl_settings)
    return gw


async def _follow(url: str, tok: str, stream: str, from_: str = "0") -> WsClient:
    client = await WsClient.open(url + "/ws", tok=tok)
    await client.subscribe(stream, from_)
    return client


def live_connections(cluster_url: str) -> dict[str, int]:
    """Pub/sub connections named by the gateway, per master."""
    out = {}
    with redis.RedisCluster.from_url(cluster_url) as rc:
        for node in rc.get_primaries():
            clients = rc.client_list(target_nodes=node)
            out[node.name] = sum(1 for c in clients if c.get("name") == LIVE_NAME)
    return out


def spread(cluster: RedisCluster, settings: Settings, per_master: int) -> list[str]:
    """Fresh stream ids, ``per_master`` on each master."""
    by_port: dict[int, list[str]] = {node.port: [] for node in cluster.masters()}
    while any(len(ids) < per_master for ids in by_port.values()):
        sid = new_stream_id()
        ids = by_port[cluster.owner(slot(settings.keys.live(sid))).port]
        if len(ids) < per_master:
            ids.append(sid)
    return [sid for ids in by_port.values() for sid in ids]


async def test_streams_on_every_shard_reach_their_clients_over_one_connection_per_shard(
    cl_gateway: Gateway,
    acluster: EventsRedis,
    cl_settings: Settings,
    cluster_url: str,
    redis_cluster: RedisCluster,
) -> None:
    players = [
        await Player(acluster, cl_settings, sid).create()
        for sid in spread(redis_cluster, cl_settings, 4)
    ]
    tok = token(cl_settings)
    clients = [await _follow(cl_gateway.url, tok, p.stream_id) for p in players for _ in range(3)]
    for c in clients:
        assert (await c.next())["op"] == "subscribed"
    live = cl_gateway.hub.live
    assert isinstance(live, ClusterLive)
    assert len(live.shards) == 3
    assert live_connections(cluster_url) == dict.fromkeys(live.shards, 1)
    for p in players:
        await p.begin()
    await asyncio.gather(*(p.play(60, batch=3) for p in players))
    for i, c in enumerate(clients):
        player = players[i // 3]
        assert (await c.finished(player.stream_id))["op"] == "end"
        assert c.ids(player.stream_id) == await player.ids()
    assert cl_gateway.metrics.direct_deliveries > 0, "wake-ups carried the events"
    for c in clients:
        await c.close()


async def test_a_client_resumes_after_any_id_and_late_joiners_replay_from_the_cluster(
    cl_gateway: Gateway, acluster: EventsRedis, cl_settings: Settings
) -> None:
    player = await (await Player(acluster, cl_settings).create()).begin()
    tok = token(cl_settings)
    await player.play(50, finish=False)
    truth = await player.ids()
    late = await _follow(cl_gateway.url, tok, player.stream_id)
    resumed = await _follow(cl_gateway.url, tok, player.stream_id, truth[20])
    assert (await late.next())["op"] == "subscribed"
    assert (await resumed.next())["op"] == "subscribed"
    await player.play(30)
    truth = await player.ids()
    assert (await late.finished(player.stream_id))["op"] == "end"
    assert (await resumed.finished(player.stream_id))["op"] == "end"
    assert late.ids(player.stream_id) == truth
    assert resumed.ids(player.stream_id) == truth[21:]


async def test_the_whole_pipeline_on_the_cluster_reaches_gateway_clients_exactly(
    cl_gateway: Gateway, cl_settings: Settings
) -> None:
    async with MockUpstream() as mock, Client(cl_settings) as client:
        settings = cl_settings.replace(upstream_base_url=mock.base_url)
        tok = token(cl_settings)
        async with RunningWorker(settings):
            body = {
                "model": "mock-gpt",
                "messages": [{"role": "user", "content": "on a cluster"}],
                "mock": {"reply_tokens": 400, "tokens_per_s": 1000},
            }
            subs = [await client.submit(body) for _ in range(6)]
            readers = [await _follow(cl_gateway.url, tok, s.stream_id) for s in subs]
            ends = await asyncio.gather(
                *(r.collect(s.stream_id) for r, s in zip(readers, subs, strict=True))
            )
            results = [await client.result(s.stream_id) for s in subs]
        for sub, reader, end, result in zip(subs, readers, ends, results, strict=True):
            assert end is not None and end["op"] == "end"
            assert result.status == "done"
            rows = await client.redis.xrange(settings.keys.events(sub.stream_id))
            assert reader.ids(sub.stream_id) == [eid.decode() for eid, _ in rows]
            await reader.close()
