"""The arq worker's settings and lifecycle: what ``arq worker.WorkerSettings`` runs.

Shared clients are created in ``on_startup`` and closed in ``on_shutdown`` (arq's
way); everything is configured from one :class:`~streamfan.settings.Settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis
from arq import Worker, func
from arq.connections import RedisSettings

from streamfan import redact
from streamfan.cluster import connect_events
from streamfan.keys import JOB_FUNCTION
from streamfan.serialization import job_deserializer, job_serializer
from streamfan.settings import Settings
from worker.control import ControlChannel
from worker.job import STATE_KEY, WorkerState, chat_stream
from worker.metrics import WorkerMetrics
from worker.publisher import Publisher
from worker.upstream import Upstream

log = logging.getLogger(__name__)

#: arq's try limit, far above ours: when arq's tries run out it never calls the
#: function again, and nothing would write the stream's terminal event.
ARQ_MAX_TRIES = 1_000_000
#: arq's timeout sits above ours so that our own deadline writes the error event.
ARQ_TIMEOUT_MARGIN_S = 60.0
#: ctx key of the control channel's own client (on a cluster, not the events one).
CONTROL_REDIS_KEY = "streamfan_control_redis"


def make_worker_settings(settings: Settings | None = None) -> dict[str, Any]:
    """keyword arguments for ``arq.Worker`` (also the ``WorkerSettings`` mapping)."""
    s = settings or Settings.from_env()

    async def on_startup(ctx: dict[str, Any]) -> None:
        # However the process was started (``streamfan worker``, ``arq``, an
        # application): the upstream's key is masked in whatever its handlers write.
        redact.install(s.secrets)
        events_redis = await connect_events(s.events_url, health_check_interval=10)
        queue_redis = ctx["redis"]
        # Cancel requests and job nudges are plain PUBLISH (rare, and for every
        # worker): a cluster forwards them to every node, so one node will do.
        control_redis = (
            events_redis
            if isinstance(events_redis, aioredis.Redis)
            else aioredis.Redis.from_url(s.events_url, health_check_interval=10)
        )
        ctx[CONTROL_REDIS_KEY] = control_redis
        control = ControlChannel(control_redis, s.keys.cancel_channel, s.keys.jobs_channel)
        control.start()
        metrics = WorkerMetrics()
        round_trips = metrics.append_round_trips
        ctx[STATE_KEY] = WorkerState(
            settings=s,
            events_redis=events_redis,
            queue_redis=queue_redis,
            publisher=Publisher(events_redis, s, on_round_trip=lambda _n: round_trips.inc()),
            upstream=Upstream(s),
            control=control,
            metrics=metrics,
        )
        state: WorkerState = ctx[STATE_KEY]
        if s.worker_metrics_port:
            state.metrics.serve(s.host, s.worker_metrics_port)
            log.info("worker metrics on http://%s:%d/metrics", s.host, s.worker_metrics_port)
        if not s.upstream_api_key:
            log.warning("no upstream API key (STREAMFAN_UPSTREAM_API_KEY / OPENAI_API_KEY)")
        log.info("worker ready: upstream %s, max_jobs %d", s.upstream_base_url, s.worker_max_jobs)

    async def on_shutdown(ctx: dict[str, Any]) -> None:
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
    """arq's Worker, woken by a nudge on ``P:jobs`` instead of waiting for its poll.

    arq only polls its queue. Polling often enough for a small enqueue-to-start
    delay is costly (measured: an idle worker spends 12 % of a core polling every
    5 ms, 1.4 % every 50 ms), so ``streamfan worker`` polls every
    ``STREAMFAN_WORKER_POLL_DELAY_S`` and also at once when a client nudges it.
    ``arq worker.WorkerSettings`` runs plain arq: correct, only without nudges.
    """

    def __init__(self, *args: Any, poll_delay: float = 0.25, **kwargs: Any) -> None:
        # arq's loop sleeps poll_delay between iterations; we do the waiting here
        # instead, on the nudge or the poll interval, whichever comes first.
        super().__init__(*args, poll_delay=0, **kwargs)
        self.fallback_poll_s = poll_delay
        #: Set once started up and polling (tests and embedders wait on it).
        self.ready = asyncio.Event()

    async def _poll_iteration(self) -> None:
        state: WorkerState | None = self.ctx.get(STATE_KEY)
        self.ready.set()
        if state is not None and not self.burst:
            work = state.control.work_available
            if not work.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(work.wait(), self.fallback_poll_s)
            work.clear()
        await super()._poll_iteration()
