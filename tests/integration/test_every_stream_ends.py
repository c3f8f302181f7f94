"""Every stream ends, even when its job cannot run or was lost.

A job arq cannot decode or call ends its stream with ``error`` ``invalid_job``
within seconds; a stream whose job vanished from the queue while no worker held
it is found by the orphan sweep and ends with ``error`` ``orphaned``. The real arq
worker runs in the test's loop against a real Valkey.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from arq.constants import job_key_prefix

from streamfan import events
from streamfan.client import Client
from streamfan.codes import INVALID_JOB, ORPHANED
from streamfan.keys import Meta
from streamfan.mock.server import MockUpstream
from streamfan.settings import Settings
from streamfan.store import create_meta

from .conftest import RunningWorker, expected_message

#: "within seconds": an undecodable job ends its stream this fast.
INVALID_JOB_LIMIT_S = 5.0
SWEEP_S = 0.3


def chat(prompt: str = "hi", **mock: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "mock-gpt", "messages": [{"role": "user", "content": prompt}]}
    if mock:
        body["mock"] = mock
    return body


def _now_ms() -> int:
    return int(time.time() * 1000)


def _json_job(**fields: Any) -> bytes:
    job = {"f": "chat_stream", "a": [chat()], "k": {}, "t": 1, "et": _now_ms()}
    job.update(fields)
    return orjson.dumps(job)


INVALID_JOBS: dict[str, bytes] = {
    # What arq's default serializer writes: never unpickled by a streamfan worker.
    "pickled": pickle.dumps({"f": "chat_stream", "a": [chat()], "k": {}, "t": 1, "et": _now_ms()}),
    "broken JSON": b'{"f": "chat_stream", "a": [{"model": ',
    "a JSON list": b"[1, 2, 3]",
    "an unknown keyword": _json_job(a=[], k={"body": chat(), "sekrit_option": "hunter2"}),
    "two positional arguments": _json_job(a=[chat(), chat()]),
    "no arguments": _json_job(a=[]),
    "another function": _json_job(f="os.system"),
    "no enqueue time": orjson.dumps({"f": "chat_stream", "a": [chat()], "k": {}}),
}


async def enqueue_raw(r: aioredis.Redis, settings: Settings, stream_id: str, job: bytes) -> None:
    """What a foreign (or hostile) producer writes: meta, job key, queue entry."""
    await create_meta(r, settings.keys, stream_id, model="mock-gpt", owner=None)
    await r.set(job_key_prefix + stream_id, job, px=86_400_000)
    await r.zadd(settings.queue_name, {stream_id: _now_ms()})


@pytest.mark.parametrize("kind", sorted(INVALID_JOBS))
async def test_a_job_arq_cannot_decode_or_call_ends_its_stream_with_invalid_job_within_seconds(
    kind: str,
    pipeline_settings: Settings,
    client: Client,
    aredis: aioredis.Redis,
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    sid = "bad-job-" + kind.replace(" ", "-")
    await enqueue_raw(aredis, pipeline_settings, sid, INVALID_JOBS[kind])
    async with start_worker(pipeline_settings):
        result = await asyncio.wait_for(client.result(sid), INVALID_JOB_LIMIT_S)
    assert result.status == "error"
    assert result.error is not None
    assert result.error["code"] == INVALID_JOB.code
    assert result.error["retryable"] is False
    assert "hunter2" not in result.error["message"]  # names, never values
    kinds = [e["type"] async for _i, e in client.events(sid)]
    assert kinds == ["error"]
    assert not await aredis.exists(job_key_prefix + sid)  # and arq dropped the job


async def test_a_valid_job_written_by_hand_still_runs(
    pipeline_settings: Settings,
    client: Client,
    aredis: aioredis.Redis,
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    await enqueue_raw(aredis, pipeline_settings, "by-hand", _json_job(a=[], k={"body": chat()}))
    async with start_worker(pipeline_settings):
        result = await asyncio.wait_for(client.result("by-hand"), 10)
    assert (result.status, result.message) == ("done", expected_message(chat()))


async def wait_for_status(client: Client, sid: str, status: str, within_s: float) -> None:
    async with asyncio.timeout(within_s):
        async for _i, event in client.events(sid):
            if event["type"] in ("done", "error", "cancelled"):
                break
    assert (await client.status(sid)).status == status


@pytest.mark.parametrize("loss", ["the queue was flushed", "the job key was deleted"])
async def test_a_queued_stream_whose_job_was_lost_is_found_and_ended_orphaned(
    loss: str,
    pipeline_settings: Settings,
    client: Client,
    aredis: aioredis.Redis,
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    s = pipeline_settings.replace(orphan_sweep_s=SWEEP_S)
    sub = await client.submit(chat())
    if loss == "the queue was flushed":
        await aredis.delete(s.queue_name)
    else:
        await aredis.delete(job_key_prefix + sub.stream_id)
    async with start_worker(s):
        result = await asyncio.wait_for(client.result(sub.stream_id), 10)
        # Ended, so out of the index (the same sweep step removes it, just after).
        async with asyncio.timeout(10):
            while await aredis.zscore(s.keys.open_streams, sub.stream_id) is not None:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # waits-on-time-ok: the step's ZREM
    assert result.status == "error"
    assert result.error is not None
    assert (result.error["code"], result.error["retryable"]) == (ORPHANED.code, True)


async def test_a_running_stream_whose_job_left_the_queue_is_not_orphaned_while_its_lease_is_held(
    pipeline_settings: Settings,
    client: Client,
    aredis: aioredis.Redis,
    mock_upstream: MockUpstream,
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    s = pipeline_settings.replace(orphan_sweep_s=SWEEP_S)
    body = chat(reply_tokens=60, tokens_per_s=40)  # ~1.5 s: several sweeps
    async with start_worker(s):
        sub = await client.submit(body)
        await asyncio.wait_for(mock_upstream.wait_chunks(0, 3), 10)
        await aredis.zrem(s.queue_name, sub.stream_id)
        result = await asyncio.wait_for(client.result(sub.stream_id), 20)
    assert (result.status, result.message) == ("done", expected_message(body))


async def test_a_stream_enqueued_without_the_client_is_indexed_when_it_starts(
    pipeline_settings: Settings,
    client: Client,
    aredis: aioredis.Redis,
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    await enqueue_raw(aredis, pipeline_settings, "foreign", _json_job())
    async with start_worker(pipeline_settings):
        await asyncio.wait_for(client.result("foreign"), 10)
    assert await aredis.zscore(pipeline_settings.keys.open_streams, "foreign") is not None


async def test_a_lost_job_whose_durable_end_was_decided_ends_with_that_end_not_orphaned(
    pipeline_settings: Settings,
    client: Client,
    aredis: aioredis.Redis,
    start_worker: Callable[[Settings], RunningWorker],
) -> None:
    # STREAMFAN_DURABLE_FINISH wrote the end into meta and onto disk; a crash then
    # took back the terminal entry and the job (docs/operations.md, "Durable finish").
    s = pipeline_settings.replace(orphan_sweep_s=SWEEP_S)
    sub = await client.submit(chat())
    end = events.done("stop", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
    await aredis.hset(s.keys.meta(sub.stream_id), mapping={
        Meta.STATUS: events.STATUS_RUNNING,
        Meta.FINISHING: events.encode_event(end),
        Meta.FINISHING_STATUS: events.STATUS_DONE,
    })  # fmt: skip
    await aredis.delete(s.queue_name)
    async with start_worker(s):
        result = await asyncio.wait_for(client.result(sub.stream_id), 10)
        seen = [event async for _i, event in client.events(sub.stream_id)]
    assert result.status == events.STATUS_DONE and result.error is None
    assert seen == [end]
