"""The arq worker's settings and lifecycle: what ``arq worker.WorkerSettings`` runs.

Shared clients are created in ``on_startup`` and closed in ``on_shutdown`` (arq's
way); everything is configured from one :class:`~streamfan.settings.Settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from arq import Worker, func
from arq.connections import ArqRedis, RedisSettings
from prometheus_client import Gauge

from streamfan import redact
from streamfan.cluster import connect_events
from streamfan.errors import RedisUnavailable
from streamfan.keys import JOB_FUNCTION
from streamfan.redis_edge import FAILURES
from streamfan.serialization import job_deserializer, job_serializer
from streamfan.settings import Settings
from worker.admission import MAX_WAIT_S, Admission, room_key
from worker.arqhold import ARQ_IN_PROGRESS_PREFIX, JobStarter
from worker.control import ControlChannel
from worker.health import READY_TIMEOUT_S, HealthServer, ping_within
from worker.job import STATE_KEY, WorkerState, chat_stream
from worker.metrics import WorkerMetrics
from worker.outage import BACKOFF_MAX_S, Outage, stop_task
from worker.publisher import Publisher
from worker.sweep import Sweeper
from worker.upstream import Upstream

log = logging.getLogger(__name__)

#: arq's try limit, far above ours: when arq's tries run out it never calls the
#: function again, and nothing would write the stream's terminal event.
ARQ_MAX_TRIES = 1_000_000
#: arq's timeout sits above ours so that our own deadline writes the error event.
ARQ_TIMEOUT_MARGIN_S = 60.0
#: The key of the process's :class:`~worker.admission.Admission` in arq's ``ctx``.
ADMISSION_KEY = "streamfan_admission"
#: More nudges than this since the last poll are a burst: left to the poll.
NUDGED_START_LIMIT = 16
#: ctx key of the control channel's own client (on a cluster, not the events one).
CONTROL_REDIS_KEY = "streamfan_control_redis"
#: Keys of ``ctx`` beside the state: tasks and servers that on_shutdown stops.
_SERVICES_KEY = "streamfan_services"


def _redis_kwargs(s: Settings) -> dict[str, Any]:
    """Every worker connection times out: a hung Redis must look like a dead one."""
    return {
        "socket_timeout": s.redis_timeout_s,
        "socket_connect_timeout": min(s.redis_timeout_s, 5.0),
        "health_check_interval": 10,
    }


def queue_pool(s: Settings) -> ArqRedis:
    """arq's pool on the queue's Redis, with timeouts (arq's own ``create_pool`` sets none)."""
    pool = aioredis.ConnectionPool.from_url(s.redis_url, **_redis_kwargs(s))
    return ArqRedis(
        pool,
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        default_queue_name=s.queue_name,
    )


def make_worker_settings(settings: Settings | None = None) -> dict[str, Any]:
    """keyword arguments for ``arq.Worker`` (also the ``WorkerSettings`` mapping)."""
    s = settings or Settings.from_env()

    async def on_startup(ctx: dict[str, Any]) -> None:
        # However the process was started (``streamfan worker``, ``arq``, an
        # application): the upstream's key is masked in whatever its handlers write.
        redact.install(s.secrets)
        try:
            events_redis = await connect_events(s.events_url, **_redis_kwargs(s))
        except RedisUnavailable as exc:
            # Down at start: taken for one Redis (a cluster is detected only
            # when its node answers) and ridden out like any other outage.
            log.warning("events Redis unavailable at start (%s); assuming one Redis", exc)
            events_redis = aioredis.Redis.from_url(s.events_url, **_redis_kwargs(s))
        queue_redis = ctx["redis"]
        if s.events_url == s.redis_url:
            queue_outage = events_outage = Outage("Redis")
        else:
            queue_outage, events_outage = Outage("queue Redis"), Outage("events Redis")
        # Cancel requests and job nudges are plain PUBLISH (rare, and for every
        # worker): a cluster forwards them to every node, so one node will do.
        control_redis = (
            events_redis
            if isinstance(events_redis, aioredis.Redis)
            else aioredis.Redis.from_url(s.events_url, **_redis_kwargs(s))
        )
        ctx[CONTROL_REDIS_KEY] = control_redis
        control = ControlChannel(
            control_redis, s.keys.cancel_channel, s.keys.jobs_channel, outage=events_outage
        )
        control.start()
        metrics = WorkerMetrics()
        round_trips = metrics.append_round_trips
        ctx[STATE_KEY] = WorkerState(
            settings=s,
            events_redis=events_redis,
            queue_redis=queue_redis,
            publisher=Publisher(
                events_redis,
                s,
                on_round_trip=lambda _n: round_trips.inc(),
                outage=events_outage,
            ),
            upstream=Upstream(s),
            control=control,
            metrics=metrics,
            queue_outage=queue_outage,
        )
        state: WorkerState = ctx[STATE_KEY]
        room = (queue_redis, room_key(s.queue_name), state.worker_id)
        ctx[ADMISSION_KEY] = Admission(metrics, room=room)
        ctx[ADMISSION_KEY].start()
        Gauge(
            "streamfan_worker_redis_up",
            "1 while this worker's Redis answers (0 during an outage it is riding out)",
            registry=metrics.registry,
        ).set_function(lambda: float(queue_outage.up and events_outage.up))
        sweeper = Sweeper(queue_redis, events_redis, s, queue_outage, events_outage)
        services: list[Any] = [
            asyncio.create_task(sweeper.run(), name="streamfan-orphan-sweep"),
        ]
        services.append(ctx[ADMISSION_KEY])
        ctx[_SERVICES_KEY] = services
        if s.worker_metrics_port:

            async def ready() -> str | None:
                for name, r in (("queue", queue_redis), ("events", events_redis)):
                    if not await ping_within(r.ping, READY_TIMEOUT_S):
                        return f"the {name} Redis is unreachable"
                return None

            health = HealthServer(metrics.registry, ready)
            port = await health.start(s.host, s.worker_metrics_port)
            services.append(health)
            log.info("worker probes and metrics on http://%s:%d/", s.host, port)
        if not s.upstream_api_key:
            log.warning("no upstream API key (STREAMFAN_UPSTREAM_API_KEY / OPENAI_API_KEY)")
        log.info("worker ready: upstream %s, max_jobs %d", s.upstream_base_url, s.worker_max_jobs)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        for service in ctx.pop(_SERVICES_KEY, []):
            if isinstance(service, asyncio.Task):
                await stop_task(service)
            else:
                await service.stop()
        state: WorkerState | None = ctx.get(STATE_KEY)
        if state is None:
            return
        await state.control.stop()
        await state.publisher.aclose()
        await state.upstream.aclose()
        await state.events_redis.aclose()
        control_redis = ctx.get(CONTROL_REDIS_KEY)
        if control_redis is not None and control_redis is not state.events_redis:
            await control_redis.aclose()

    return {
        "functions": [
            func(
                chat_stream,
                name=JOB_FUNCTION,
                max_tries=ARQ_MAX_TRIES,
                timeout=s.job_timeout_s + ARQ_TIMEOUT_MARGIN_S,
                # The stream holds the result; an arq result would copy the request.
                keep_result=0,
            )
        ],
        "redis_settings": RedisSettings.from_dsn(s.redis_url),
        "redis_pool": queue_pool(s),
        "queue_name": s.queue_name,
        "max_jobs": s.worker_max_jobs,
        "poll_delay": s.worker_poll_delay_s,
        "job_serializer": job_serializer,
        "job_deserializer": job_deserializer,
        "health_check_interval": s.health_check_interval_s,
        "keep_result": 0,
        "max_tries": ARQ_MAX_TRIES,
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "allow_abort_jobs": False,
    }


class StreamfanWorker(Worker):
    """arq's Worker, woken by nudges, and riding out Redis outages.

    Nudges: arq only polls its queue. Polling often enough for a small
    enqueue-to-start delay is costly (measured: an idle worker spends 12 % of a
    core polling every 5 ms, 1.4 % every 50 ms), so ``streamfan worker`` polls
    every ``STREAMFAN_WORKER_POLL_DELAY_S`` and also at once when a client nudges it.

    Outages: arq lets a failed round trip of its poll, heartbeat or job
    bookkeeping escape its main loop, which ends the process and cancels every
    running stream. Here the poll backs off (:mod:`worker.outage`) and tries
    again; a job whose bookkeeping failed has its in-progress key dropped once
    Redis answers, so it runs again instead of waiting out arq's job timeout;
    after an outage, jobs are picked only once running attempts had a moment to
    renew their leases (see :data:`worker.outage.BACKOFF_MAX_S`).

    ``arq worker.WorkerSettings`` runs plain arq: correct, only without either.
    """

    def __init__(self, *args: Any, poll_delay: float = 0.25, **kwargs: Any) -> None:
        # arq's loop sleeps poll_delay between iterations; we do the waiting here
        # instead, on the nudge or the poll interval, whichever comes first.
        super().__init__(*args, poll_delay=0, **kwargs)
        self.fallback_poll_s = poll_delay
        #: Set once started up and polling (tests and embedders wait on it).
        self.ready = asyncio.Event()
        self._starter: JobStarter | None = None
        #: Jobs declined and not started since (each is logged and counted once).
        self._declined: set[str] = set()
        #: Until startup made the state's: the queue's Redis as seen by the poll.
        self._outage = Outage("queue Redis")
        self._poll_failures = 0
        #: Jobs whose arq bookkeeping failed: their in-progress keys are dropped
        #: when Redis answers again.
        self._stranded: set[str] = set()

    @property
    def queue_outage(self) -> Outage:
        state: WorkerState | None = self.ctx.get(STATE_KEY)
        return state.queue_outage if state is not None else self._outage

    async def main(self) -> None:
        # A worker started during an outage waits for Redis instead of exiting.
        failures = 0
        while not await ping_within(self.pool.ping, self.queue_timeout_s):
            failures += 1
            self.queue_outage.failed("start-up", ConnectionError("no answer to PING"))
            await self.queue_outage.pause(failures)
        self.queue_outage.ok()
        await super().main()

    @property
    def queue_timeout_s(self) -> float:
        timeout = self.pool.connection_pool.connection_kwargs.get("socket_timeout")
        return float(timeout) if timeout else READY_TIMEOUT_S

    async def _poll_iteration(self) -> None:
        state: WorkerState | None = self.ctx.get(STATE_KEY)
        self.ready.set()
        if state is not None and not self.burst and not self._poll_failures:
            work = state.control.work_available
            if not work.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(work.wait(), self.fallback_poll_s)
            work.clear()
        try:
            if self._poll_failures:
                await self._recover()
            if self._stranded:
                await self._release_stranded()
            nudged = state.control.take_nudged() if state is not None else []
            nudged = [j for j in nudged if j.decode("utf-8", "replace") not in self.tasks]
            if 0 < len(nudged) <= NUDGED_START_LIMIT and not self.burst:
                # The jobs just submitted, before the poll finds them (a round trip
                # less); every worker nudged tries, START_JOB lets one have each.
                # After a burst of submits the poll below finds them all at once:
                # one START_JOB per stale nudge, in turn, held the next job 3-18 s.
                await self.start_jobs(nudged)
            await super()._poll_iteration()
        except FAILURES as exc:
            self._poll_failures += 1
            self.queue_outage.failed("queue poll", exc)
            await self.queue_outage.pause(self._poll_failures)

    async def _recover(self) -> None:
        """Redis answered again: clean up, then leave running attempts a moment to
        renew their leases (theirs lapsed if the outage was longer) before picking
        jobs, or this poll would start them a second time."""
        await self.pool.ping()
        self.queue_outage.ok()
        self._poll_failures = 0
        await asyncio.sleep(BACKOFF_MAX_S)

    async def _release_stranded(self) -> None:
        stranded, self._stranded = self._stranded, set()
        try:
            async with self.pool.pipeline(transaction=False) as pipe:
                for job_id in stranded:
                    pipe.pexpire(ARQ_IN_PROGRESS_PREFIX + job_id, 1)
                await pipe.execute()
        except BaseException:
            self._stranded |= stranded
            raise

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's ``start_jobs`` with its start check and our hold in one round trip.

        arq checks and marks each job with WATCH, EXISTS, ZSCORE and MULTI/EXEC,
        four sequential round trips; :data:`worker.arqhold.START_JOB` does the same
        and takes the job's hold (so the attempt does not) in one. It also
        declines a job while :class:`~worker.admission.Admission` says this worker
        has no room and another worker claims some, until the job has waited
        ``MAX_WAIT_S``. The bookkeeping (semaphore, ``job_counter``, ``tasks``) is
        arq's own, as in its method.
        """
        state: WorkerState | None = self.ctx.get(STATE_KEY)
        admission: Admission | None = self.ctx.get(ADMISSION_KEY)
        if state is None or admission is None:
            await super().start_jobs(job_ids)
            return
        if self._starter is None:
            self._starter = JobStarter(
                self.pool,
                self.queue_name,
                state.publisher.lease_ms,
                track=state.settings.keys.open_streams,
            )
        busy = admission.busy()
        due_before = None
        if busy and job_ids and await admission.others_have_room():
            due_before = int((time.time() - MAX_WAIT_S) * 1000)
        for job_id_b in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            try:
                outcome, score = await self._starter.start(job_id, due_before)
            except BaseException:
                # Counted as started before its check, as arq does: give the slot
                # back (a dead connection here would leak it).
                self.job_counter -= 1
                self.sem.release()
                raise
            if outcome != "start":
                self.job_counter -= 1
                self.sem.release()
                if outcome == "declined" and job_id not in self._declined:
                    if len(self._declined) > 10_000:  # bounded: ids of long-gone jobs
                        self._declined.clear()
                    self._declined.add(job_id)
                    state.metrics.jobs_declined.inc()
                    log.info("declining job %s for another worker: %s", job_id, busy)
                continue
            self._declined.discard(job_id)
            state.held.add(job_id)
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await super().run_job(job_id, score)
        except FAILURES as exc:
            # arq's bookkeeping before or after the call failed: the job is still
            # in the queue (and the stream knows how far it got), but arq's
            # in-progress key would keep it from running for arq's whole timeout.
            self.queue_outage.failed(f"job {job_id}", exc)
            self._stranded.add(job_id)

    async def close(self) -> None:
        try:
            await super().close()
        except FAILURES as exc:
            # arq's close deletes its health key first; with Redis away that
            # fails, and arq would skip closing everything else.
            log.warning("closing with Redis unreachable (%s): %s", type(exc).__name__, exc)
            if self.on_shutdown is not None:
                await self.on_shutdown(self.ctx)
            if self._pool is not None:
                await self._pool.aclose(close_connection_pool=True)
                self._pool = None
