"""A chaos run's processes: Redis on its append-only file, mock upstream, workers, gateways.

Every part is the real command (``python -m cli worker`` and so on) in its own
process, logging to a file in the run's directory. A part that exits when the run
did not kill it is recorded in :attr:`Stack.exits`: nothing here restarts a
process that stopped by itself, and such an exit fails the run. A part the run
killed on purpose is replaced at once by a new one in its place (same port for a
gateway), as a supervisor would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from cli.redis_server import RedisServer, free_port

HOST = "127.0.0.1"
#: At least 32 bytes, as the gateway demands of a secret it verifies.
JWT_SECRET = "chaos-run-secret-0123456789abcdef0123456789"

#: Any key will do for the mock, which only insists that one is sent.
UPSTREAM_API_KEY = "sk-chaos-upstream-key"
#: Settings that keep faults short: a lapsed lease is noticed within seconds, a stalled
#: upstream is cut, retries come soon, and there are enough of them for every fault.
TIMINGS: Mapping[str, str] = {
    "LEASE_S": "3",
    "RETRY_BASE_S": "0.2",
    "RETRY_MAX_S": "2",
    "MAX_ATTEMPTS": "12",
    "UPSTREAM_READ_TIMEOUT_S": "2",
    "UPSTREAM_IDLE_TIMEOUT_S": "2.5",
    "LOG_LEVEL": "INFO",
}


@dataclass(eq=False)
class Part:
    """One running process of the stack, and whether the run meant it to stop."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    killed_on_purpose: bool = False
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class Stack:
    def __init__(self, run_dir: Path, *, workers: int, gateways: int) -> None:
        self.run_dir = run_dir
        self.redis = RedisServer(data_dir=run_dir / "redis")
        self.n_workers = workers
        self.gateway_ports = [free_port(HOST) for _ in range(gateways)]
        self.workers: list[Part] = []
        self.gateways: list[Part] = []
        self.mock: Part | None = None
        self.upstream_url = ""
        self.exits: list[str] = []
        self._started = 0

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def gateway_urls(self) -> list[str]:
        return [f"ws://{HOST}:{port}" for port in self.gateway_ports]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({f"STREAMFAN_{k}": v for k, v in TIMINGS.items()})
        env.update(
            STREAMFAN_REDIS_URL=self.redis.url,
            STREAMFAN_JWT_SECRET=JWT_SECRET,
            STREAMFAN_UPSTREAM_BASE_URL=self.upstream_url,
            STREAMFAN_UPSTREAM_API_KEY=UPSTREAM_API_KEY,
        )
        return env

    async def _spawn(self, name: str, *args: str, ready_line: bool = True) -> Part:
        """Start ``streamfan ARGS``; stdout is piped only for a part that prints a ready line."""
        self._started += 1
        log = self.run_dir / f"{name}-{self._started}.log"
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli", *args,
                env=self.env(), stdout=asyncio.subprocess.PIPE if ready_line else out,
                stderr=out, start_new_session=True,
            )  # fmt: skip
        part = Part(name=name, proc=proc, log=log)
        return part

    def _watch(self, part: Part) -> None:
        async def watch() -> None:
            code = await part.proc.wait()
            if not part.killed_on_purpose:
                self.exits.append(f"{part.name} exited by itself with code {code} ({part.log})")

        part.watcher = asyncio.create_task(watch())

    async def _ready_line(self, part: Part, prefix: str, within_s: float = 20.0) -> str:
        """The first stdout line that starts with ``prefix`` (the part prints it when ready)."""
        assert part.proc.stdout is not None
        async with asyncio.timeout(within_s):
            while True:
                line = (await part.proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(f"{part.name} exited at start; see {part.log}")
                if line.startswith(prefix):
                    return line[len(prefix) :].strip()

    async def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.redis.start)
        mock = await self._spawn("mock-upstream", "mock-upstream", "--port", "0")
        self.upstream_url = await self._ready_line(mock, "streamfan mock-upstream listening on ")
        self.mock = mock
        self._watch(mock)
        for _ in range(self.n_workers):
            self.workers.append(await self._start_worker())
        for port in self.gateway_ports:
            self.gateways.append(await self._start_gateway(port))

    async def _start_worker(self) -> Part:
        part = await self._spawn("worker", "worker", ready_line=False)
        self._watch(part)
        return part

    async def _start_gateway(self, port: int) -> Part:
        part = await self._spawn("gateway", "gateway", "--host", HOST, "--port", str(port))
        await self._ready_line(part, "listening on ")
        self._watch(part)
        return part

    async def _kill(self, part: Part) -> None:
        part.killed_on_purpose = True
        with contextlib.suppress(ProcessLookupError):
            part.proc.send_signal(signal.SIGKILL)
        await part.proc.wait()

    async def kill_worker(self, index: int) -> None:
        i = index % len(self.workers)
        await self._kill(self.workers[i])
        self.workers[i] = await self._start_worker()

    async def kill_gateway(self, index: int) -> None:
        i = index % len(self.gateways)
        await self._kill(self.gateways[i])
        self.gateways[i] = await self._start_gateway(self.gateway_ports[i])

    async def _terminate(self, part: Part, within_s: float = 30.0) -> None:
        """SIGTERM, as a rolling restart does: the part hands over its work and exits."""
        part.killed_on_purpose = True
        with contextlib.suppress(ProcessLookupError):
            part.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(part.proc.wait(), within_s)
        except TimeoutError:
            self.exits.append(f"{part.name} did not stop within {within_s:g} s of SIGTERM")
            await self._kill(part)

    async def restart_workers(self) -> None:
        """Every worker in turn: SIGTERM, wait until it is gone, start its replacement."""
        for i, part in enumerate(self.workers):
            await self._terminate(part)
            self.workers[i] = await self._start_worker()

    async def restart_gateways(self) -> None:
        """Every gateway in turn, on its own port, the next only once this one is back."""
        for i, part in enumerate(self.gateways):
            await self._terminate(part)
            self.gateways[i] = await self._start_gateway(self.gateway_ports[i])

    async def kill_pubsub(self) -> None:
        r = aioredis.Redis.from_url(self.redis.url)
        try:
            await r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        finally:
            await r.aclose()

    async def kill_redis(self, down_s: float) -> None:
        await asyncio.to_thread(self.redis.kill)
        await asyncio.sleep(down_s)  # waits-on-time-ok: the outage itself is a span of time
        await asyncio.to_thread(self.redis.start)

    async def pause_redis(self, pause_s: float) -> None:
        assert self.redis.proc is not None
        pid = self.redis.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(pause_s)  # waits-on-time-ok: the pause itself is a span of time
        finally:
            os.kill(pid, signal.SIGCONT)

    async def stop(self) -> None:
        parts = [*self.gateways, *self.workers, *([self.mock] if self.mock else [])]
        for part in parts:
            part.killed_on_purpose = True
            with contextlib.suppress(ProcessLookupError):
                part.proc.send_signal(signal.SIGTERM)
        for part in parts:
            try:
                await asyncio.wait_for(part.proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    part.proc.kill()
                await part.proc.wait()
            if part.watcher is not None:
                await part.watcher
        await asyncio.to_thread(self.redis.stop)
