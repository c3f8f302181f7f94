"""The start path in few round trips: START_JOB (arq's check + hold), BEGIN_START, admission."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from streamfan import events
from streamfan.client import Client
from streamfan.events import decode_event
from streamfan.settings import Settings
from streamfan.store import create_meta
from tests.gateway.conftest import eventually
from tests.integration.conftest import RunningWorker
from worker.admission import Admission, room_key
from worker.app import ADMISSION_KEY
from worker.arqhold import ARQ_IN_PROGRESS_PREFIX, JobStarter
from worker.metrics import WorkerMetrics
from worker.publisher import Publisher

QUEUE = "test:queue"


async def _types(r: aioredis.Redis, settings: Settings, sid: str) -> list[dict[str, object]]:
    return [decode_event(f[b"e"]) for _id, f in await r.xrange(settings.keys.events(sid))]


async def test_begin_with_created_writes_start_in_the_same_call(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    await create_meta(aredis, settings.keys, "b1", model="m", owner=None)
    pub = Publisher(aredis, settings)
    claim = await pub.begin("b1", "tok", "m", created=123)
    assert (claim.outcome, claim.attempt, claim.seq) == ("run", 1, 1)
    assert await _types(aredis, settings, "b1") == [events.start("b1", "m", 123, 1)]
    # The writer carries on after it: the next write is not skipped as a repeat.
    w = pub.writer("b1", claim.attempt, claim.seq)
    await w.write([events.delta([{"index": 0}])])
    assert [e["type"] for e in await _types(aredis, settings, "b1")] == ["start", "delta"]


async def test_a_later_attempt_gets_reset_then_start(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    await create_meta(aredis, settings.keys, "b2", model="m", owner=None)
    pub = Publisher(aredis, settings)
    await pub.begin("b2", "tok1", "m", created=1)
    await pub.renew("b2", "tok1", lease_ms=1)
    await aredis.delete(settings.keys.lease("b2"))
    claim = await pub.begin("b2", "tok2", "m", created=2)
    assert (claim.outcome, claim.attempt, claim.seq) == ("run", 2, 2)
    assert await _types(aredis, settings, "b2") == [
        events.start("b2", "m", 1, 1),
        events.reset(2),
        events.start("b2", "m", 2, 2),
    ]


async def test_begin_that_does_not_run_writes_nothing(
    aredis: aioredis.Redis, settings: Settings
) -> None:
    await create_meta(aredis, settings.keys, "b3", model="m", owner=None)
    pub = Publisher(aredis, settings)
    await pub.begin("b3", "tok1", "m", created=1)
    claim = await pub.begin("b3", "tok2", "m", created=2)
    assert claim.outcome == "busy" and claim.seq == 0
    assert len(await _types(aredis, settings, "b3")) == 1


async def test_start_job_holds_a_due_job_once(aredis: aioredis.Redis) -> None:
    now = int(time.time() * 1000)
    await aredis.zadd(QUEUE, {"j1": now - 10, "later": now + 60_000})
    starter = JobStarter(aredis, QUEUE, lease_ms=30_000)
    outcome, score = await starter.start("j1")
    assert (outcome, score) == ("start", now - 10)
    # Held: out of arq's polls until the lease ends, and marked in progress.
    held_score = await aredis.zscore(QUEUE, "j1")
    assert held_score is not None and held_score >= now + 29_000
    assert 0 < await aredis.pttl(ARQ_IN_PROGRESS_PREFIX + "j1") <= 30_000
    assert (await starter.start("j1"))[0] == "running"
    assert (await starter.start("later"))[0] == "later"
    assert (await starter.start("nobody"))[0] == "gone"


async def test_a_busy_worker_declines_a_fresh_job_but_takes_one_that_waited(
    aredis: aioredis.Redis,
) -> None:
    now = int(time.time() * 1000)
    await aredis.zadd(QUEUE, {"fresh": now - 100, "waited": now - 2_000})
    starter = JobStarter(aredis, QUEUE, lease_ms=30_000)
    due_before = now - 500
    assert (await starter.start("fresh", due_before))[0] == "declined"
    assert await aredis.zscore(QUEUE, "fresh") == now - 100  # untouched, for another worker
    assert not await aredis.exists(ARQ_IN_PROGRESS_PREFIX + "fresh")
    assert (await starter.start("waited", due_before))[0] == "start"


def test_admission_is_busy_on_either_signal() -> None:
    adm = Admission(WorkerMetrics(), cpu_limit=0.5, lag_limit_s=0.05)
    adm.sample(0.0)
    assert adm.busy() == ""
    adm.sample(0.08)
    assert "event loop 80 ms late" in adm.busy()
    # A limit any busy loop passes, however loaded the machine is.
    adm2 = Admission(WorkerMetrics(), cpu_limit=0.01, lag_limit_s=0.05)
    adm2.sample(0.0)
    t = time.process_time()
    while time.process_time() - t < 0.05:  # burn CPU
        pass
    adm2.sample(0.0)
    assert "CPU at" in adm2.busy()
    assert adm2.metrics.cpu._value.get() == adm2.cpu > 0.01


async def test_a_worker_announces_room_and_withdraws_it_when_busy(aredis: aioredis.Redis) -> None:
    key = room_key(QUEUE)
    a = Admission(WorkerMetrics(), room=(aredis, key, "a"))
    b = Admission(WorkerMetrics(), room=(aredis, key, "b"))
    assert not await a.others_have_room()
    await b._announce()
    assert await a.others_have_room() and not await b.others_have_room()
    b.sample(0.0)
    b.sample(1.0)  # b's loop is late: it withdraws
    await b._announce()
    assert not await a.others_have_room()
    await a._announce()
    await a.stop()  # a stopping worker withdraws too
    assert await aredis.zcard(key) == 0


async def test_a_busy_worker_leaves_a_new_job_to_a_worker_with_room(
    pipeline_settings: Settings, client: Client
) -> None:
    async with RunningWorker(pipeline_settings) as busy, RunningWorker(pipeline_settings) as free:
        jammed: Admission = busy.worker.ctx[ADMISSION_KEY]
        jammed.lag_limit_s = 0.0  # any lag at all is too much: this worker has no room
        jammed.sample(0.0)
        await jammed._announce()  # withdraws its room
        roomy: Admission = free.worker.ctx[ADMISSION_KEY]
        await roomy._announce()
        for _ in range(3):
            sub = await client.submit(
                {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            )
            await client.result(sub.stream_id)

        def ran(w: RunningWorker) -> float:
            return w.state.metrics.attempts.labels("done")._value.get()

        # The attempt is counted just after its terminal entry, which result() saw.
        await eventually(lambda: ran(busy) + ran(free) == 3)
        assert (ran(busy), ran(free)) == (0, 3)
