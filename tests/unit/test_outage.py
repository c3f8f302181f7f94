"""The shared outage backoff, and the job decoder that never lets a bad job vanish."""

from __future__ import annotations

import asyncio
import logging
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfan.keys import JOB_FUNCTION
from streamfan.serialization import INVALID_JOB_KWARG, job_arguments, job_deserializer
from worker.outage import BACKOFF_MAX_S, BACKOFF_MIN_S, Outage, backoff_s


@given(st.integers(min_value=1, max_value=10**9))
def test_the_backoff_is_bounded_and_never_zero_however_long_the_outage(failures: int) -> None:
    delay = backoff_s(failures)
    assert BACKOFF_MIN_S / 2 <= delay <= BACKOFF_MAX_S


def test_the_backoff_doubles_up_to_its_cap() -> None:
    assert backoff_s(1) <= BACKOFF_MIN_S
    assert backoff_s(40) >= BACKOFF_MAX_S / 2


async def test_an_outage_logs_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage("queue Redis")
    with caplog.at_level(logging.WARNING, logger="worker.outage"):
        for i in range(50):
            outage.failed(f"try {i}", ConnectionError("refused"))
        assert not outage.up
        for _ in range(5):
            outage.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "unreachable" in lines[0] and "try 0" in lines[0]
    assert "reachable again" in lines[1]
    assert outage.up and outage.count == 1


async def test_every_waiting_loop_tries_again_as_soon_as_one_loop_gets_an_answer() -> None:
    outage = Outage("events Redis")
    outage.failed("append", ConnectionError("refused"))
    waiters = [asyncio.create_task(outage.pause(40)) for _ in range(10)]  # ~1 s each
    await asyncio.sleep(0)  # waits-on-time-ok: one turn of the loop, so the waiters start
    outage.ok()
    async with asyncio.timeout(BACKOFF_MAX_S / 4):
        await asyncio.gather(*waiters)


JOB = {"f": JOB_FUNCTION, "a": [{"model": "m"}], "k": {}, "t": 1, "et": 1}


def test_a_well_formed_job_decodes_as_it_is() -> None:
    import orjson

    assert job_deserializer(orjson.dumps(JOB)) == JOB


@given(st.binary(max_size=200))
def test_any_bytes_decode_to_a_call_of_chat_stream_never_to_an_exception(data: bytes) -> None:
    job = job_deserializer(data)
    assert job["f"] == JOB_FUNCTION
    assert isinstance(job["a"], list) and isinstance(job["k"], dict)
    assert isinstance(job["et"], int)


def test_a_pickled_job_is_named_as_such_and_never_unpickled() -> None:
    job = job_deserializer(pickle.dumps(JOB))
    assert "pickled" in job["k"][INVALID_JOB_KWARG]


@pytest.mark.parametrize(
    ("args", "kwargs", "ok"),
    [
        (({"model": "m"},), {}, True),
        ((), {"body": {"model": "m"}}, True),
        ((), {}, False),
        (({}, {}), {}, False),
        (({},), {"body": {}}, False),
        ((), {"body": {}, "temperature": "hunter2"}, False),
        ((), {INVALID_JOB_KWARG: "not JSON"}, False),
    ],
)
def test_chat_stream_takes_exactly_one_body(
    args: tuple[object, ...], kwargs: dict[str, object], ok: bool
) -> None:
    body, problem = job_arguments(args, kwargs)
    assert (problem is None) == ok
    if problem is not None:
        assert body is None
        assert "hunter2" not in problem  # argument names only, never values


async def test_stopping_a_task_that_swallowed_its_cancel_still_ends_it() -> None:
    from worker.outage import stop_task

    swallowed = asyncio.Event()

    async def loop_around_a_read() -> None:
        # What a redis-py read inside asyncio.timeout can do on Python 3.11: the
        # cancel becomes "timed out", and the loop around it goes on.
        while True:
            try:
                await asyncio.sleep(10)  # waits-on-time-ok: a stand-in read, always cancelled
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()

    task = asyncio.create_task(loop_around_a_read())
    await asyncio.sleep(0)  # waits-on-time-ok: one turn of the loop, so the task starts
    async with asyncio.timeout(2):
        await stop_task(task)
    assert swallowed.is_set() and task.cancelled()
