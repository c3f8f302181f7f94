"""bench.profile_split: py-spy folded stacks → where the worker's CPU went."""

from __future__ import annotations

import pytest

from bench.profile_split import REST, split

LOOP = "run_forever (asyncio/base_events.py:607);_run_once (asyncio/base_events.py:1922)"


def test_each_sample_counts_for_its_outermost_named_frame_and_idle_is_left_out() -> None:
    lines = [
        # An append: writer → redis-py, counted as the append.
        f"{LOOP};Attempt._stream (worker/job.py:301);AttemptWriter.write (worker/publisher.py:180);"
        "Redis.execute_command (redis/asyncio/client.py:646) 6",
        # A lease renewal also goes through redis-py, but is the lease's.
        f"{LOOP};Attempt._keep_lease (worker/job.py:262);Publisher.renew (worker/publisher.py:123);"
        "Redis.execute_command (redis/asyncio/client.py:646) 2",
        f"{LOOP};Attempt._stream (worker/job.py:288);Upstream._reads (worker/upstream.py:162);"
        "Response.aiter_bytes (httpx/_models.py:997) 8",
        f"{LOOP};Attempt._stream (worker/job.py:293);SSEDecoder.decode (worker/sse.py:134) 2",
        f"{LOOP};Handle._run (asyncio/events.py:80) 2",
        # Idle in the selector, and the metrics server's thread: not busy.
        f"{LOOP};EpollSelector.select (selectors.py:468) 50",
        "Thread.run (threading.py:982);BaseServer.serve_forever (socketserver.py:233) 9",
        "not a folded line",
    ]
    assert split(lines) == {
        "upstream read (httpx/httpcore/h11/anyio)": pytest.approx(0.4),
        "Redis append (writer, batcher, redis-py)": pytest.approx(0.3),
        "lease renewals + arq polling": pytest.approx(0.1),
        "SSE decode + translate": pytest.approx(0.1),
        REST: pytest.approx(0.1),
    }


def test_nothing_busy_gives_an_empty_split() -> None:
    assert split([f"{LOOP};EpollSelector.select (selectors.py:468) 5"]) == {}
