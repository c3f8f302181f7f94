"""The worker's batched appends on a Redis Cluster: split by slot, one round trip
per node per send, every stream's events in its own slot, wake-ups by SPUBLISH."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

from cli.redis_cluster import RedisCluster
from streamfan import events, scripts
from streamfan.cluster import EventsRedis, connect_events, sharded, slot
from streamfan.events import decode_event
from streamfan.settings import Settings
from streamfan.store import create_meta
from worker.publisher import Publisher


@pytest.fixture
async def acluster(cluster_url: str) -> AsyncIterator[EventsRedis]:
    r = await connect_events(cluster_url)
    try:
        yield r
    finally:
        await r.aclose()


def evalsha_calls(cluster: RedisCluster) -> dict[int, int]:
    out = {}
    for node in cluster.masters():
        with node.client() as r:
            stats = r.info("commandstats").get("cmdstat_evalsha", {"calls": 0})
        out[node.port] = int(stats["calls"])
    return out


async def test_one_send_of_thirty_streams_is_one_pipeline_per_node_one_call_per_slot(
    acluster: EventsRedis, cluster_settings: Settings, redis_cluster: RedisCluster
) -> None:
    trips: list[int] = []
    pub = Publisher(acluster, cluster_settings, on_round_trip=trips.append)
    writers = []
    for i in range(30):
        sid = f"batch-{i}"
        await create_meta(acluster, cluster_settings.keys, sid, model="m", owner=None)
        claim = await pub.begin(sid, "tok", "m")
        writers.append(pub.writer(sid, claim.attempt))
    for w in writers:  # the scripts are loaded on every node before counting
        await w.write([events.delta([{"index": 0, "delta": {"content": "warm"}}])])
    trips.clear()
    before = evalsha_calls(redis_cluster)
    texts = [f"t{i}" for i in range(30)]
    await asyncio.gather(
        *(
            w.write([events.delta([{"index": 0, "delta": {"content": t}}])])
            for w, t in zip(writers, texts, strict=True)
        )
    )
    after = evalsha_calls(redis_cluster)
    slots_by_port: dict[int, set[int]] = {}
    streams_by_port: dict[int, int] = {}
    for w in writers:
        key_slot = slot(cluster_settings.keys.live(w.stream_id))
        port = redis_cluster.owner(key_slot).port
        slots_by_port.setdefault(port, set()).add(key_slot)
        streams_by_port[port] = streams_by_port.get(port, 0) + 1
    # on_round_trip(n): one call per node, with the streams it carried.
    assert sorted(trips) == sorted(streams_by_port.values())
    assert len(trips) == 3, "one round trip to each of the three masters"
    assert {p: after[p] - before[p] for p in after} == {
        p: len(ss) for p, ss in slots_by_port.items()
    }, "one EVALSHA per slot"
    with redis.RedisCluster.from_url(cluster_settings.events_url) as rc:
        for w, t in zip(writers, texts, strict=True):
            rows = rc.xrange(cluster_settings.keys.events(w.stream_id))
            assert decode_event(rows[-1][1][b"e"])["choices"][0]["delta"]["content"] == t
    await pub.aclose()


def test_the_cluster_variant_of_every_publishing_script_wakes_by_spublish() -> None:
    for name in ("CREATE", "CANCEL", "BEGIN", "APPEND", "APPEND_MANY", "RENEW"):
        text = sharded(getattr(scripts, name))
        assert "redis.call('SPUBLISH', chan," in text
        assert "redis.call('PUBLISH', chan," not in text
    with pytest.raises(ValueError):
        sharded(scripts.READ_PAGE)
