"""Running a chaos plan: submit the jobs, start the readers, inject the faults, judge the result.

The stack comes up, the jobs are submitted at their planned moments (a submit that
meets a Redis outage is retried: it is idempotent on the stream id), each with its
readers, and the planned process faults happen on schedule. When every reader has
its ``end`` (or the drain deadline passes) the run reads back each stream — its
entry ids, status and assembled reply — and hands everything to
:func:`chaos.verdict.summarise`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from chaos import plan as chaos_plan
from chaos.front import Front
from chaos.plan import Config, Fault, Job, Plan
from chaos.readers import Reader, SseReader
from chaos.stack import JWT_SECRET, Stack
from chaos.verdict import ReaderLog, StreamOutcome, Summary, summarise
from streamfan import Client, RedisUnavailable, Settings
from streamfan.keys import Keys
from streamfan.mock.script import Script
from streamfan.tokens import mint_token

#: After the planned duration, how long the streams get to finish.
DRAIN_S = 90.0
RETRY_S = 0.2


def expected_message(body: dict[str, Any]) -> dict[str, Any]:
    """What the mock scripted for choice 0, as the assembler builds it (no ``refusal: None``)."""
    message = Script.from_request(body).expected_message(0).as_message()
    return {k: v for k, v in message.items() if not (k == "refusal" and v is None)}


async def _until_redis(call: Any, *args: Any, **kwargs: Any) -> Any:
    """``await call(...)``, again after each Redis outage (the calls here are idempotent)."""
    while True:
        try:
            return await call(*args, **kwargs)
        except (RedisUnavailable, TimeoutError, OSError):
            await asyncio.sleep(RETRY_S)  # waits-on-time-ok: backoff during an outage


class Run:
    def __init__(self, plan: Plan, run_dir: Path) -> None:
        self.plan = plan
        self.config = plan.config
        self.stack = Stack(run_dir, workers=self.config.workers, gateways=self.config.gateways)
        self.logs: list[ReaderLog] = []
        self.readers: list[asyncio.Task[None]] = []
        self.faults: collections.Counter[str] = collections.Counter()
        self.front = Front(run_dir, self.stack.gateway_ports) if self.config.front else None
        self._t0 = 0.0

    def entry_points(self) -> list[str]:
        """Where readers connect: the front, or any gateway."""
        return [self.front.url] if self.front is not None else self.stack.gateway_urls

    def _at(self, at_s: float) -> float:
        return max(0.0, self._t0 + at_s - time.monotonic())

    async def _submit(self, sf: Client, job: Job) -> None:
        await asyncio.sleep(self._at(job.submit_at_s))  # waits-on-time-ok: the plan's moment
        await _until_redis(sf.submit, job.body, stream_id=job.stream_id)
        if job.upstream_fault:
            self.faults[f"upstream {job.upstream_fault}"] += 1
        token = mint_token(JWT_SECRET, [job.stream_id])
        for r in range(self.config.readers):
            log = ReaderLog(stream_id=job.stream_id, index=r)
            self.logs.append(log)
            # Every other reader reads over the SSE door instead of the WebSocket.
            kind = SseReader if r % 2 else Reader
            reader = kind(log, self.entry_points, token,
                            self.plan.reader_seeds[(job.stream_id, r)])  # fmt: skip
            self.readers.append(asyncio.create_task(reader.run()))

    async def _fault(self, fault: Fault) -> None:
        await asyncio.sleep(self._at(fault.at_s))  # waits-on-time-ok: the plan's moment
        self.faults[fault.kind] += 1
        if fault.kind == chaos_plan.KILL_WORKER:
            await self.stack.kill_worker(fault.target)
        elif fault.kind == chaos_plan.KILL_GATEWAY:
            await self.stack.kill_gateway(fault.target)
        elif fault.kind == chaos_plan.KILL_PUBSUB:
            await _until_redis(self.stack.kill_pubsub)
        elif fault.kind == chaos_plan.KILL_REDIS:
            await self.stack.kill_redis(self.config.redis_down_s)
        elif fault.kind == chaos_plan.PAUSE_REDIS:
            await self.stack.pause_redis(self.config.pause_s)
        elif fault.kind == chaos_plan.RESTART_WORKERS:
            await self.stack.restart_workers()
        elif fault.kind == chaos_plan.RESTART_GATEWAYS:
            await self.stack.restart_gateways()

    async def execute(self) -> Summary:
        await self.stack.start()
        if self.front is not None:
            await self.front.start()
        settings = Settings.from_env({}, redis_url=self.stack.redis_url, jwt_secret=JWT_SECRET)
        try:
            async with Client(settings) as sf:
                self._t0 = time.monotonic()

                # Faults one after another (a kill and a pause never overlap), jobs at will.
                async def faults() -> None:
                    for fault in self.plan.faults:
                        await self._fault(fault)

                await asyncio.gather(faults(), *(self._submit(sf, job) for job in self.plan.jobs))
                _, pending = await asyncio.wait(self.readers, timeout=DRAIN_S) if self.readers \
                    else (set(), set())  # fmt: skip
                for task in pending:
                    task.cancel()
                outcomes = {job.stream_id: await self._outcome(sf, job) for job in self.plan.jobs}
                assert isinstance(sf.redis, aioredis.Redis), "the chaos run uses one Redis"
                leftover = await self._leftover_keys(sf.redis, sf.keys)
        finally:
            if self.front is not None:
                await self.front.stop()
            await self.stack.stop()
        return summarise(outcomes, self.logs, self.faults,
                         process_exits=self.stack.exits, leftover_keys=leftover)  # fmt: skip

    async def _outcome(self, sf: Client, job: Job) -> StreamOutcome:
        keys = sf.keys
        entries = await _until_redis(sf.redis.xrange, keys.events(job.stream_id))
        status: str | None = None
        message: dict[str, Any] | None = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                result = await _until_redis(sf.result, job.stream_id)
                status, message = result.status, result.message
        return StreamOutcome(
            stream_id=job.stream_id,
            entry_ids=tuple(entry_id.decode() for entry_id, _ in entries),
            status=status,
            message=message,
            expected=expected_message(job.body),
        )

    @staticmethod
    async def _leftover_keys(r: aioredis.Redis, keys: Keys) -> list[str]:
        """Keys of ours that retention will never remove (no TTL) once every stream ended."""
        leftover = []
        async for key in r.scan_iter(match=f"{keys.prefix}:{{*", count=500):
            if await r.ttl(key) == -1:
                leftover.append(key.decode())
        return sorted(leftover)


async def run(config: Config, run_dir: Path) -> Summary:
    return await Run(chaos_plan.make_plan(config), run_dir).execute()
