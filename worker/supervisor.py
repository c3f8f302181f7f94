"""What ``streamfan worker --processes N`` decides, apart from doing it. Pure: no I/O.

:class:`Supervision` is fed what happened (a child started, exited, a restart fell
due, a signal arrived) with the time, and answers with :class:`Action` values for
``worker/processes.py`` to carry out (spawn a child, forward a signal to it,
restart it after a delay). The rules:

- Each of the N *slots* runs one worker process.
- A child that exits while nobody asked it to (a crash, the OOM killer, kill -9,
  or even code 0 outside ``--burst``) is restarted after a backoff:
  ``base_s``, doubling per failure in a row, at most ``max_s``. A child that had
  run for ``healthy_s`` before it failed starts over at ``base_s``.
- When every slot is failing in a row (``give_up_after`` times, none healthy
  since) the supervisor stops the rest and exits 1: a machine where no worker
  stays up is for the orchestrator to see (CrashLoopBackOff), not to hide.
- SIGTERM/SIGINT is forwarded to every running child (each hands its running
  jobs back to the queue, as a lone worker does); restarts still pending are
  dropped; the supervisor is finished when every child has exited.
- With ``--burst`` a child that exits 0 has run the queue dry: it stays stopped.

The exit code: 1 if it gave up or a child's exit once stopping was neither 0 nor
death by the signal passed on to it, else 0.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass

#: First restart delay, doubling per failure in a row.
DEFAULT_BASE_S = 0.5
#: Longest restart delay.
DEFAULT_MAX_S = 30.0
#: A child up this long was healthy: its next failure restarts after ``base_s`` again.
DEFAULT_HEALTHY_S = 60.0
#: Failures in a row of every slot at once after which the supervisor gives up. Ten:
#: a worker that cannot reach Redis at start fails after arq's ~5 s of retries, so
#: ten failures with their backoff take about three minutes — a Redis restart or
#: failover fits in that, a crash loop is still seen within minutes.
DEFAULT_GIVE_UP_AFTER = 10


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = DEFAULT_BASE_S
    max_s: float = DEFAULT_MAX_S
    healthy_s: float = DEFAULT_HEALTHY_S
    give_up_after: int = DEFAULT_GIVE_UP_AFTER

    def delay(self, failures: int) -> float:
        """Seconds before a restart after ``failures`` (>= 1) failures in a row."""
        # Capped exponent: 2 ** 1000 is a float overflow, and max_s wins long before.
        return min(self.max_s, self.base_s * 2.0 ** min(failures - 1, 64))


class SlotState(enum.Enum):
    RUNNING = "running"
    WAITING = "waiting"  # for its restart
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Spawn:
    slot: int


@dataclass(frozen=True, slots=True)
class Forward:
    slot: int
    signum: int


@dataclass(frozen=True, slots=True)
class Restart:
    """Spawn ``slot`` again after ``delay_s`` (then call :meth:`Supervision.due`)."""

    slot: int
    delay_s: float
    failures: int
    code: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Every slot keeps failing (``slot`` last, with ``code``): what follows stops the rest."""

    slot: int
    code: int
    failures: int


Action = Spawn | Forward | Restart | GiveUp


@dataclass(slots=True)
class Slot:
    state: SlotState = SlotState.STOPPED
    started_at: float = 0.0
    #: Failures in a row with no healthy run between them.
    failures: int = 0


class Supervision:
    def __init__(self, processes: int, backoff: Backoff | None = None, *, burst: bool = False):
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.backoff = backoff or Backoff()
        self.burst = burst
        self.slots = [Slot() for _ in range(processes)]
        self.stopping = False
        self.gave_up = False
        #: A child's exit after the stop was not a clean one (see ``_clean_codes``).
        self.unclean = False
        #: 0, and death by a signal we passed on (a child still starting has no
        #: handler yet: SIGTERM kills it, -15; Python's SIGINT default exits 130).
        self._clean_codes = {0}

    def start(self, now: float) -> list[Action]:
        return [self._spawn(i, now) for i in range(len(self.slots))]

    def _spawn(self, i: int, now: float) -> Spawn:
        slot = self.slots[i]
        slot.state, slot.started_at = SlotState.RUNNING, now
        return Spawn(i)

    def exited(self, i: int, code: int, now: float) -> list[Action]:
        """Slot ``i``'s child exited with ``code`` (negative: killed by that signal)."""
        slot = self.slots[i]
        if slot.state is not SlotState.RUNNING:
            return []  # not a child we know of as running: nothing to decide
        if self.stopping or (self.burst and code == 0):
            slot.state = SlotState.STOPPED
            self.unclean = self.unclean or code not in self._clean_codes
            return []
        healthy = now - slot.started_at >= self.backoff.healthy_s
        slot.failures = 1 if healthy else slot.failures + 1
        slot.state = SlotState.WAITING
        if self._all_failing(now):
            self.gave_up = True
            failures = min(s.failures for s in self.slots)
            return [GiveUp(i, code, failures), *self._stop(None)]
        return [Restart(i, self.backoff.delay(slot.failures), slot.failures, code)]

    def _all_failing(self, now: float) -> bool:
        limit = self.backoff.give_up_after
        for slot in self.slots:
            if slot.failures < limit or slot.state is SlotState.STOPPED:
                return False
            if slot.state is SlotState.RUNNING and now - slot.started_at >= self.backoff.healthy_s:
                return False  # up and healthy since its last failure
        return True

    def due(self, i: int, now: float) -> list[Action]:
        """Slot ``i``'s restart delay has passed."""
        if self.slots[i].state is not SlotState.WAITING or self.stopping:
            return []
        return [self._spawn(i, now)]

    def signal(self, signum: int) -> list[Action]:
        """SIGTERM/SIGINT for the supervisor: stop, by passing it on to every child."""
        return self._stop(signum)

    def _stop(self, signum: int | None) -> list[Action]:
        self.stopping = True
        sig = int(signal.SIGTERM) if signum is None else signum
        self._clean_codes |= {-sig, 128 + sig}
        actions: list[Action] = []
        for i, slot in enumerate(self.slots):
            if slot.state is SlotState.WAITING:
                slot.state = SlotState.STOPPED
            elif slot.state is SlotState.RUNNING:
                actions.append(Forward(i, sig))
        return actions

    @property
    def running(self) -> int:
        return sum(s.state is SlotState.RUNNING for s in self.slots)

    @property
    def finished(self) -> bool:
        return all(s.state is SlotState.STOPPED for s in self.slots)

    @property
    def exit_code(self) -> int:
        return 1 if self.gave_up or self.unclean else 0
