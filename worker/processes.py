"""``streamfan worker --processes N``: N worker processes under one command.

The I/O half of the supervisor (the decisions are :mod:`worker.supervisor`'s):
it starts each child as the same command line the user ran with
``--processes 1`` appended (so every flag and interpreter option carries over),
in a process group of its own so a terminal's Ctrl-C reaches the supervisor
alone and is forwarded exactly once (a second signal in the middle of a
handover would cut it short); it waits on the children, forwards SIGTERM/SIGINT,
restarts one that dies and exits when every child has. On Linux each child also
asks the kernel for SIGTERM should the supervisor itself die (``kill -9``), so no
worker outlives it unsupervised.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from worker.supervisor import Action, Backoff, Forward, GiveUp, Restart, Spawn, Supervision

log = logging.getLogger(__name__)

AUTO = "auto"
#: cgroup v2's CPU quota of this process's group (``docker --cpus``, a Kubernetes CPU limit).
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
_PR_SET_PDEATHSIG = 1


def cgroup_cpus(cpu_max: str) -> int | None:
    """Whole CPUs a cgroup v2 ``cpu.max`` (``"QUOTA PERIOD"`` or ``"max PERIOD"``) allows."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def cpu_count() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup quota.

    ``os.process_cpu_count()`` (3.13) is the affinity; a container's CPU limit is a
    quota instead, invisible to both it and ``os.cpu_count()``: one worker per
    core of the host in a 2-CPU container would only contend.
    """
    counter = getattr(os, "process_cpu_count", None)
    if counter is not None:
        cores = counter() or 1
    elif hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0)) or 1
    else:  # pragma: no cover - macOS
        cores = os.cpu_count() or 1
    try:
        quota = cgroup_cpus(CGROUP_CPU_MAX.read_text())
    except OSError:
        quota = None
    return min(cores, quota) if quota else cores


def parse_processes(raw: str) -> int:
    """``auto`` (one per core) or a whole number >= 1; ``ValueError`` otherwise."""
    if raw.strip().lower() == AUTO:
        return cpu_count()
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"expected a number of processes >= 1 or 'auto', got {raw!r}")
    return value


def child_command() -> list[str]:
    """The command line this process was started with, as one worker process."""
    return [sys.executable, *sys.orig_argv[1:], "--processes", "1", "--supervised-by"]


def die_with_parent(parent: int) -> bool:
    """Ask for SIGTERM when ``parent`` dies (Linux); False if it is already gone."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    # The parent may have died before the request: then nobody would ever send it.
    return os.getppid() == parent


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    """Runs a :class:`Supervision`'s actions on real processes until it is finished."""

    def __init__(
        self,
        processes: int,
        command: Sequence[str],
        *,
        burst: bool,
        backoff: Backoff,
        metrics_port: int = 0,
    ) -> None:
        self.supervision = Supervision(processes, backoff, burst=burst)
        self.command = list(command)
        self.metrics_port = metrics_port
        self.children: dict[int, asyncio.subprocess.Process] = {}
        self.events: asyncio.Queue[tuple[str, int, int]] = asyncio.Queue()
        #: slot -> its pending restart (one at most: a slot waits for one restart)
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.waiters: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.events.put_nowait, ("signal", -1, int(sig)))
        try:
            log.info(
                "starting %d worker processes (supervisor pid %d)",
                len(self.supervision.slots),
                os.getpid(),
            )
            await self._carry_out(self.supervision.start(time.monotonic()))
            while not self.supervision.finished:
                kind, slot, value = await self.events.get()
                now = time.monotonic()
                if kind == "exited":
                    self.children.pop(slot, None)
                    actions = self.supervision.exited(slot, value, now)
                elif kind == "due":
                    actions = self.supervision.due(slot, now)
                else:
                    name = signal.Signals(value).name
                    log.info("%s: stopping %d worker processes", name, self.supervision.running)
                    actions = self.supervision.signal(value)
                await self._carry_out(actions)
        finally:
            for timer in self.timers.values():
                timer.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        code = self.supervision.exit_code
        log.info("every worker process has exited; supervisor exits %d", code)
        return code

    async def _carry_out(self, actions: list[Action]) -> None:
        loop = asyncio.get_running_loop()
        for action in actions:
            if isinstance(action, Spawn):
                await self._spawn(action.slot)
            elif isinstance(action, Forward):
                proc = self.children.get(action.slot)
                if proc is not None and proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(action.signum)
            elif isinstance(action, Restart):
                log.warning(
                    "worker process %d %s; restarting it in %.1f s (failure %d in a row)",
                    action.slot + 1,
                    _describe(action.code),
                    action.delay_s,
                    action.failures,
                )
                event = ("due", action.slot, 0)
                self.timers[action.slot] = loop.call_later(
                    action.delay_s, self.events.put_nowait, event
                )
            elif isinstance(action, GiveUp):
                log.error(
                    "worker process %d %s: every worker process has now failed %d times in a "
                    "row; stopping the rest and exiting 1",
                    action.slot + 1,
                    _describe(action.code),
                    action.failures,
                )

    async def _spawn(self, slot: int) -> None:
        env = None
        if self.metrics_port:
            # One port can have one listener: process i serves /metrics on PORT + i.
            env = dict(os.environ, STREAMFAN_WORKER_METRICS_PORT=str(self.metrics_port + slot))
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command, str(os.getpid()), env=env, process_group=0
            )
        except OSError as exc:
            log.error("cannot start worker process %d: %s", slot + 1, exc)
            self.events.put_nowait(("exited", slot, 127))
            return
        self.children[slot] = proc
        log.info("worker process %d started: pid %d", slot + 1, proc.pid)
        waiter = asyncio.create_task(self._wait(slot, proc))
        self.waiters.add(waiter)
        waiter.add_done_callback(self.waiters.discard)

    async def _wait(self, slot: int, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.events.put_nowait(("exited", slot, code))


def supervise(
    processes: int, *, burst: bool, metrics_port: int = 0, backoff: Backoff | None = None
) -> int:
    """Run ``processes`` copies of this command as one worker each; their exit code."""
    supervisor = Supervisor(
        processes,
        child_command(),
        burst=burst,
        backoff=backoff or Backoff(),
        metrics_port=metrics_port,
    )
    return asyncio.run(supervisor.run())
