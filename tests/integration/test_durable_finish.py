"""STREAMFAN_DURABLE_FINISH: no reader is told a stream ended with a reply that a crash takes back.

An OS crash under ``appendfsync everysec`` loses the AOF's tail. The test makes
one as Redis sees it: a stream runs to ``end`` with a reader on it, Redis is
SIGKILLed, its AOF is cut at a command boundary after the point that mattered,
and Redis starts again on what is left, with a worker. With the setting, at every
cut after the durable-end marker the stream ends exactly as the reader was told —
same events, no ``reset``, no second generation. Without it, the cut just before
the terminal entry makes the stream generate again after its reader got ``end``:
the failure the setting exists for, shown so the test is known to see it.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.redis_server import RedisServer
from streamfan import Client, Settings, events
from streamfan.assembler import Assembler
from streamfan.keys import Meta
from streamfan.mock.server import MockUpstream
from streamfan.settings import DURABLE_LOCAL, DURABLE_OFF
from tests.integration.conftest import RunningWorker

WAIT_S = 30.0


def resp_commands(data: bytes) -> Iterator[tuple[int, int, list[bytes]]]:
    """(start, end, args) of each RESP command in an AOF file."""
    pos = 0
    while pos < len(data):
        start = pos
        assert data[pos : pos + 1] == b"*", data[pos : pos + 40]
        eol = data.index(b"\r\n", pos)
        n = int(data[pos + 1 : eol])
        pos = eol + 2
        args = []
        for _ in range(n):
            eol = data.index(b"\r\n", pos)
            size = int(data[pos + 1 : eol])
            args.append(data[eol + 2 : eol + 2 + size])
            pos = eol + 2 + size + 2
        yield start, pos, args


def cut_points(data: bytes) -> list[tuple[int, str]]:
    """Offsets where a crash could have cut the file (not inside MULTI/EXEC), with a label."""
    points = []
    in_multi = False
    for _start, end, args in resp_commands(data):
        name = args[0].upper()
        if name == b"MULTI":
            in_multi = True
        elif name == b"EXEC":
            in_multi = False
        if not in_multi:
            points.append((end, b" ".join(a[:40] for a in args[:4]).decode(errors="replace")))
    return points


def incr_aof(data_dir: Path) -> Path:
    (found,) = (data_dir / "appendonlydir").glob("*.incr.aof")
    return found


def offset_after(data: bytes, needle: bytes) -> int:
    """End of the first top-level command (or MULTI/EXEC block) whose args hold ``needle``."""
    for end, _label in cut_points(data):
        if needle in data[:end]:
            return end
    raise AssertionError(f"{needle!r} not in the AOF")


def offset_before(data: bytes, needle: bytes) -> int:
    """Start of the top-level command or MULTI/EXEC block whose args hold ``needle``."""
    prev = 0
    for end, _label in cut_points(data):
        if needle in data[prev:end]:
            return prev
        prev = end
    raise AssertionError(f"{needle!r} not in the AOF")


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[Callable[[Path], RedisServer]]:
    started: list[RedisServer] = []

    def start(data_dir: Path, port: int = 0) -> RedisServer:
        server = RedisServer(data_dir=data_dir, port=port).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


async def run_to_end(settings: Settings, body: dict[str, Any]) -> tuple[str, list[tuple[str, Any]]]:
    """Submit and read the stream to its end, as a reader would; the worker runs meanwhile."""
    async with RunningWorker(settings), Client(settings) as sf:
        sub = await sf.submit(body)
        seen = []
        async with asyncio.timeout(WAIT_S):
            async for entry_id, event in sf.events(sub.stream_id):
                seen.append((entry_id, event))
        return sub.stream_id, seen


async def recovered(settings: Settings, stream_id: str) -> tuple[str, list[tuple[str, Any]]]:
    """After a restart on the cut AOF: let a worker finish the stream; its status and events."""
    async with RunningWorker(settings), Client(settings) as sf:
        async with asyncio.timeout(WAIT_S):
            seen = [(i, e) async for i, e in sf.events(stream_id)]
        meta = await sf.status(stream_id)
        return meta.status, seen


def text(seen: list[tuple[str, Any]]) -> dict[str, Any]:
    assembler = Assembler()
    for _, event in seen:
        assembler.feed(event)
    return assembler.message()


def body(key: str) -> dict[str, Any]:
    mock = {"reply_tokens": 12, "seed": 3, "fault_key": key}
    return {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "mock": mock}


async def test_with_durable_finish_every_cut_after_the_marker_ends_as_the_reader_was_told(
    tmp_path: Path,
    aof_redis: Callable[..., RedisServer],
    pipeline_settings: Settings,
    mock_upstream: MockUpstream,
) -> None:
    server = aof_redis(tmp_path / "redis")
    settings = pipeline_settings.replace(
        redis_url=server.url, durable_finish=DURABLE_LOCAL, lease_s=1.0
    )
    stream_id, told = await run_to_end(settings, body("durable"))
    assert told[-1][1]["type"] == events.DONE
    server.kill()
    data = incr_aof(server.data_dir).read_bytes()
    marker = offset_after(data, Meta.FINISHING_STATUS.encode())
    cuts = [end for end, _ in cut_points(data) if end >= marker]
    assert len(cuts) >= 2, "the AOF should hold the marker, then the terminal entry and more"
    for n, cut in enumerate(cuts):
        copy = tmp_path / f"cut-{n}"
        shutil.copytree(server.data_dir, copy)
        aof = incr_aof(copy)
        aof.write_bytes(data[:cut])
        restarted = aof_redis(copy)
        status, after = await recovered(settings.replace(redis_url=restarted.url), stream_id)
        restarted.kill()
        assert status == events.STATUS_DONE, f"cut {n} at byte {cut}"
        assert [e for _, e in after] == [e for _, e in told], f"cut {n} at byte {cut}"
        assert not any(e["type"] == events.RESET for _, e in after)
    # Generated once: no cut made the worker ask the upstream again.
    assert len(mock_upstream.requests_for("durable")) == 1


async def test_without_it_a_cut_tail_regenerates_a_stream_whose_reader_was_told_end(
    tmp_path: Path,
    aof_redis: Callable[..., RedisServer],
    pipeline_settings: Settings,
    mock_upstream: MockUpstream,
) -> None:
    server = aof_redis(tmp_path / "redis")
    settings = pipeline_settings.replace(redis_url=server.url, durable_finish=DURABLE_OFF,
                                         lease_s=1.0)  # fmt: skip
    stream_id, told = await run_to_end(settings, body("not-durable"))
    server.kill()
    data = incr_aof(server.data_dir).read_bytes()
    # What an OS crash a moment after the end was sent could leave: all but the terminal.
    cut = offset_before(data, b'"type":"done"')
    copy = tmp_path / "cut"
    shutil.copytree(server.data_dir, copy)
    incr_aof(copy).write_bytes(data[:cut])
    restarted = aof_redis(copy)
    status, after = await recovered(settings.replace(redis_url=restarted.url), stream_id)
    assert status == events.STATUS_DONE
    # The reader was told `end` after `told`; the stream then changed under it.
    assert [e for _, e in after] != [e for _, e in told]
    assert any(e["type"] == events.RESET for _, e in after)
    assert len(mock_upstream.requests_for("not-durable")) == 2
    assert text(after) == text(told)  # only because the mock repeats itself; a model would not


async def test_on_a_redis_without_an_aof_streams_still_end_and_it_is_said_once(
    pipeline_settings: Settings, mock_upstream: MockUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    settings = pipeline_settings.replace(durable_finish=DURABLE_LOCAL)
    async with RunningWorker(settings), Client(settings) as sf:
        for key in ("no-aof-1", "no-aof-2"):
            sub = await sf.submit(body(key))
            async with asyncio.timeout(WAIT_S):
                result = await sf.result(sub.stream_id)
            assert result.status == events.STATUS_DONE
    said = [r for r in caplog.records if "cannot WAITAOF" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "ERROR"
