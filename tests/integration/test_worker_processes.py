"""`streamfan worker --processes N`: N real worker processes under one supervisor.

The supervisor is a real `streamfan worker --processes 2` process; its children are
found through /proc and watched through pidfds (an exit is an event, not a poll);
the mock upstream runs in the test's loop and the streams are read back with the
client API.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import redis.asyncio

from streamfan.client import Client
from streamfan.mock.server import MockUpstream
from streamfan.settings import Settings

from .conftest import WorkerProcess, expected_message, settings_env
from .test_up import children_of
from .test_worker_failover import slow_reply

READY = re.compile(r"\[pid (\d+)\] worker\.app: worker ready")


class Logged:
    """A child process whose stderr log lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.changed = asyncio.Condition()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            async with self.changed:
                self.lines.append(line.decode(errors="replace"))
                self.changed.notify_all()

    async def wait_for(self, pattern: str, count: int = 1) -> list[re.Match[str]]:
        """The first ``count`` log lines matching ``pattern``, once there are that many."""
        regex = re.compile(pattern)

        def found() -> list[re.Match[str]]:
            return [m for line in self.lines if (m := regex.search(line))]

        async with self.changed:
            await self.changed.wait_for(lambda: len(found()) >= count or self.reader.done())
        matches = found()
        assert len(matches) >= count, f"no {pattern!r} in:\n" + "".join(self.lines)
        return matches[:count]

    async def ready_pids(self, count: int) -> set[int]:
        return {int(m.group(1)) for m in await self.wait_for(READY.pattern, count)}


def free_port_pair() -> int:
    """A port P with P + 1 free too (the second process's /metrics)."""
    while True:
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port < 65535 and b.connect_ex(("127.0.0.1", port + 1)) != 0:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return int(port)


@asynccontextmanager
async def supervisor(
    settings: Settings, processes: int, *extra: str, metrics_port: int = 0
) -> AsyncIterator[Logged]:
    env = settings_env(settings)
    if metrics_port:
        env["STREAMFAN_WORKER_METRICS_PORT"] = str(metrics_port)
    # One stream per process: two streams can only run on two processes.
    env["STREAMFAN_WORKER_MAX_JOBS"] = "1"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "worker", "--processes", str(processes), *extra,
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    sup = Logged(proc)
    try:
        yield sup
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        # Children that outlived it would hold the pipe open forever.
        try:
            await asyncio.wait_for(asyncio.shield(sup.reader), 10)
        except TimeoutError:
            sup.reader.cancel()


async def gone(pid: int) -> None:
    """Returns once process ``pid`` (not necessarily our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    exited = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, exited.set)
    try:
        await exited.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def lease_holders(
    aredis: redis.asyncio.Redis, settings: Settings, ids: list[str]
) -> set[str]:
    """The worker ids holding the streams' leases (a holder is ``WORKER_ID:ATTEMPT``)."""
    holders = [await aredis.get(settings.keys.lease(i)) for i in ids]
    return {h.decode().split(":")[0] for h in holders if h}


async def two_slow_streams_running(client: Client, mock: MockUpstream) -> list[str]:
    ids = [(await client.submit(slow_reply())).stream_id for _ in range(2)]
    await asyncio.wait_for(mock.wait_chunks(0, 20), 30)
    await asyncio.wait_for(mock.wait_chunks(1, 20), 30)
    return ids


async def test_two_processes_serve_and_one_killed_is_restarted_and_every_job_finishes(
    pipeline_settings: Settings,
    client: Client,
    mock_upstream: MockUpstream,
    aredis: redis.asyncio.Redis,
) -> None:
    metrics = free_port_pair()
    async with supervisor(pipeline_settings, 2, metrics_port=metrics) as sup:
        first = await asyncio.wait_for(sup.ready_pids(2), 30)
        assert first == children_of(sup.proc.pid)
        async with httpx.AsyncClient() as http:  # one /metrics per process: PORT + i
            for port in (metrics, metrics + 1):
                page = await http.get(f"http://127.0.0.1:{port}/metrics")
                assert "streamfan_worker_streams_running" in page.text
        ids = await two_slow_streams_running(client, mock_upstream)
        # Both processes serve: two streams, two lease holders.
        assert len(await lease_holders(aredis, pipeline_settings, ids)) == 2

        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        (restart,) = await asyncio.wait_for(
            sup.wait_for(r"worker process (\d) killed by SIGKILL; restarting it in ([\d.]+) s"), 10
        )
        assert float(restart.group(2)) == 0.5
        now = await asyncio.wait_for(sup.ready_pids(3), 30)
        (replacement,) = now - first
        assert children_of(sup.proc.pid) == first - {victim} | {replacement}

        results = [await asyncio.wait_for(client.result(i), 60) for i in ids]
        assert [r.status for r in results] == ["done", "done"]
        assert [r.message for r in results] == [expected_message(slow_reply())] * 2
        attempts = sorted([(await client.status(i)).attempt for i in ids])
        assert attempts == [1, 2]  # the killed process's stream was taken over once


async def test_sigterm_stops_every_process_and_each_hands_its_stream_over_at_once(
    pipeline_settings: Settings,
    client: Client,
    mock_upstream: MockUpstream,
    worker_processes: Callable[[Settings], WorkerProcess],
) -> None:
    # A lease far longer than the test allows: only a handover explains a quick retry.
    settings = pipeline_settings.replace(lease_s=60.0)
    async with supervisor(settings, 2) as sup:
        children = await asyncio.wait_for(sup.ready_pids(2), 30)
        ids = await two_slow_streams_running(client, mock_upstream)
        sup.proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert await asyncio.wait_for(sup.proc.wait(), 20) == 0
        await asyncio.wait_for(asyncio.gather(*(gone(pid) for pid in children)), 5)
        await sup.reader
        assert sup.lines and "supervisor exits 0" in sup.lines[-1]
        assert not [line for line in sup.lines if "restarting" in line]
        for pid in children:
            assert f"[pid {pid}] arq.worker: shutdown on SIGTERM" in "".join(sup.lines)

    worker_processes(settings)
    retries = [await asyncio.wait_for(mock_upstream.wait_request(i), 30) for i in (2, 3)]
    assert max(r.started_at for r in retries) - stopped_at < 15
    results = [await asyncio.wait_for(client.result(i), 60) for i in ids]
    assert [r.message for r in results] == [expected_message(slow_reply())] * 2
    assert [(await client.status(i)).attempt for i in ids] == [2, 2]


async def test_a_killed_supervisor_takes_its_workers_with_it(pipeline_settings: Settings) -> None:
    async with supervisor(pipeline_settings, 2) as sup:
        children = await asyncio.wait_for(sup.ready_pids(2), 30)
        sup.proc.kill()
        try:
            # The kernel sends each child SIGTERM (PR_SET_PDEATHSIG): they hand over and exit.
            await asyncio.wait_for(asyncio.gather(*(gone(pid) for pid in children)), 20)
        finally:
            for pid in children:  # orphans, if it failed: they are ours to end
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        await sup.reader  # the children wrote to the same pipe: every line is in
        for pid in children:
            assert f"[pid {pid}] arq.worker: shutdown on SIGTERM" in "".join(sup.lines)


async def test_in_burst_mode_the_processes_run_the_queue_dry_and_the_supervisor_exits_0(
    pipeline_settings: Settings, client: Client
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "quick"}]}
    ids = [(await client.submit(body)).stream_id for _ in range(4)]
    async with supervisor(pipeline_settings, 2, "--burst") as sup:
        assert await asyncio.wait_for(sup.proc.wait(), 60) == 0
    assert not [line for line in sup.lines if "restarting" in line]
    results = [await asyncio.wait_for(client.result(i), 10) for i in ids]
    assert [r.message for r in results] == [expected_message(body)] * 4
