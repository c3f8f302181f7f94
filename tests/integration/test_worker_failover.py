"""Workers that die or stop mid-stream: another worker finishes the job, exactly.

The workers here are real `streamfan worker` processes; the mock upstream runs in
the test's event loop and the stream is read back through the client API.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from streamfan.client import Client
from streamfan.mock.server import MockUpstream
from streamfan.settings import Settings

from .conftest import WorkerProcess, expected_message

#: design: a killed worker's stream is taken over within this long.
TAKEOVER_LIMIT_S = 15.0


def slow_reply() -> dict[str, object]:
    return {
        "model": "mock-gpt",
        "messages": [{"role": "user", "content": "a long one"}],
        "mock": {"reply_tokens": 400, "tokens_per_s": 100},
    }


async def mid_stream_on_a_first_worker(
    settings: Settings,
    client: Client,
    mock_upstream: MockUpstream,
    worker_processes: Callable[[Settings], WorkerProcess],
) -> tuple[WorkerProcess, WorkerProcess, str]:
    """A slow reply streaming from a first worker, and a second worker standing by."""
    first = worker_processes(settings)
    sub = await client.submit(slow_reply())
    await asyncio.wait_for(mock_upstream.wait_chunks(0, 30), 30)
    return first, worker_processes(settings), sub.stream_id


async def test_a_worker_killed_mid_stream_is_taken_over_within_15_s_and_the_reply_is_exact(
    pipeline_settings: Settings,
    client: Client,
    mock_upstream: MockUpstream,
    worker_processes: Callable[[Settings], WorkerProcess],
) -> None:
    first, second, stream_id = await mid_stream_on_a_first_worker(
        pipeline_settings, client, mock_upstream, worker_processes
    )
    first.kill()
    killed_at = time.monotonic()
    retry = await asyncio.wait_for(mock_upstream.wait_request(1), TAKEOVER_LIMIT_S + 5)
    taken_over_s = retry.started_at - killed_at
    result = await asyncio.wait_for(client.result(stream_id), 30)
    second.terminate()
    assert taken_over_s < TAKEOVER_LIMIT_S, f"taken over after {taken_over_s:.1f} s"
    assert result.status == "done"
    assert result.message == expected_message(slow_reply())
    kinds = [e["type"] async for _i, e in client.events(stream_id)]
    assert kinds.count("reset") == 1 and kinds.count("start") == 2
    assert (await client.status(stream_id)).attempt == 2


async def test_a_worker_stopped_with_sigterm_hands_its_stream_over_at_once(
    pipeline_settings: Settings,
    client: Client,
    mock_upstream: MockUpstream,
    worker_processes: Callable[[Settings], WorkerProcess],
) -> None:
    first, second, stream_id = await mid_stream_on_a_first_worker(
        pipeline_settings, client, mock_upstream, worker_processes
    )
    await asyncio.to_thread(first.terminate)
    stopped_at = time.monotonic()
    retry = await asyncio.wait_for(mock_upstream.wait_request(1), 10)
    result = await asyncio.wait_for(client.result(stream_id), 30)
    second.terminate()
    # No lease to wait out: the second worker starts as soon as it polls.
    assert retry.started_at - stopped_at < pipeline_settings.lease_s
    assert result.status == "done"
    assert result.message == expected_message(slow_reply())
