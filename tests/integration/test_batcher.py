"""Appends of many streams sharing round trips (worker/batcher.py), against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from streamfan import events
from streamfan.errors import RedisUnavailable
from streamfan.events import decode_event
from streamfan.settings import Settings
from streamfan.store import create_meta
from streamfan.wakeup import decode_wakeup
from worker import batcher
from worker.publisher import AttemptWriter, LeaseLost, Publisher


def _delta(text: str) -> events.Event:
    return events.delta([{"index": 0, "delta": {"content": text}}])


async def _texts(r: aioredis.Redis, settings: Settings, sid: str) -> list[str]:
    rows = await r.xrange(settings.keys.events(sid))
    return [decode_event(f[b"e"])["choices"][0]["delta"]["content"] for _id, f in rows]


async def _writers(
    r: aioredis.Redis, settings: Settings, pub: Publisher, prefix: str, n: int
) -> list[AttemptWriter]:
    out = []
    for i in range(n):
        sid = f"{prefix}{i}"
        await create_meta(r, settings.keys, sid, model="m", owner=None)
        claim = await pub.begin(sid, "tok", "m")
        out.append(pub.writer(sid, claim.attempt))
    return out


async def test_streams_writing_at_once_share_round_trips_and_keep_their_order(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    trips: list[int] = []
    pub = Publisher(aredis, settings, on_round_trip=trips.append)
    writers = await _writers(aredis, settings, pub, "bt", 40)

    async def run(w: AttemptWriter) -> None:
        for k in range(5):
            await w.write([_delta(f"{k}a"), _delta(f"{k}b")])

    try:
        await asyncio.gather(*(run(w) for w in writers))
    finally:
        await pub.aclose()
    assert sum(trips) == 40 * 5  # every append went out exactly once
    assert len(trips) < 40 * 5 / 4  # ... sharing round trips
    for w in writers:
        assert await _texts(aredis, settings, w.stream_id) == [
            f"{k}{c}" for k in range(5) for c in "ab"
        ]
        assert w.seq == 10


async def test_a_refused_stream_does_not_disturb_the_others_in_its_round_trip(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    trips: list[int] = []
    pub = Publisher(aredis, settings, on_round_trip=trips.append)
    good, stale = await _writers(aredis, settings, pub, "br", 2)
    # Another attempt takes the second stream over (this one's lease "expired").
    await aredis.delete(settings.keys.lease(stale.stream_id))
    await pub.begin(stale.stream_id, "other", "m")
    try:
        ids, refused = await asyncio.gather(
            good.write([_delta("x")]), stale.write([_delta("y")]), return_exceptions=True
        )
    finally:
        await pub.aclose()
    assert trips == [2]
    assert isinstance(refused, LeaseLost)
    assert isinstance(ids, list) and len(ids) == 1
    assert await _texts(aredis, settings, good.stream_id) == ["x"]
    assert await aredis.xlen(settings.keys.events(stale.stream_id)) == 0


async def test_a_batched_append_publishes_the_same_wakeup_as_a_single_one(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    pub = Publisher(aredis, settings)
    (w,) = await _writers(aredis, settings, pub, "bw", 1)
    ps = aredis.pubsub()
    await ps.subscribe(settings.keys.live(w.stream_id))
    await ps.get_message(timeout=1)  # the subscribe confirmation
    try:
        first = await w.write([_delta("a")])
        second = await w.write([_delta("b"), _delta("c")])
        messages = []
        while len(messages) < 2:
            msg = await ps.get_message(ignore_subscribe_messages=True, timeout=5)
            assert msg is not None, "no wake-up published"
            messages.append(decode_wakeup(msg["data"]))
    finally:
        await ps.aclose()
        await pub.aclose()
    assert messages[0] is not None and messages[1] is not None
    assert messages[0].prev_id == b"0-0"
    assert [i.decode() for i, _ in messages[0].entries] == first
    assert messages[1].prev_id.decode() == first[-1]
    assert [i.decode() for i, _ in messages[1].entries] == second
    meta_last = await aredis.hget(settings.keys.meta(w.stream_id), "last_id")
    assert meta_last is not None and meta_last.decode() == second[-1]


async def test_more_streams_than_one_call_takes_go_out_in_one_pipeline(
    aredis: aioredis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batcher, "MAX_STREAMS_PER_CALL", 3)
    trips: list[int] = []
    pub = Publisher(aredis, settings, on_round_trip=trips.append)
    writers = await _writers(aredis, settings, pub, "bp", 10)
    try:
        await asyncio.gather(*(w.write([_delta(w.stream_id)]) for w in writers))
    finally:
        await pub.aclose()
    assert trips == [10]
    for w in writers:
        assert await _texts(aredis, settings, w.stream_id) == [w.stream_id]


async def test_a_write_whose_caller_gave_up_before_it_was_sent_is_not_sent(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    pub = Publisher(aredis, settings)
    (w,) = await _writers(aredis, settings, pub, "bc", 1)
    try:
        task = asyncio.create_task(w.write([_delta("never")]))
        await asyncio.sleep(0)  # waits-on-time-ok: one loop turn, so the append is queued
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The writer no longer knows where the stream is; its next write lands after it.
        assert await w.write([_delta("next")])
    finally:
        await pub.aclose()
    assert await _texts(aredis, settings, w.stream_id) == ["next"]


async def test_a_stream_redis_refuses_fails_alone_and_the_rest_of_its_batch_is_written(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    trips: list[int] = []
    pub = Publisher(aredis, settings, on_round_trip=trips.append)
    a, b, c = await _writers(aredis, settings, pub, "bx", 3)
    # Something else wrote a string where b's events stream belongs: XADD fails.
    await aredis.set(settings.keys.events(b.stream_id), "not a stream")
    try:
        results = await asyncio.gather(
            a.write([_delta("a")]),
            b.write([_delta("b")]),
            c.write([_delta("c")]),
            return_exceptions=True,
        )
    finally:
        await pub.aclose()
    assert trips == [3]
    assert isinstance(results[1], RedisUnavailable)
    assert "WRONGTYPE" in str(results[1])
    assert await _texts(aredis, settings, a.stream_id) == ["a"]
    assert await _texts(aredis, settings, c.stream_id) == ["c"]


async def test_a_round_trip_that_hangs_fails_and_its_retry_writes_once(
    aredis: aioredis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batcher, "SEND_TIMEOUT_S", 0.2)
    trips: list[int] = []
    pub = Publisher(aredis, settings, on_round_trip=trips.append)
    (w,) = await _writers(aredis, settings, pub, "bh", 1)
    # Redis holds every write for 0.3 s: the first send cannot answer within
    # 0.2 s, so it fails as a timeout and the writer sends again.
    await aredis.execute_command("CLIENT", "PAUSE", 300, "WRITE")
    try:
        assert len(await w.write([_delta("once")])) in (0, 1)
        assert await w.write([_delta("next")])
    finally:
        await pub.aclose()
    assert len(trips) >= 3  # a timed-out send, its retry, then "next"
    assert await _texts(aredis, settings, w.stream_id) == ["once", "next"]


async def test_appends_go_on_after_the_flusher_died_and_fail_cleanly_once_closed(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    pub = Publisher(aredis, settings)
    (w,) = await _writers(aredis, settings, pub, "bd", 1)
    await w.write([_delta("a")])
    task = pub.batcher._task
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await w.write([_delta("b")])  # a new flusher takes over
    await pub.aclose()
    with pytest.raises(RedisUnavailable):
        await w.write([_delta("c")])
    assert await _texts(aredis, settings, w.stream_id) == ["a", "b"]
