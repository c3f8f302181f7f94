"""The write scripts against a real Redis: idempotent appends, stale attempts, cancel."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from streamfan import events
from streamfan.events import decode_event
from streamfan.settings import Settings
from streamfan.store import create_meta, read_meta, request_cancel, stream_keys
from streamfan.wakeup import decode_wakeup
from worker.publisher import LeaseLost, Publisher, StreamFinished


async def _entries(r: aioredis.Redis, settings: Settings, sid: str) -> list[dict[str, object]]:
    rows = await r.xrange(settings.keys.events(sid))
    return [decode_event(fields[b"e"]) for _id, fields in rows]


async def test_an_attempt_writes_events_and_a_terminal_event_sets_status_and_ttl(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    await create_meta(aredis, settings.keys, "s1", model="m", owner=None)
    pub = Publisher(aredis, settings)
    claim = await pub.begin("s1", "tok", "m")
    assert (claim.outcome, claim.attempt, claim.had_events) == ("run", 1, False)
    w = pub.writer("s1", claim.attempt)
    ids = await w.write([events.start("s1", "m", 1, 1), events.delta([{"index": 0}])])
    assert len(ids) == 2
    await w.finish(events.done("stop", {"total_tokens": 3}))
    meta = await read_meta(aredis, settings.keys, "s1")
    assert meta is not None
    assert (meta.status, meta.finish_reason, meta.usage) == ("done", "stop", {"total_tokens": 3})
    assert 0 < await aredis.pttl(settings.keys.events("s1")) <= settings.retention_s * 1000
    assert [e["type"] for e in await _entries(aredis, settings, "s1")] == [
        "start",
        "delta",
        "done",
    ]


async def test_a_write_retried_with_the_same_seq_adds_nothing_twice(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    await create_meta(aredis, settings.keys, "s2", model="m", owner=None)
    pub = Publisher(aredis, settings)
    claim = await pub.begin("s2", "tok", "m")
    w = pub.writer("s2", claim.attempt)
    batch = [events.delta([{"index": 0, "delta": {"content": c}}]) for c in "abc"]
    await w.write(batch)
    # Simulate a lost reply: the same call again, from the same position.
    w.seq = 0
    again = await w.write([*batch, events.delta([{"index": 0, "delta": {"content": "d"}}])])
    assert len(again) == 1
    contents = [e["choices"][0]["delta"]["content"] for e in await _entries(aredis, settings, "s2")]
    assert contents == ["a", "b", "c", "d"]


async def test_a_superseded_attempt_cannot_write_and_the_next_one_starts_with_reset_info(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    await create_meta(aredis, settings.keys, "s3", model="m", owner=None)
    pub = Publisher(aredis, settings)
    first = await pub.begin("s3", "worker-a", "m")
    old = pub.writer("s3", first.attempt)
    await old.write([events.start("s3", "m", 1, 1)])
    await aredis.delete(settings.keys.lease("s3"))  # worker-a's lease expired
    second = await pub.begin("s3", "worker-b", "m")
    assert (second.outcome, second.attempt, second.had_events) == ("run", 2, True)
    with pytest.raises(LeaseLost):
        await old.write([events.delta([])])


async def test_a_live_lease_held_by_another_worker_is_busy(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    await create_meta(aredis, settings.keys, "s4", model="m", owner=None)
    pub = Publisher(aredis, settings)
    await pub.begin("s4", "worker-a", "m")
    claim = await pub.begin("s4", "worker-b", "m")
    assert claim.outcome == "busy"
    assert 0 < claim.busy_ms <= settings.lease_s * 1000
    assert await pub.renew("s4", "worker-a") == (True, "")
    assert await pub.renew("s4", "worker-b") == (False, "")


async def test_the_wakeup_carries_the_previous_id_and_the_new_entries(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    await create_meta(aredis, settings.keys, "s5", model="m", owner=None)
    pub = Publisher(aredis, settings)
    ps = aredis.pubsub()
    await ps.subscribe(settings.keys.live("s5"))
    await ps.get_message(timeout=1.0)  # the subscribe confirmation
    claim = await pub.begin("s5", "tok", "m")
    w = pub.writer("s5", claim.attempt)
    ids1 = await w.write([events.start("s5", "m", 1, 1)])
    ids2 = await w.write([events.delta([]), events.delta([{"index": 0}])])
    msgs = []
    while len(msgs) < 2:
        m = await ps.get_message(ignore_subscribe_messages=True, timeout=2.0)
        assert m is not None, "no wake-up published"
        msgs.append(decode_wakeup(m["data"]))
    await ps.aclose()
    assert msgs[0] is not None and msgs[1] is not None
    assert msgs[0].prev_id == b"0-0"
    assert [i.decode() for i, _ in msgs[0].entries] == ids1
    assert msgs[1].prev_id.decode() == ids1[-1]
    assert [i.decode() for i, _ in msgs[1].entries] == ids2


async def test_cancel_ends_a_queued_stream_at_once_and_flags_a_running_one(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    keys = settings.keys
    await create_meta(aredis, keys, "q", model="m", owner=None)
    assert await request_cancel(aredis, keys, "q", reason="r", retention_s=60, maxlen=10) == (
        "cancelled"
    )
    assert [e["type"] for e in await _entries(aredis, settings, "q")] == ["cancelled"]
    pub = Publisher(aredis, settings)
    assert (await pub.begin("q", "tok", "m")).outcome == "finished"

    await create_meta(aredis, keys, "r", model="m", owner=None)
    claim = await pub.begin("r", "tok", "m")
    w = pub.writer("r", claim.attempt)
    assert await request_cancel(aredis, keys, "r", reason="user", retention_s=60, maxlen=10) == (
        "cancelling"
    )
    await w.write([events.start("r", "m", 1, 1)])
    assert w.cancel_requested == "user"
    assert await pub.renew("r", "tok") == (True, "user")
    await w.finish(events.cancelled("user"))
    with pytest.raises(StreamFinished):
        await w.write([events.delta([])])
    assert await request_cancel(aredis, keys, "nope", reason="r", retention_s=60, maxlen=10) == (
        "not_found"
    )


async def test_a_job_past_its_last_attempt_ends_the_stream_with_an_error(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    s = settings.replace(max_attempts=2)
    await create_meta(aredis, s.keys, "x", model="m", owner=None)
    pub = Publisher(aredis, s)
    for token in ("a", "b"):
        assert (await pub.begin("x", token, "m")).outcome == "run"
        await aredis.delete(s.keys.lease("x"))
    assert (await pub.begin("x", "c", "m")).outcome == "exhausted"
    last = (await _entries(aredis, s, "x"))[-1]
    assert (last["type"], last["code"]) == ("error", "attempts_exhausted")
    meta = await read_meta(aredis, s.keys, "x")
    assert meta is not None and meta.status == "error"
    assert stream_keys(s.keys, "x")[0] == s.keys.meta("x")


async def test_a_terminal_event_after_an_interrupted_write_is_never_skipped(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    # A cancel can interrupt a write after its script ran: the writer never learns
    # that its position moved. The terminal event written next must still land.
    await create_meta(aredis, settings.keys, "int", model="m", owner=None)
    pub = Publisher(aredis, settings)
    claim = await pub.begin("int", "tok", "m")
    w = pub.writer("int", claim.attempt)
    await w.write([events.start("int", "m", 1, 1)])
    await w.write([events.delta([{"index": 0}]), events.delta([{"index": 0}])])
    w.seq -= 2  # the reply of that write was lost to the cancel
    w._unsure = True
    await w.finish(events.cancelled("user"))
    kinds = [e["type"] for e in await _entries(aredis, settings, "int")]
    assert kinds == ["start", "delta", "delta", "cancelled"]
