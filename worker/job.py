"""``chat_stream``: one attempt of one stream, from claim to terminal event.

The arq job id is the stream id. Each call of the function is one attempt:

1. claim the attempt in Redis (``begin``): a fresh lease, attempt + 1, and
   whether earlier attempts published events (then this one starts with ``reset``);
2. write ``start``, call the upstream, and append the events of each network read
   in one round trip;
3. end with ``done``, or ``error`` when the failure is final, or raise arq's
   ``Retry`` when another attempt may succeed (``Retry-After`` honoured);
4. meanwhile keep the lease (and arq's in-progress key) alive, so a killed
   worker's job is picked up by another within ``lease_s`` instead of arq's
   ``job_timeout``; stop within a moment when cancelled.

arq's own limits never end a stream silently: arq's ``max_tries`` is set far
above ``STREAMFAN_MAX_ATTEMPTS`` and its timeout above ours, so this function
always runs to write the terminal event itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from arq import Retry

from streamfan import codes, events
from streamfan.cluster import EventsRedis
from streamfan.errors import (
    InvalidRequest,
    RedisUnavailable,
    UpstreamError,
    UpstreamStalled,
)
from streamfan.events import Event
from streamfan.keys import is_valid_stream_id
from streamfan.requests import streaming_body, validate_chat_request
from streamfan.scripts import Reply
from streamfan.serialization import job_arguments
from streamfan.settings import Settings
from worker.arqhold import ArqHold
from worker.control import ControlChannel
from worker.metrics import WorkerMetrics
from worker.outage import Outage, stop_task
from worker.publisher import (
    AttemptWriter,
    Claim,
    LeaseLost,
    Publisher,
    PublishError,
    StreamFinished,
)
from worker.sse import SSEDecoder
from worker.translate import Translator
from worker.upstream import Upstream

log = logging.getLogger(__name__)

#: The key of :class:`WorkerState` in arq's ``ctx``.
STATE_KEY = "streamfan"
#: Delay before retrying after Redis itself failed mid-attempt.
REDIS_RETRY_S = 1.0


class _Cancelled(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class WorkerState:
    """What every job of this worker process shares (``ctx[STATE_KEY]``)."""

    settings: Settings
    events_redis: EventsRedis
    queue_redis: aioredis.Redis
    publisher: Publisher
    upstream: Upstream
    control: ControlChannel
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    #: Jobs whose hold ``StreamfanWorker.start_jobs`` already took (worker/arqhold.py).
    held: set[str] = field(default_factory=set)
    worker_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    #: The queue's Redis as this process sees it (the events Redis is the publisher's).
    queue_outage: Outage = field(default_factory=lambda: Outage("queue Redis"))


def backoff_s(settings: Settings, attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with jitter, or the upstream's Retry-After if longer."""
    base = min(settings.retry_max_s, settings.retry_base_s * float(2 ** max(attempt - 1, 0)))
    delay = base * random.uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, max(settings.retry_max_s, 60.0)))
    return delay


def error_event(exc: UpstreamError) -> Event:
    return events.error(
        exc.code, exc.message, retryable=exc.retryable, upstream_status=exc.upstream_status
    )


async def chat_stream(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> str:
    """The arq job function. Returns the stream's status when this attempt stops.

    A job is ``chat_stream(body)``. Anything else — arguments arq would refuse to
    call us with, or a job :func:`~streamfan.serialization.job_deserializer`
    could not decode — ends its stream with ``error`` ``invalid_job`` instead of
    leaving it queued with no terminal event.
    """
    state: WorkerState = ctx[STATE_KEY]
    stream_id = str(ctx["job_id"])
    if not is_valid_stream_id(stream_id):
        log.error("job id %r is not a valid stream id; dropping the job", stream_id)
        return "invalid_id"
    body, problem = job_arguments(args, kwargs)
    score = ctx.get("score")
    attempt = Attempt(state, stream_id, body, score=int(score) if score else None)
    attempt.invalid_job = problem
    return await attempt.run()


class Attempt:
    def __init__(
        self, state: WorkerState, stream_id: str, body: Any, *, score: int | None = None
    ) -> None:
        self.state = state
        self.settings = state.settings
        self.hold = ArqHold(
            state.queue_redis,
            state.settings.queue_name,
            stream_id,
            score,
            state.publisher.lease_ms,
        )
        self.stream_id = stream_id
        self.body = body
        self.model = body.get("model") if isinstance(body, dict) else None
        self.token = f"{state.worker_id}:{uuid.uuid4().hex[:8]}"
        self.writer: AttemptWriter | None = None
        self.held_at_start = stream_id in state.held
        state.held.discard(stream_id)
        self.attempt = 0
        #: Why this job cannot run at all (see :func:`chat_stream`), if it cannot.
        self.invalid_job: str | None = None

    async def run(self) -> str:
        sid = self.stream_id
        pub = self.state.publisher
        try:
            # The claim writes ``start`` too, except for a job that ends with an error.
            created = None if self.invalid_job is not None else int(time.time())
            claim = await pub.begin(sid, self.token, str(self.model or ""), created=created)
        except RedisUnavailable as exc:
            log.warning("stream %s: cannot claim (%s); retrying", sid, exc)
            await self._unhold()
            raise Retry(defer=REDIS_RETRY_S) from exc
        if claim.outcome == Reply.BUSY:
            # Another worker's lease is still live (it may be dying): look again then.
            await self._unhold()
            raise Retry(defer=claim.busy_ms / 1000 + 0.05)
        if claim.outcome != Reply.RUN:
            log.info("stream %s: not run (%s)", sid, claim.outcome)
            return claim.status or claim.outcome
        self.writer = pub.writer(sid, claim.attempt, claim.seq)
        self.attempt = claim.attempt
        if self.invalid_job is not None:
            log.error("stream %s: invalid job: %s", sid, self.invalid_job)
            return await self._finish(
                events.error(
                    codes.INVALID_JOB.code, self.invalid_job, retryable=codes.INVALID_JOB.retryable
                )
            )
        log.info("stream %s: attempt %d started", sid, claim.attempt)
        # Out of arq's polls, and under our lease instead of arq's job timeout
        # (see worker/arqhold.py); and in the open-streams index, for a job
        # enqueued without the client API (see worker/sweep.py). StreamfanWorker
        # did both as it started the job (START_JOB).
        if not self.held_at_start:
            try:
                await self.hold.renew(track=self.settings.keys.open_streams)
            except Exception as exc:  # the lease loop retries this every lease_s / 3
                log.warning("stream %s: cannot hold the arq job: %s", sid, exc)
        metrics = self.state.metrics
        metrics.streams_running.inc()
        outcome = "retry"
        try:
            outcome = await self._supervise(claim)
            return outcome
        except RedisUnavailable as exc:
            # The terminal write itself failed: a later attempt writes one.
            log.warning("stream %s: cannot end the attempt (%s); retrying", sid, exc)
            raise Retry(defer=REDIS_RETRY_S) from exc
        except asyncio.CancelledError:
            # The worker is shutting down: hand the stream over at once instead of
            # letting the lease run out, and let arq queue the job again.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release())
            raise
        finally:
            metrics.streams_running.dec()
            metrics.attempts.labels(outcome).inc()

    async def _supervise(self, claim: Claim) -> str:
        """Run the attempt; stop it on cancel, lost lease or deadline."""
        assert self.writer is not None
        cancel_event = self.state.control.watch(self.stream_id)
        stream_task = asyncio.create_task(self._stream(claim))
        keeper = asyncio.create_task(self._keep_lease())
        cancel_wait = asyncio.create_task(cancel_event.wait())
        try:
            done, _ = await asyncio.wait(
                {stream_task, keeper, cancel_wait},
                timeout=self.settings.job_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if stream_task in done:
                return await self._settle(stream_task, claim)
            stream_task.cancel()
            with contextlib.suppress(BaseException):
                await stream_task
            if keeper in done:
                return await self._settle(keeper, claim)
            if cancel_wait in done:
                held, reason = await self.state.publisher.renew(self.stream_id, self.token)
                if not held:
                    return "superseded"
                return await self._finish(events.cancelled(reason or "cancelled"))
            log.warning("stream %s: over job_timeout_s, ending it", self.stream_id)
            return await self._finish(
                events.error(
                    codes.TIMEOUT.code,
                    f"the reply took longer than {self.settings.job_timeout_s:g} s",
                    retryable=codes.TIMEOUT.retryable,
                )
            )
        finally:
            self.state.control.unwatch(self.stream_id)
            # Until each has ended: a cancel that lands on a Redis read's deadline
            # can be lost (worker.outage.stop_task).
            await asyncio.gather(*(stop_task(t) for t in (stream_task, keeper, cancel_wait)))

    async def _settle(self, task: asyncio.Task[Event], claim: Claim) -> str:
        """Turn how a task ended into the stream's next step."""
        sid = self.stream_id
        try:
            terminal = task.result()
        except _Cancelled as exc:
            return await self._finish(events.cancelled(exc.reason))
        except (LeaseLost, StreamFinished) as exc:
            log.info("stream %s: attempt %d stops: %s", sid, claim.attempt, exc)
            return "superseded"
        except InvalidRequest as exc:
            return await self._finish(
                events.error(
                    codes.INVALID_REQUEST.code, str(exc), retryable=codes.INVALID_REQUEST.retryable
                )
            )
        except UpstreamError as exc:
            self.state.metrics.upstream_errors.labels(exc.code).inc()
            if exc.retryable and claim.attempt < self.settings.max_attempts:
                delay = backoff_s(self.settings, claim.attempt, exc.retry_after)
                log.warning(
                    "stream %s: attempt %d failed (%s: %s); retrying in %.2fs",
                    sid,
                    claim.attempt,
                    exc.code,
                    exc.message,
                    delay,
                )
                with contextlib.suppress(RedisUnavailable):  # then the lease just runs out
                    await self.state.publisher.renew(sid, self.token, lease_ms=1)
                    await self.hold.before_retry()
                raise Retry(defer=delay) from exc
            log.warning("stream %s: failed for good (%s: %s)", sid, exc.code, exc.message)
            return await self._finish(error_event(exc))
        except (RedisUnavailable, PublishError) as exc:
            # PublishError here: a write refused for a reason no retry of the same
            # attempt fixes (a gap after Redis lost writes): a new attempt starts
            # the stream over with ``reset``.
            log.warning("stream %s: Redis failed mid-attempt (%s); retrying", sid, exc)
            raise Retry(defer=REDIS_RETRY_S) from exc
        except Exception as exc:
            # Whatever it was, the stream must not stay "running" with no terminal
            # event: another attempt runs, and after max_attempts BEGIN ends the
            # stream with attempts_exhausted.
            log.exception("stream %s: attempt %d failed unexpectedly; retrying", sid, claim.attempt)
            raise Retry(defer=REDIS_RETRY_S) from exc
        return await self._finish(terminal)

    async def _finish(self, terminal: Event) -> str:
        assert self.writer is not None
        try:
            await self.writer.finish(terminal)
        except (LeaseLost, StreamFinished) as exc:
            log.info("stream %s: terminal event not written: %s", self.stream_id, exc)
            return "superseded"
        status = events.TERMINAL_STATUS[terminal["type"]]
        log.info("stream %s: %s", self.stream_id, status)
        return status

    async def _unhold(self) -> None:
        """Before a Retry of a job held at start: arq schedules it from its original score."""
        if self.held_at_start:
            with contextlib.suppress(RedisUnavailable):
                await self.hold.before_retry()

    async def _release(self) -> None:
        """Give up the lease now (it expires in 1 ms) so the next attempt need not wait."""
        await self.state.publisher.renew(self.stream_id, self.token, lease_ms=1)
        await self.hold.release()

    async def _keep_lease(self) -> Event:
        """Renew the lease and arq's in-progress key; return/raise when the attempt must stop.

        Through a Redis outage it keeps trying (backing off with the writes), and
        renews at once when Redis is back, taking back a lease that lapsed
        meanwhile if no other attempt began.
        """
        pub = self.state.publisher
        interval = self.settings.lease_s / 3
        failures = 0
        while True:
            if failures:
                await pub.outage.pause(failures)
            else:
                await asyncio.sleep(interval)
            try:
                held, reason = await pub.renew(self.stream_id, self.token, attempt=self.attempt)
            except RedisUnavailable as exc:
                pub.outage.failed(f"stream {self.stream_id}: lease", exc)
                failures += 1
                continue
            pub.outage.ok()
            failures = 0
            if not held:
                raise LeaseLost(f"stream {self.stream_id}: lease lost")
            if reason:
                raise _Cancelled(reason)
            try:
                await self.hold.renew()
            except RedisUnavailable as exc:
                # The job stays held by its score until the next renewal.
                self.state.queue_outage.failed(f"stream {self.stream_id}: arq hold", exc)
            else:
                self.state.queue_outage.ok()

    async def _stream(self, claim: Claim) -> Event:
        """Call the upstream and write its events; return the terminal event."""
        assert self.writer is not None
        writer = self.writer
        # ``reset`` and ``start`` are written: begin() did, in the claim's round trip.
        body = validate_chat_request(self.body)
        decoder = SSEDecoder()
        translator = Translator(secrets=self.settings.secrets)
        idle_limit = self.settings.upstream_idle_timeout_s
        metrics = self.state.metrics
        asked = last_content = time.monotonic()
        awaiting_first = True
        async with self.state.upstream.stream(streaming_body(body)) as reads:
            async for data in reads:
                metrics.upstream_reads.inc()
                batch: list[Event] = []
                try:
                    for sse in decoder.decode(data):
                        batch.extend(translator.feed(sse))
                finally:
                    # What came before a failing chunk is still the reply: keep it.
                    if batch:
                        last_content = time.monotonic()
                        first_content = awaiting_first
                        if awaiting_first:
                            metrics.first_token.observe(last_content - asked)
                            awaiting_first = False
                        await writer.write(batch, alone=first_content)
                        metrics.writes.inc()
                        metrics.events_written.inc(len(batch))
                if writer.cancel_requested:
                    raise _Cancelled(writer.cancel_requested)
                if translator.finished:
                    break
                if not batch and time.monotonic() - last_content > idle_limit:
                    raise UpstreamStalled(f"upstream sent no content for {idle_limit:g} s")
            else:
                tail: list[Event] = []
                for sse in decoder.flush():
                    tail.extend(translator.feed(sse))
                if tail:
                    await writer.write(tail)
        return translator.end_of_body()
