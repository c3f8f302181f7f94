"""Fixtures for the pipeline: the real arq worker, in-process or as a child process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from streamfan.client import Client
from streamfan.mock.script import Script
from streamfan.mock.server import MockUpstream
from streamfan.settings import Settings
from worker.app import StreamfanWorker, make_worker_settings
from worker.job import STATE_KEY, WorkerState

#: How long a test's worker may take to finish its running jobs when the test ends.
GRACEFUL_STOP_S = 3.0


class RunningWorker:
    """An arq worker running ``chat_stream`` in this event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker = StreamfanWorker(**make_worker_settings(settings), handle_signals=False)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunningWorker:
        self.task = asyncio.create_task(self.worker.async_run())
        ready = asyncio.ensure_future(self.worker.ready.wait())
        await asyncio.wait({ready, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            ready.cancel()
            self.task.result()  # startup failed: raise why
        await self.state.control.subscribed.wait()
        return self

    @property
    def state(self) -> WorkerState:
        state: WorkerState = self.worker.ctx[STATE_KEY]
        return state

    async def __aexit__(self, *exc: object) -> None:
        # Stop polling, then cancel what still runs (as SIGTERM would) and wait for
        # it to hand its jobs back; only then close arq's pool and our clients.
        assert self.task is not None
        # arq's own way out of its poll loop: in burst mode with no jobs left to
        # start, it finishes the poll it is in, waits for running jobs and returns.
        self.worker.burst = True
        self.worker.max_burst_jobs = 0
        self.state.control.work_available.set()  # wake a poll that is waiting
        try:
            await asyncio.wait_for(asyncio.shield(self.task), GRACEFUL_STOP_S)
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        jobs = list(self.worker.tasks.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        self.worker.tasks.clear()
        await self.worker.close()


@pytest.fixture
def start_worker() -> Callable[[Settings], RunningWorker]:
    return RunningWorker


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with Client(settings) as sf:
        yield sf


class WorkerProcess:
    """``streamfan worker`` as a child process (for SIGKILL and SIGTERM tests)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "worker"],
            env=env,
        )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def settings_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    mapping: dict[str, Any] = {
        "REDIS_URL": settings.redis_url,
        "JWT_SECRET": settings.jwt_secret,
        "UPSTREAM_BASE_URL": settings.upstream_base_url,
        "UPSTREAM_API_KEY": settings.upstream_api_key,
        "LEASE_S": settings.lease_s,
        "RETRY_BASE_S": settings.retry_base_s,
        "RETRY_MAX_S": settings.retry_max_s,
        "WORKER_POLL_DELAY_S": settings.worker_poll_delay_s,
    }
    for key, value in mapping.items():
        if value is not None:
            env["STREAMFAN_" + key] = str(value)
    return env


@pytest.fixture
def worker_processes() -> Iterator[Callable[[Settings], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        wp = WorkerProcess(settings_env(settings))
        started.append(wp)
        return wp

    yield start
    for wp in started:
        wp.terminate()


@pytest.fixture
async def mock_upstream() -> AsyncIterator[MockUpstream]:
    async with MockUpstream() as mock:
        yield mock


@pytest.fixture
def pipeline_settings(settings: Settings, mock_upstream: MockUpstream) -> Settings:
    """Settings that point the worker at the mock upstream, with short timeouts."""
    return settings.replace(
        upstream_base_url=mock_upstream.base_url,
        upstream_read_timeout_s=1.0,
        upstream_idle_timeout_s=1.5,
        max_attempts=3,
    )


def expected_message(body: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """What the mock says a correct client assembles for ``body``'s choice ``index``.

    The assembler leaves out keys the upstream never sent (``refusal: null``), as
    the OpenAI SDK's streamed messages do; the mock's non-streaming shape has it.
    """
    message = Script.from_request(body).expected_message(index).as_message()
    return {k: v for k, v in message.items() if not (k == "refusal" and v is None)}
