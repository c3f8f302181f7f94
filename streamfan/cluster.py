"""Event keys on one Redis or on a Redis Cluster: the client, and the scripts it runs.

``STREAMFAN_EVENTS_REDIS_URL`` may point at any node of a Redis Cluster; cluster
mode is detected (``INFO cluster``), no other setting. The client library is
redis-py in both cases, chosen by measurement (docs/cluster.md): its asyncio
``RedisCluster`` routes each command and script call by the slot of its keys
and follows ``MOVED`` and ``ASK``; it has no sharded pub/sub, which the gateway
reads on raw connections of its own (``gateway/cluster_live.py``). So every
caller sees the same redis-py exceptions, mapped to
:class:`~streamfan.errors.RedisUnavailable` at the edge as before.

On a cluster the wake-up goes out on sharded pub/sub (``SPUBLISH``), which stays
within the shard that owns the stream's slot, instead of ``PUBLISH``, which every
node forwards to every other. The scripts are otherwise the same text as
:mod:`streamfan.scripts` (one place for the state machine): only the publish
command of the shared ``xadd_publish`` helper changes.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import key_slot

from streamfan.errors import RedisUnavailable
from streamfan.redis_edge import redis_errors

#: What holds the event keys: one Redis, or a cluster of them.
EventsRedis: TypeAlias = aioredis.Redis | RedisCluster

_PUBLISH: Final = "redis.call('PUBLISH', chan,"
_SPUBLISH: Final = "redis.call('SPUBLISH', chan,"


def sharded(script: str) -> str:
    """``script`` with its wake-up sent by ``SPUBLISH`` (the same keys and arguments)."""
    if script.count(_PUBLISH) != 1:
        raise ValueError("expected the one wake-up PUBLISH of xadd_publish in the script")
    return script.replace(_PUBLISH, _SPUBLISH)


def is_cluster(r: EventsRedis) -> bool:
    return isinstance(r, RedisCluster)


def register(r: EventsRedis, script: str) -> AsyncScript:
    """``r.register_script``, with the cluster's sharded wake-up when ``r`` is one.

    Scripts that publish nothing (``READ_PAGE``) are registered as they are.
    """
    if is_cluster(r) and _PUBLISH in script:
        script = sharded(script)
    # What r.register_script does, for either client (redis-py types that method
    # for Redis alone): the script calls evalsha on r, which RedisCluster routes.
    return AsyncScript(r, script)  # type: ignore[arg-type]


def slot(key: str | bytes) -> int:
    """The cluster hash slot of a key (its ``{ID}`` tag decides)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


async def detect_cluster(url: str, **kwargs: Any) -> bool:
    """Whether the server at ``url`` is a node of a Redis Cluster."""
    probe = aioredis.Redis.from_url(url, **kwargs)
    try:
        async with redis_errors():
            info: dict[str, Any] = await probe.info("cluster")
    finally:
        await probe.aclose()
    return bool(int(info.get("cluster_enabled", 0)))


async def connect_events(url: str, **kwargs: Any) -> EventsRedis:
    """A client for the event keys at ``url``: a ``RedisCluster`` if it is a
    cluster node, else a plain ``Redis``. ``kwargs`` go to either (connection
    options); ``max_connections`` is per node on a cluster.

    Raises :class:`~streamfan.errors.RedisUnavailable` if ``url`` does not answer
    (:mod:`streamfan.redis_edge`).
    """
    probe_kwargs = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    if not await detect_cluster(url, **probe_kwargs):
        single: aioredis.Redis = aioredis.Redis.from_url(url, **kwargs)
        return single
    # The database number means nothing on a cluster (it has only db 0).
    base = url.split("?", 1)[0]
    if base.count("/") > 2:
        base = base.rsplit("/", 1)[0]
    cluster: RedisCluster = RedisCluster.from_url(base, **kwargs)
    try:
        async with redis_errors():
            await cluster.initialize()
    except RedisUnavailable:
        await cluster.aclose()
        raise
    return cluster
