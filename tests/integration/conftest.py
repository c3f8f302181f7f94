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
from arq import Worker

from streamfan.client import Client
from streamfan.settings import Settings
from worker.app import make_worker_settings


class RunningWorker:
    """An arq worker running ``chat_stream`` in this event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker = Worker(**make_worker_settings(settings), handle_signals=False)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunningWorker:
        self.task = asyncio.create_task(self.worker.main())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        for job in list(self.worker.tasks.values()):
            job.cancel()
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
            [sys.executable, "-m", "streamfan.cli", "worker"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
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
        if self.proc.stdout is not None:
            self.proc.stdout.close()


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
