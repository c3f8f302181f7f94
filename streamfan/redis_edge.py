"""The I/O edge to Redis: the one mapping of redis-py's errors to streamfan's.

Every module that talks to Redis wraps its calls in :func:`redis_errors` (or,
where a failure is expected and handled on the spot — a reconnect loop, a
health check — catches :data:`FAILURES`), so callers see only
:class:`~streamfan.errors.RedisUnavailable` and its subclass
:class:`~streamfan.errors.RedisRefused`, never ``redis.exceptions.*``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import redis.exceptions

from streamfan.errors import RedisRefused, RedisUnavailable, StreamfanError

#: What a call raises when Redis, or the way to it, failed. ``OSError`` covers
#: sockets redis-py did not wrap, and ``TimeoutError`` (``asyncio.timeout``).
#: ``RedisClusterException`` (not a ``RedisError``): the cluster client found no
#: node for a slot, or no node of the cluster answered.
FAILURES: Final[tuple[type[Exception], ...]] = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    OSError,
)


def translate(exc: BaseException) -> RedisUnavailable | None:
    """Our exception for a redis-py one, or None if ``exc`` is not a Redis failure."""
    if isinstance(exc, StreamfanError) or not isinstance(exc, FAILURES):
        return None  # ours already (RedisUnavailable is an OSError too), or not Redis's
    if isinstance(exc, redis.exceptions.DataError):
        return None  # bad arguments built by the caller: a bug to see, not Redis's state
    if isinstance(exc, redis.exceptions.ResponseError):
        # READONLY after a failover, OOM, BUSY, a script's error, on a cluster
        # CLUSTERDOWN or TRYAGAIN mid-failover or mid-migration: Redis answered.
        return RedisRefused(f"Redis refused the command: {exc}")
    return RedisUnavailable(f"Redis unavailable: {exc}")


@asynccontextmanager
async def redis_errors() -> AsyncIterator[None]:
    """Raise what the block raised from Redis again as :func:`translate` maps it."""
    try:
        yield
    except Exception as exc:
        mapped = translate(exc)
        if mapped is None:
            raise
        raise mapped from exc
