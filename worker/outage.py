"""Riding out a Redis outage: one bounded, jittered backoff, logged once per outage.

Every loop of the worker that talks to Redis — arq's queue poll and heartbeat,
the lease keeper, the control listener, the appends and the orphan sweep —
retries a failed round trip after :meth:`Outage.pause` instead of raising. All
loops on one Redis share one :class:`Outage`, so:

- the first failure logs one WARNING and the first success after it one
  WARNING with the outage's length; the tries in between log nothing;
- the delay doubles from :data:`BACKOFF_MIN_S` up to :data:`BACKOFF_MAX_S`, each
  drawn from its upper half (jitter: a fleet of workers does not reconnect in
  lockstep); the cap is what bounds how late a loop notices that Redis is back;
- as soon as any loop gets an answer, every loop still waiting tries again at
  once, so streaming resumes one round trip after the first success.

What counts as a failure is :data:`streamfan.redis_edge.FAILURES` (redis-py's
errors and ``OSError``, which ``RedisUnavailable`` is): a Redis that refuses
(READONLY during a failover, LOADING after a restart) is waited out like one
that is unreachable. A hung Redis (SIGSTOP, a dead NAT flow) counts as down too: every worker
connection has a socket timeout (``STREAMFAN_REDIS_TIMEOUT_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

log = logging.getLogger(__name__)

#: First and longest wait between tries while Redis is down, seconds.
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0


def backoff_s(failures: int) -> float:
    """The wait after ``failures`` consecutive failures (1, 2, ...): doubling, capped, jittered."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2.0 ** min(max(failures - 1, 0), 30))
    return random.uniform(ceiling / 2, ceiling)


class Outage:
    """One Redis as this process sees it: up, or down since when."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.down_since: float | None = None
        #: How many outages this process has seen (metrics, tests).
        self.count = 0
        self._back = asyncio.Event()
        self._back.set()

    @property
    def up(self) -> bool:
        return self.down_since is None

    def failed(self, where: str, exc: BaseException) -> None:
        """A round trip failed; logs only if this starts an outage."""
        if self.down_since is not None:
            return
        self.down_since = time.monotonic()
        self.count += 1
        self._back.clear()
        log.warning(
            "%s unreachable (%s: %s: %s); retrying every %g s at most until it answers",
            self.name,
            where,
            type(exc).__name__,
            exc,
            BACKOFF_MAX_S,
        )

    def ok(self) -> None:
        """A round trip succeeded; ends the outage (and wakes every waiting loop)."""
        if self.down_since is None:
            return
        lasted = time.monotonic() - self.down_since
        self.down_since = None
        self._back.set()
        log.warning("%s reachable again after %.1f s", self.name, lasted)

    async def pause(self, failures: int) -> None:
        """Wait before the next try: :func:`backoff_s`, or less if Redis came back meanwhile."""
        delay = backoff_s(failures)
        if self._back.is_set():
            # Another loop succeeded since this one failed: try again soon, but
            # not at once (a loop that fails while others succeed must not spin).
            await asyncio.sleep(min(delay, BACKOFF_MIN_S))
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._back.wait(), delay)


#: How long :func:`stop_task` waits for a cancelled task before cancelling it again.
RECANCEL_S = 0.1


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling again if need be.

    redis-py reads inside ``asyncio.timeout``, which on Python 3.11 can lose a
    cancel that lands just as its deadline passes: the read returns None as if it
    had timed out, and a loop around it runs on, holding the worker's shutdown
    forever (seen: one stop in six of a freshly started worker).
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_S)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as lost
