"""The pipeline end to end: Client.submit → real arq worker → mock upstream → Redis.

Each test runs the real arq worker in-process against the mock upstream on port 0
and a real Valkey, then reads the stream back through the client API.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest

from streamfan.client import Client, Result
from streamfan.errors import HistoryGone, InvalidRequest, InvalidStreamId, StreamNotFound
from streamfan.events import Event
from streamfan.mock.server import MockUpstream
from streamfan.serialization import job_serializer
from streamfan.settings import Settings

from .conftest import RunningWorker, expected_message


def chat(prompt: str = "hello", **mock: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "mock-gpt", "messages": [{"role": "user", "content": prompt}]}
    if mock:
        body["mock"] = mock
    return body


async def all_events(client: Client, stream_id: str) -> list[Event]:
    return [event async for _id, event in client.events(stream_id)]


async def result_when_written(client: Client, settings: Settings, stream_id: str) -> Result:
    """The result of a stream that has no meta yet: wait for the worker's first write."""
    pubsub = client.redis.pubsub()
    await pubsub.subscribe(settings.keys.live(stream_id))
    try:
        while not await client.redis.exists(settings.keys.meta(stream_id)):
            await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
    finally:
        await pubsub.aclose()
    return await client.result(stream_id)


def types(events: list[Event]) -> list[str]:
    return [e["type"] for e in events]


async def test_a_long_reply_with_tool_calls_and_two_choices_is_assembled_exactly(
    pipeline_settings: Settings, client: Client
) -> None:
    body = chat(
        reply_tokens=2000,
        reasoning="Let me think… 考えます.",
        tool_calls=[{"name": "lookup", "arguments": '{"q": "crème brûlée", "n": 2}'}],
    )
    body["n"] = 2
    async with RunningWorker(pipeline_settings):
        sub = await client.submit(body)
        result = await client.result(sub.stream_id)
    assert result.status == "done"
    choices = result.chat_completion["choices"]
    for index in (0, 1):
        assert choices[index]["message"] == expected_message(body, index)
    assert any(ord(ch) > 0xFFFF for ch in result.text), "the reply has 4-byte characters"
    assert result.usage is not None and result.usage["completion_tokens"] >= 4000
    assert result.finish_reason == "tool_calls"


async def test_the_worker_asks_for_a_stream_with_usage_and_sends_the_key(
    pipeline_settings: Settings, client: Client, mock_upstream: MockUpstream
) -> None:
    async with RunningWorker(pipeline_settings):
        sub = await client.submit(chat())
        await client.result(sub.stream_id)
    (record,) = mock_upstream.requests
    assert record.body["stream"] is True
    assert record.body["stream_options"] == {"include_usage": True}
    assert record.authorization == f"Bearer {pipeline_settings.upstream_api_key}"


async def test_submitting_the_same_id_twice_runs_one_job(
    pipeline_settings: Settings, client: Client, mock_upstream: MockUpstream
) -> None:
    first = await client.submit(chat(), stream_id="same-id")
    second = await client.submit(chat(), stream_id="same-id")
    assert (first.created, second.created) == (True, False)
    async with RunningWorker(pipeline_settings):
        result = await client.result("same-id")
        third = await client.submit(chat(), stream_id="same-id")
    assert result.status == "done"
    assert third.created is False
    assert types(await all_events(client, "same-id")).count("start") == 1
    assert len(mock_upstream.requests) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m"}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": object()}]}, "JSON"),
        ({"model": "m", "messages": "hello"}, "messages"),
        ({"model": "m", "messages": [{"content": "no role"}]}, "role"),
    ],
)
async def test_a_bad_request_raises_before_anything_is_written(
    client: Client, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        await client.submit(body)
    assert await client.redis.dbsize() == 0


async def test_an_invalid_stream_id_is_refused_before_redis(client: Client) -> None:
    for bad in ("has space", "", "x" * 129, "a/b", "ü"):
        with pytest.raises(InvalidStreamId):
            await client.submit(chat(), stream_id=bad)
    assert await client.redis.dbsize() == 0


async def test_an_unknown_stream_is_not_found(client: Client) -> None:
    with pytest.raises(StreamNotFound):
        await client.status("never-submitted")
    with pytest.raises(StreamNotFound):
        await client.cancel("never-submitted")


# --- faults -------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["http_500", "http_503", "drop", "malformed", "truncate"])
async def test_a_transient_fault_is_retried_and_the_reply_still_assembles_exactly(
    pipeline_settings: Settings, client: Client, fault: str
) -> None:
    body = chat(reply_tokens=40, fault=fault, fault_times=1, fault_key=f"k-{fault}", after=5)
    async with RunningWorker(pipeline_settings):
        sub = await client.submit(body)
        result = await client.result(sub.stream_id)
    events = await all_events(client, sub.stream_id)
    assert result.status == "done"
    assert result.message == expected_message(body)
    assert types(events).count("start") == 2
    assert types(events).count("reset") == 1
    assert events[types(events).index("reset") + 1]["type"] == "start"


async def test_a_429_is_retried_no_sooner_than_its_retry_after(
    pipeline_settings: Settings, client: Client, mock_upstream: MockUpstream
) -> None:
    body = chat(fault="http_429", retry_after="1", fault_times=1, fault_key="rl")
    async with RunningWorker(pipeline_settings):
        sub = await client.submit(body)
        result = await client.result(sub.stream_id)
    assert result.status == "done"
    first, second = mock_upstream.requests_for("rl")
    assert second.started_at - first.started_at >= 1.0


async def test_a_401_ends_the_stream_with_an_error_that_carries_no_secret(
    pipeline_settings: Settings, client: Client, mock_upstream: MockUpstream
) -> None:
    async with RunningWorker(pipeline_settings):
        sub = await client.submit(chat(fault="http_401"))
        result = await client.result(sub.stream_id)
    assert result.status == "error"
    assert result.error is not None
    assert result.error["code"] == "upstream_http_error"
    assert result.error["upstream_status"] == 401
    assert result.error["retryable"] is False
    assert len(mock_upstream.requests) == 1
    raw = await client.redis.xrange(pipeline_settings.keys.events(sub.stream_id))
    meta = await client.redis.hgetall(pipeline_settings.keys.meta(sub.stream_id))
    everything = b"".join(f[b"e"] for _i, f in raw) + b"".join(meta.values())
    assert pipeline_settings.upstream_api_key is not None
    assert pipeline_settings.upstream_api_key.encode() not in everything
    assert b"Authorization" not in everything and b"Bearer" not in everything


async def test_an_error_chunk_after_some_deltas_keeps_them_and_ends_with_an_error(
    pipeline_settings: Settings, client: Client
) -> None:
    async with RunningWorker(pipeline_settings):
        sub = await client.submit(chat(reply_tokens=30, fault="error_chunk", after=6))
        result = await client.result(sub.stream_id)
    events = await all_events(client, sub.stream_id)
    assert result.status == "error"
    assert result.error is not None and result.error["code"] == "upstream_stream_error"
    assert "server had an error" in result.error["message"]
    assert types(events).count("delta") == 6
    assert result.text  # the deltas before the error are still there to read


async def test_a_fault_that_persists_ends_with_an_error_after_the_last_attempt(
    pipeline_settings: Settings, client: Client, mock_upstream: MockUpstream
) -> None:
    async with RunningWorker(pipeline_settings):
        sub = await client.submit(chat(fault="truncate", after=3, fault_key="always"))
        result = await client.result(sub.stream_id)
    assert result.status == "error"
    assert result.error is not None
    assert (result.error["code"], result.error["retryable"]) == ("upstream_truncated", True)
    assert len(mock_upstream.requests_for("always")) == pipeline_settings.max_attempts
    assert result.finish_reason is None  # a truncated reply is never "done"


async def test_a_stalled_upstream_is_an_error_not_a_hang(
    pipeline_settings: Settings, client: Client, mock_upstream: MockUpstream
) -> None:
    s = pipeline_settings.replace(max_attempts=1)
    async with RunningWorker(s):
        sub = await client.submit(chat(fault="stall", after=3))
        result = await client.result(sub.stream_id)
    assert result.status == "error"
    assert result.error is not None and result.error["code"] == "upstream_stalled"
    await mock_upstream.wait_disconnect(0)


async def test_keepalives_without_content_are_a_stall_too(
    pipeline_settings: Settings, client: Client, mock_upstream: MockUpstream
) -> None:
    s = pipeline_settings.replace(max_attempts=1)
    async with RunningWorker(s):
        sub = await client.submit(chat(fault="stall", after=3, keepalive_ms=100))
        result = await client.result(sub.stream_id)
    assert result.error is not None and result.error["code"] == "upstream_stalled"
    record = await mock_upstream.wait_disconnect(0)
    assert record.keepalives_sent >= 5  # httpx's read timeout alone would not have fired


async def test_an_unreachable_upstream_is_retried_then_reported(
    pipeline_settings: Settings, client: Client
) -> None:
    s = pipeline_settings.replace(upstream_base_url="http://127.0.0.1:9/v1")
    async with RunningWorker(s):
        sub = await client.submit(chat())
        result = await client.result(sub.stream_id)
    assert result.error is not None
    assert (result.error["code"], result.error["retryable"]) == ("upstream_unreachable", True)
    assert types(await all_events(client, sub.stream_id)).count("start") == s.max_attempts


# --- quirks seen in the wild ----------------------------------------------------------


@pytest.mark.parametrize(
    "quirk",
    [
        {
            "omit_tool_call_index": True,
            "tool_calls": [
                {"name": "a", "arguments": '{"x": 1}'},
                {"name": "b", "arguments": "[]"},
            ],
        },
        {"usage_in_last_choice_chunk": True},
        {"reasoning": "Thinking about 🙂 first."},
        {"prompt_filter_chunk": True},
        {"omit_done": True},
        {"bom": True, "crlf": True, "split_bytes": 7},
    ],
    ids=[
        "tool-calls-without-index",
        "usage-in-choice-chunk",
        "reasoning-content",
        "prompt-filter-chunk",
        "no-done-after-finish-reason",
        "bom-crlf-7-byte-reads",
    ],
)
async def test_upstream_quirks_are_handled(
    pipeline_settings: Settings, client: Client, quirk: dict[str, Any]
) -> None:
    body = chat(reply_tokens=25, **quirk)
    async with RunningWorker(pipeline_settings):
        sub = await client.submit(body)
        result = await client.result(sub.stream_id)
    assert result.status == "done"
    assert result.message == expected_message(body)
    assert result.usage is not None


# --- cancel -----------------------------------------------------------------------------


async def test_cancel_reaches_the_upstream_within_a_second_and_ends_the_stream(
    pipeline_settings: Settings, client: Client, mock_upstream: MockUpstream
) -> None:
    body = chat(reply_tokens=1000, tokens_per_s=50)
    async with RunningWorker(pipeline_settings):
        sub = await client.submit(body)
        await mock_upstream.wait_chunks(0, 3)
        asked = time.monotonic()
        status = await client.cancel(sub.stream_id, reason="user pressed stop")
        record = await asyncio.wait_for(mock_upstream.wait_disconnect(0), 5)
        gone = time.monotonic()
        result = await client.result(sub.stream_id)
    assert status == "cancelling"
    assert record.disconnected
    assert gone - asked < 1.0
    assert result.status == "cancelled"
    events = await all_events(client, sub.stream_id)
    assert events[-1] == {"type": "cancelled", "reason": "user pressed stop"}


async def test_a_cancelled_queued_job_ends_at_once_and_never_calls_the_upstream(
    pipeline_settings: Settings, client: Client, mock_upstream: MockUpstream
) -> None:
    sub = await client.submit(chat())
    assert await client.cancel(sub.stream_id) == "cancelled"
    async with RunningWorker(pipeline_settings):
        result = await client.result(sub.stream_id)
        other = await client.submit(chat())
        await client.result(other.stream_id)  # the worker has drained the queue
    assert result.status == "cancelled"
    assert len(mock_upstream.requests) == 1  # only `other` reached the upstream


# --- jobs written by other languages -------------------------------------------------


async def test_a_job_enqueued_as_plain_json_without_meta_is_run(
    pipeline_settings: Settings, client: Client
) -> None:
    job = {
        "t": 1,
        "f": "chat_stream",
        "a": [chat("from go")],
        "k": {},
        "et": int(time.time() * 1000),
    }
    await client.redis.set("arq:job:from-go", job_serializer(job))
    await client.redis.zadd("arq:queue", {"from-go": job["et"]})
    async with RunningWorker(pipeline_settings):
        result = await result_when_written(client, pipeline_settings, "from-go")
    assert result.status == "done"


async def test_a_job_whose_body_is_not_a_chat_request_ends_with_invalid_request(
    pipeline_settings: Settings, client: Client
) -> None:
    job = {
        "t": 1,
        "f": "chat_stream",
        "a": [{"model": "m"}],
        "k": {},
        "et": int(time.time() * 1000),
    }
    await client.redis.set("arq:job:bad-body", orjson.dumps(job))
    await client.redis.zadd("arq:queue", {"bad-body": job["et"]})
    async with RunningWorker(pipeline_settings):
        result = await result_when_written(client, pipeline_settings, "bad-body")
    assert result.status == "error"
    assert result.error is not None and result.error["code"] == "invalid_request"


async def test_many_streams_run_at_once_on_one_worker(
    pipeline_settings: Settings, client: Client, mock_upstream: MockUpstream
) -> None:
    body = chat(reply_tokens=40, tokens_per_s=20)
    async with RunningWorker(pipeline_settings):
        subs = [await client.submit(body) for _ in range(50)]
        results = await asyncio.gather(*(client.result(s.stream_id) for s in subs))
    assert {r.status for r in results} == {"done"}
    assert {r.text for r in results} == {expected_message(body)["content"]}
    # 40 tokens at 20/s take 2 s each: count how many were open at once.
    marks = sorted(
        [(r.started_at, 1) for r in mock_upstream.requests]
        + [(r.ended_at or 0.0, -1) for r in mock_upstream.requests]
    )
    open_now = peak = 0
    for _t, step in marks:
        open_now += step
        peak = max(peak, open_now)
    assert peak >= 25, f"only {peak} streams ran at once"


async def test_the_worker_counts_what_it_did_in_its_metrics(
    pipeline_settings: Settings, client: Client
) -> None:
    body = chat(reply_tokens=30, fault="http_500", fault_times=1, fault_key="m")
    async with RunningWorker(pipeline_settings) as running:
        sub = await client.submit(body)
        await client.result(sub.stream_id)
    text = generate_latest(running.state.metrics.registry).decode()
    assert 'streamfan_worker_attempts_total{outcome="done"} 1.0' in text
    assert 'streamfan_worker_attempts_total{outcome="retry"} 1.0' in text
    assert 'streamfan_worker_upstream_errors_total{code="upstream_http_error"} 1.0' in text
    assert "streamfan_worker_streams_running 0.0" in text
    writes = float(re.search(r"^streamfan_worker_writes_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    reads = float(re.search(r"^streamfan_worker_upstream_reads_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    trips = float(
        re.search(r"^streamfan_worker_append_round_trips_total (\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
    )
    assert 0 < writes <= reads  # at most one append per network read
    # Batched appends: at most one round trip per read, plus each attempt's start.
    assert 0 < trips <= reads + 2


async def test_a_submit_wakes_an_idle_worker_without_waiting_for_its_poll(
    pipeline_settings: Settings, client: Client, mock_upstream: MockUpstream
) -> None:
    slow_poll = pipeline_settings.replace(worker_poll_delay_s=30.0)
    async with RunningWorker(slow_poll):
        sub = await client.submit(chat())
        # Far less than the 30 s poll: only the nudge can have started it.
        await asyncio.wait_for(mock_upstream.wait_request(0), 5)
        await client.result(sub.stream_id)


async def test_reading_history_that_maxlen_trimmed_raises_history_gone(
    pipeline_settings: Settings, client: Client
) -> None:
    # MAXLEN ~ trims whole nodes of 100 entries, keeping at least 50: a reader
    # less than 50 entries behind the writer never has its next entry trimmed.
    s = pipeline_settings.replace(maxlen=50)
    body = chat(reply_tokens=300, tokens_per_s=300)
    async with RunningWorker(s):
        sub = await client.submit(body)
        # A reader that keeps up is ahead of the trimming: it gets everything.
        live = await client.result(sub.stream_id)
    assert live.status == "done"
    assert live.message == expected_message(body)
    with pytest.raises(HistoryGone):
        await client.result(sub.stream_id)  # from "0", after the fact
    raw = await client.redis.xrange(s.keys.events(sub.stream_id))
    kept_first = raw[0][0].decode()
    with pytest.raises(HistoryGone):
        [e async for _i, e in client.events(sub.stream_id, from_="1-0")]
    # From an id that is still kept, nothing is missing: no error.
    tail = [e async for _i, e in client.events(sub.stream_id, from_=kept_first)]
    assert tail[-1]["type"] == "done"


async def test_a_running_job_is_held_out_of_arqs_polls_and_released_when_done(
    pipeline_settings: Settings, client: Client, mock_upstream: MockUpstream
) -> None:
    queue = pipeline_settings.queue_name
    async with RunningWorker(pipeline_settings):
        sub = await client.submit(chat(reply_tokens=200, tokens_per_s=100))
        await mock_upstream.wait_chunks(0, 5)
        due = await client.redis.zrangebyscore(queue, "-inf", int(time.time() * 1000))
        score = await client.redis.zscore(queue, sub.stream_id)
        assert sub.stream_id.encode() not in due  # polls skip it: no per-poll cost
        assert score is not None and score > time.time() * 1000  # held for the lease
        await client.result(sub.stream_id)
    assert await client.redis.zscore(queue, sub.stream_id) is None
