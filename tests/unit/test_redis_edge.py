"""One mapping of redis-py's errors to streamfan's, at the I/O edge."""

from __future__ import annotations

import ast
import socket
from pathlib import Path

import pytest
import redis.asyncio
import redis.exceptions

from streamfan.errors import RedisRefused, RedisUnavailable
from streamfan.redis_edge import FAILURES, redis_errors, translate

ROOT = Path(__file__).resolve().parents[2]
EDGE = ROOT / "streamfan" / "redis_edge.py"


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.ConnectionError("down"),
        redis.exceptions.TimeoutError("slow"),
        redis.exceptions.BusyLoadingError("loading"),
        redis.exceptions.AuthenticationError("no"),
        redis.exceptions.InvalidResponse("garbage"),
        ConnectionResetError("reset"),
        TimeoutError(),
    ],
)
def test_a_failure_on_the_way_to_redis_is_unavailable(exc: Exception) -> None:
    mapped = translate(exc)
    assert type(mapped) is RedisUnavailable


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.ResponseError("WRONGTYPE"),
        redis.exceptions.ReadOnlyError("READONLY"),
        redis.exceptions.NoScriptError("NOSCRIPT"),
    ],
)
def test_an_error_answer_is_refused(exc: Exception) -> None:
    mapped = translate(exc)
    assert isinstance(mapped, RedisRefused) and isinstance(mapped, RedisUnavailable)
    assert str(exc) in str(mapped)


@pytest.mark.parametrize(
    "exc",
    [
        redis.exceptions.DataError("bad argument"),
        RedisUnavailable("already ours"),
        ValueError("not redis"),
    ],
)
def test_bugs_ours_and_others_pass_through(exc: Exception) -> None:
    assert translate(exc) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_closed_port_raises_unavailable_from_the_original() -> None:
    r = redis.asyncio.Redis(port=_free_port(), socket_connect_timeout=2)
    try:
        with pytest.raises(RedisUnavailable) as info:
            async with redis_errors():
                await r.ping()
    finally:
        await r.aclose()
    assert not isinstance(info.value, RedisRefused)
    assert isinstance(info.value.__cause__, FAILURES)


async def test_a_command_redis_refuses_raises_refused(aredis: redis.asyncio.Redis) -> None:
    await aredis.set("edge:string", "x")
    with pytest.raises(RedisRefused, match="WRONGTYPE"):
        async with redis_errors():
            await aredis.hset("edge:string", "f", "v")  # type: ignore[misc]


def _handlers_naming_redis_exceptions(path: Path) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.ExceptHandler)
        and node.type is not None
        and ("redis.exceptions" in (caught := ast.unparse(node.type)) or "RedisError" in caught)
    ]


def test_only_the_edge_catches_redis_py_exceptions() -> None:
    found = {
        str(path.relative_to(ROOT)): lines
        for package in ("streamfan", "worker", "gateway", "cli")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != EDGE and (lines := _handlers_naming_redis_exceptions(path))
    }
    assert found == {}, "use streamfan.redis_edge (redis_errors or FAILURES)"
