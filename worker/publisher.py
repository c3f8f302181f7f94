"""The worker's writes to Redis: claim an attempt, append events, keep the lease.

One :class:`Publisher` per worker process (it holds the registered scripts and
the :class:`~worker.batcher.AppendBatcher`); one :class:`AttemptWriter` per
attempt of a stream. Every append writes all the events it is given, updates
meta and publishes one wake-up in one script call; the appends of all streams
that are ready at the same moment share one round trip (``worker/batcher.py``),
while a terminal write goes alone. Appends are idempotent: each carries the attempt
number and the sequence number of its first event, so a call retried after a
lost reply adds nothing twice, and a call from an attempt that has since been
superseded (this worker lost its lease) is refused with :class:`LeaseLost`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from streamfan import codes, events, scripts
from streamfan.cluster import EventsRedis, register
from streamfan.errors import ConfigError, RedisRefused, RedisUnavailable, StreamfanError
from streamfan.events import Event
from streamfan.keys import Keys, Meta
from streamfan.redis_edge import redis_errors
from streamfan.scripts import Reply
from streamfan.settings import DURABLE_OFF, Settings
from streamfan.store import now_ms, stream_keys
from worker.batcher import AppendBatcher, record
from worker.begin_start import BEGIN_START
from worker.durability import DurabilityBarrier, Outcome
from worker.outage import Outage

log = logging.getLogger(__name__)


class PublishError(StreamfanError):
    """A write was refused; the attempt must stop without writing anything else."""


class LeaseLost(PublishError):
    """A newer attempt owns the stream (or it is gone): this one must stop quietly."""


class StreamFinished(PublishError):
    """The stream already ended (e.g. cancelled while queued)."""

    def __init__(self, status: str) -> None:
        super().__init__(f"stream already {status}")
        self.status = status


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of :meth:`Publisher.begin`."""

    outcome: str  # Reply.RUN | FINISHED | BUSY | CANCELLED | EXHAUSTED
    attempt: int = 0
    had_events: bool = False
    status: str = ""
    busy_ms: int = 0
    #: With ``created``: events already written by the claim (``reset``, ``start``).
    seq: int = 0


def _before_attempt(event: Event) -> bytes:
    """``event`` encoded up to its ``attempt`` value (its last field), for BEGIN_START."""
    encoded = events.encode_event(event)
    assert encoded.endswith(b'"attempt":0}'), encoded
    return encoded[:-2]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Publisher:
    def __init__(
        self,
        r: EventsRedis,
        settings: Settings,
        *,
        on_round_trip: Callable[[int], None] | None = None,
        outage: Outage | None = None,
    ) -> None:
        """``on_round_trip(n)`` is called for each batched append round trip of n streams.

        ``outage`` is the events Redis as this process sees it: writes wait out
        an outage on it (see :meth:`AttemptWriter.write`).
        """
        self.r = r
        self.outage = outage or Outage("events Redis")
        self.settings = settings
        self.keys: Keys = settings.keys
        self._begin = register(r, scripts.BEGIN)
        self._begin_start = register(r, BEGIN_START)
        self._append = register(r, scripts.APPEND)
        self._renew = register(r, scripts.RENEW)
        self.batcher = AppendBatcher(r, settings.maxlen, on_round_trip=on_round_trip)
        self.on_round_trip = on_round_trip
        self.durability: DurabilityBarrier | None = None
        if settings.durable_finish != DURABLE_OFF:
            if not isinstance(r, aioredis.Redis):
                # The barrier WAITAOFs on one connection: one node's writes only.
                raise ConfigError(
                    "STREAMFAN_DURABLE_FINISH",
                    "not supported with the event keys on a Redis Cluster",
                )
            self.durability = DurabilityBarrier(r, settings)

    async def aclose(self) -> None:
        """Stop the batcher (the Redis client is the caller's to close)."""
        await self.batcher.aclose()

    @property
    def lease_ms(self) -> int:
        return int(self.settings.lease_s * 1000)

    @property
    def retention_ms(self) -> int:
        return int(self.settings.retention_s * 1000)

    async def begin(
        self, stream_id: str, token: str, model: str, *, created: int | None = None
    ) -> Claim:
        """Claim the next attempt; with ``created`` also write its ``start`` (one round trip)."""
        s = self.settings
        exhausted = events.error(
            codes.ATTEMPTS_EXHAUSTED.code,
            f"gave up after {s.max_attempts} attempts",
            retryable=codes.ATTEMPTS_EXHAUSTED.retryable,
        )
        first: list[bytes] = []
        if created is not None:
            first = [
                _before_attempt(events.start(stream_id, model, created, 0)),
                _before_attempt(events.reset(0)),
            ]
        script = self._begin if created is None else self._begin_start
        async with redis_errors():
            res = await script(
                stream_keys(self.keys, stream_id),
                [
                    token,
                    self.lease_ms,
                    now_ms(),
                    model,
                    int((s.job_timeout_s + s.retention_s) * 1000),
                    s.max_attempts,
                    events.encode_event(exhausted),
                    events.encode_event(events.cancelled("cancelled before start")),
                    self.retention_ms,
                    s.maxlen,
                    *first,
                ],
            )
        outcome = _s(res[0])
        if outcome == Reply.RUN:
            attempt, had = int(res[1]), bool(int(res[2]))
            if len(res) > 3:
                return Claim(outcome, attempt, had, seq=int(res[3]))
            return Claim(outcome, attempt=attempt, had_events=had)
        if outcome == Reply.FINISHED:
            return Claim(outcome, status=_s(res[1]))
        if outcome == Reply.BUSY:
            return Claim(outcome, busy_ms=max(int(res[1]), 0))
        if outcome == Reply.EXHAUSTED:
            return Claim(outcome, attempt=int(res[1]))
        return Claim(outcome)

    async def renew(
        self,
        stream_id: str,
        token: str,
        *,
        lease_ms: int | None = None,
        attempt: int | None = None,
    ) -> tuple[bool, str]:
        """Extend the lease. Returns (still held, pending cancel reason or '').

        With ``attempt``, a lease that lapsed (Redis was away longer than it) is
        taken back if that attempt still owns the stream.
        """
        args: list[Any] = [token, lease_ms or self.lease_ms]
        if attempt is not None:
            args.append(attempt)
        async with redis_errors():
            held, cancel = await self._renew(stream_keys(self.keys, stream_id), args)
        return bool(int(held)), _s(cancel)

    def writer(self, stream_id: str, attempt: int, seq: int = 0) -> AttemptWriter:
        w = AttemptWriter(self, stream_id, attempt)
        w.seq = seq
        return w


class AttemptWriter:
    """Appends the events of one attempt, in order, each batch one round trip."""

    def __init__(self, publisher: Publisher, stream_id: str, attempt: int) -> None:
        self.publisher = publisher
        self.stream_id = stream_id
        self.attempt = attempt
        self._keys = stream_keys(publisher.keys, stream_id)
        self._key_base = publisher.keys.base(stream_id)
        self.seq = 0
        #: A cancel reason reported by the last write ('' if none).
        self.cancel_requested = ""
        self.last_ids: list[str] = []
        #: True after a write was cancelled mid-call: whether its script ran is
        #: unknown, so the next write appends after whatever is there.
        self._unsure = False

    async def write(
        self,
        batch: list[Event],
        *,
        final_status: str = "",
        meta: dict[str, str] | None = None,
        alone: bool = False,
    ) -> list[str]:
        """Append ``batch``; with ``final_status`` the stream ends and gets its TTL.

        ``alone``: in a round trip of its own, not the next shared one (which waits
        for the one in flight): for a stream's first token, which its reader is
        waiting for; once per stream, so it costs the others nothing.
        """
        if not batch and not final_status and not meta:
            return []
        # After an interrupted write the position is unknown: let the script
        # append after whatever is there rather than skip what may be new.
        seq: int | str = "" if self._unsure else self.seq
        outage = self.publisher.outage
        failures = 0
        while True:
            try:
                async with redis_errors():
                    res = await self._send(batch, seq, final_status, meta, alone)
                break
            except RedisRefused:
                # Redis refused the whole call (READONLY after a failover, BUSY, a
                # script error): a later attempt may succeed, so the job retries.
                raise
            except RedisUnavailable as exc:
                # The script may or may not have run: retrying with the same seq
                # is safe, the script skips what it already wrote. So the write
                # waits out an outage of any length (the upstream connection
                # stays open meanwhile; the job's deadline still bounds it). One
                # not translated from redis-py (a closed batcher) cannot get better.
                if exc.__cause__ is None:
                    raise
                outage.failed(f"stream {self.stream_id}: append", exc)
                failures += 1
                await outage.pause(failures)
            except asyncio.CancelledError:
                # Cancelled mid-call: whether the script ran is unknown, and the
                # next write will be a different batch (the terminal event), which
                # must not be skipped as if it were this one.
                self._unsure = True
                raise
        outage.ok()
        outcome = _s(res[0])
        self._unsure = False
        if outcome == Reply.OK:
            self.cancel_requested = _s(res[1])
            self.seq = int(res[2])
            ids = [_s(i) for i in res[3:]]
            self.last_ids = ids
            return ids
        if outcome == Reply.ERR:
            # Redis refused this stream's commands (OOM, a wrong key type...);
            # the other streams of the batch were not disturbed.
            raise RedisUnavailable(
                f"stream {self.stream_id}: Redis refused the append: {_s(res[1])}"
            )
        if outcome == Reply.FINISHED:
            raise StreamFinished(_s(res[1]))
        if outcome in (Reply.STALE, Reply.GONE):
            raise LeaseLost(f"stream {self.stream_id}: attempt {self.attempt} superseded")
        raise PublishError(f"stream {self.stream_id}: write refused ({outcome})")

    async def _send(
        self,
        batch: list[Event],
        seq: int | str,
        final_status: str,
        meta: dict[str, str] | None,
        alone: bool = False,
    ) -> Any:
        pub = self.publisher
        if not final_status and not meta:
            if not alone:
                # The hot path: shares its round trip with every other stream's.
                encoded = [events.encode_event(e) for e in batch]
                return await pub.batcher.append(record(self._key_base, self.attempt, seq, encoded))
            if pub.on_round_trip is not None:  # an append of its own is one too
                pub.on_round_trip(1)
        pairs: list[str] = []
        for field, value in (meta or {}).items():
            pairs += [field, value]
        args: list[Any] = [
            self.attempt,
            seq,
            pub.settings.maxlen,
            now_ms(),
            final_status,
            pub.retention_ms,
            len(pairs) // 2,
            *pairs,
            *(events.encode_event(e) for e in batch),
        ]
        return await pub._append(self._keys, args)

    async def finish(self, terminal: Event) -> list[str]:
        """Write the terminal event and the meta fields that go with it."""
        etype = terminal["type"]
        meta: dict[str, str] = {}
        if etype == events.DONE:
            if terminal.get("usage") is not None:
                meta[Meta.USAGE] = orjson.dumps(terminal["usage"]).decode()
            if terminal.get("finish_reason") is not None:
                meta[Meta.FINISH_REASON] = str(terminal["finish_reason"])
        elif etype == events.ERROR:
            meta[Meta.ERROR] = events.encode_event(terminal).decode()
        status = events.TERMINAL_STATUS[etype]
        if self.publisher.durability is not None:
            await self._make_end_durable(terminal, status, meta)
        return await self.write([terminal], final_status=status, meta=meta)

    async def _make_end_durable(self, terminal: Event, status: str, meta: dict[str, str]) -> None:
        """Write the end into meta and wait until it (and every delta) is on disk.

        Only then may readers be told (worker/durability.py). An interrupted wait
        writes the marker again: a Redis that came back may have lost it.
        """
        assert self.publisher.durability is not None
        marker = {
            **meta,
            Meta.FINISHING: events.encode_event(terminal).decode(),
            Meta.FINISHING_STATUS: status,
        }
        deadline = time.monotonic() + self.publisher.settings.durable_finish_timeout_s
        while True:
            await self.write([], meta=marker)
            outcome = await self.publisher.durability.wait()
            if outcome is not Outcome.INTERRUPTED or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)  # waits-on-time-ok: Redis just went away; not a spin
        if outcome is not Outcome.DURABLE:
            log.warning("stream %s: finishing without a durable end (%s)", self.stream_id,
                        outcome.value)  # fmt: skip
