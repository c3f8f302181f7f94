"""The pipeline with its event keys on a 3-master Redis Cluster, the arq queue on
its own Redis: submit, the real worker, many streams at once, reads and resume
through the client API."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from streamfan.client import Client
from streamfan.cluster import is_cluster
from streamfan.mock.server import MockUpstream
from streamfan.settings import Settings

from .conftest import RunningWorker, expected_message


def chat(prompt: str = "hello", **mock: Any) -> dict[str, Any]:
    return {"model": "mock-gpt", "messages": [{"role": "user", "content": prompt}], "mock": mock}


@pytest.fixture
def on_cluster(cluster_settings: Settings, mock_upstream: MockUpstream) -> Settings:
    return cluster_settings.replace(
        upstream_base_url=mock_upstream.base_url,
        upstream_read_timeout_s=1.0,
        upstream_idle_timeout_s=1.5,
        max_attempts=3,
    )


async def test_many_streams_at_once_each_assemble_exactly_and_live_on_the_cluster(
    on_cluster: Settings, redis_url: str
) -> None:
    bodies = [chat(f"prompt {i}", reply_tokens=150 + i, tokens_per_s=2000) for i in range(30)]
    async with Client(on_cluster) as client, RunningWorker(on_cluster) as worker:
        assert is_cluster(client.redis) and is_cluster(worker.state.events_redis)
        subs = [await client.submit(b) for b in bodies]
        results = await asyncio.gather(*(client.result(s.stream_id) for s in subs))
    for body, result in zip(bodies, results, strict=True):
        assert result.status == "done"
        assert result.chat_completion["choices"][0]["message"] == expected_message(body)
    keys = on_cluster.keys
    with redis.RedisCluster.from_url(on_cluster.events_url) as rc:
        nodes = {rc.get_node_from_key(keys.events(s.stream_id)).name for s in subs}
        assert all(rc.exists(keys.events(s.stream_id)) for s in subs)
    assert len(nodes) == 3, "30 streams spread over the three masters"
    with redis.Redis.from_url(redis_url) as single:
        assert not single.exists(keys.events(subs[0].stream_id)), "events stay off the queue"


async def test_events_resume_from_any_id_and_status_and_cancel_work_on_the_cluster(
    on_cluster: Settings,
) -> None:
    async with Client(on_cluster) as client, RunningWorker(on_cluster):
        sub = await client.submit(chat(reply_tokens=80, tokens_per_s=2000))
        every = [(i, e) async for i, e in client.events(sub.stream_id)]
        middle = every[len(every) // 2][0]
        rest = [(i, e) async for i, e in client.events(sub.stream_id, from_=middle)]
        assert rest == every[len(every) // 2 + 1 :]
        assert (await client.status(sub.stream_id)).status == "done"
        slow = await client.submit(chat(reply_tokens=10_000, tokens_per_s=50))
        async for _i, event in client.events(slow.stream_id):
            if event["type"] == "delta":
                break
        assert await client.cancel(slow.stream_id) in ("cancelling", "cancelled")
        result = await client.result(slow.stream_id)
    assert result.status == "cancelled"
