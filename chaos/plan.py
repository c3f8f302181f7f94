"""What a chaos run will do, decided up front from its seed: the faults, their moments, the jobs.

:func:`make_plan` turns a :class:`Config` into a :class:`Plan`: every stream's chat
request (a mock reply, sometimes with an upstream fault on its first attempt) and a
schedule of process faults at seeded moments. The same seed gives the same plan, so
a failing run can be replayed. Pure: no I/O, no clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

#: Faults done to the processes and to Redis, by the runner, at planned moments.
KILL_WORKER = "kill_worker"  # SIGKILL one worker; the runner starts a new one in its place
KILL_GATEWAY = "kill_gateway"  # SIGKILL one gateway; a new one on the same port
KILL_PUBSUB = "kill_pubsub"  # CLIENT KILL TYPE pubsub: every subscriber connection drops
KILL_REDIS = "kill_redis"  # SIGKILL Redis, start it again on its append-only file
PAUSE_REDIS = "pause_redis"  # SIGSTOP Redis past every timeout, then SIGCONT
PROCESS_FAULTS = (KILL_WORKER, KILL_GATEWAY, KILL_PUBSUB, KILL_REDIS, PAUSE_REDIS)
#: A rolling restart, as a deployment does it: SIGTERM each part in turn, wait for it
#: to hand over and exit, start its replacement, then the next. Not in the default mix.
RESTART_WORKERS = "restart_workers"
RESTART_GATEWAYS = "restart_gateways"
ROLLING_RESTARTS = (RESTART_WORKERS, RESTART_GATEWAYS)
ALL_FAULTS = PROCESS_FAULTS + ROLLING_RESTARTS

#: Faults the mock upstream makes on a stream's first attempt (``fault_times`` 1), so a
#: retry succeeds and the stream still ends ``done`` with the scripted reply.
UPSTREAM_FAULTS = (
    "http_429",  # with Retry-After
    "http_500",
    "http_503",
    "drop",  # FIN mid-body
    "stall",  # the worker's idle timeout cuts it
    "truncate",
    "malformed",
)


@dataclass(frozen=True, slots=True)
class Config:
    seed: int = 1
    duration_s: float = 30.0
    streams: int = 24
    readers: int = 3  # per stream
    workers: int = 2
    gateways: int = 2
    #: Share of streams whose first upstream attempt fails.
    upstream_fault_rate: float = 0.4
    tokens_per_s: float = 40.0
    reply_tokens: tuple[int, int] = (40, 160)
    #: How long a Redis pause lasts: longer than every round-trip timeout of the parts.
    pause_s: float = 4.0
    #: How long Redis stays down after a kill before it is started again.
    redis_down_s: float = 2.0
    process_faults: tuple[str, ...] = PROCESS_FAULTS
    #: Readers connect through nginx (deploy/nginx.conf) instead of to a random gateway.
    front: bool = False

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.streams < 1 or self.readers < 1:
            raise ValueError("duration, streams and readers must be positive")
        if self.workers < 1 or self.gateways < 1:
            raise ValueError("a run needs at least one worker and one gateway")
        unknown = set(self.process_faults) - set(ALL_FAULTS)
        if unknown:
            raise ValueError(f"unknown process faults: {sorted(unknown)}")


@dataclass(frozen=True, slots=True)
class Job:
    """One stream of the run: its id, when it is submitted, and its chat request."""

    stream_id: str
    submit_at_s: float
    body: dict[str, Any]
    upstream_fault: str | None


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float
    kind: str
    #: Which worker or gateway (an index into the runner's list); 0 for Redis faults.
    target: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    config: Config
    jobs: tuple[Job, ...]
    faults: tuple[Fault, ...]
    #: Per reader, the seed of its own choices (which gateway, when to reconnect).
    reader_seeds: dict[tuple[str, int], int] = field(default_factory=dict)


def _job(rng: random.Random, config: Config, index: int, fault: str | None) -> Job:
    stream_id = f"chaos-{config.seed}-{index:04d}"
    mock: dict[str, Any] = {
        "reply_tokens": rng.randint(*config.reply_tokens),
        "seed": rng.randrange(1 << 30),
        "tokens_per_s": config.tokens_per_s,
        "fault_key": stream_id,
    }
    if fault is not None:
        mock.update(fault=fault, fault_times=1, after=rng.randint(1, 6))
        if fault == "http_429":
            mock["retry_after"] = "1"
    body: dict[str, Any] = {
        "model": "mock-gpt",
        "messages": [{"role": "user", "content": stream_id}],
        "mock": mock,
    }
    # Streams start over the first half of the run so faults land on running ones.
    submit_at = rng.uniform(0.0, config.duration_s / 2)
    return Job(stream_id=stream_id, submit_at_s=submit_at, body=body, upstream_fault=fault)


def _faults(rng: random.Random, config: Config) -> list[Fault]:
    """Every process fault kind at least once, spread over the run's middle 80 %."""
    kinds = list(config.process_faults)
    extra = max(0, int(config.duration_s // 10) - len(kinds))
    kinds += [rng.choice(config.process_faults) for _ in range(extra)]
    rng.shuffle(kinds)
    faults: list[Fault] = []
    if not kinds:
        return faults
    slot = 0.8 * config.duration_s / len(kinds)
    for i, kind in enumerate(kinds):
        at = 0.1 * config.duration_s + slot * (i + rng.uniform(0.1, 0.9))
        if kind == KILL_WORKER:
            target = rng.randrange(config.workers)
        elif kind == KILL_GATEWAY:
            target = rng.randrange(config.gateways)
        else:
            target = 0
        faults.append(Fault(at_s=round(at, 3), kind=kind, target=target))
    return faults


def _upstream_faults(rng: random.Random, config: Config) -> list[str | None]:
    """Per stream, its first attempt's fault: every kind once (when there are enough
    faulted streams), then kinds at random; the faulted streams themselves at random."""
    faulted = round(config.streams * config.upstream_fault_rate)
    kinds = list(UPSTREAM_FAULTS)
    rng.shuffle(kinds)
    chosen: list[str | None] = [
        kinds[i] if i < len(kinds) else rng.choice(UPSTREAM_FAULTS) for i in range(faulted)
    ]
    chosen += [None] * (config.streams - faulted)
    rng.shuffle(chosen)
    return chosen


def make_plan(config: Config) -> Plan:
    rng = random.Random(config.seed)
    faults = _upstream_faults(rng, config)
    jobs = tuple(sorted((_job(rng, config, i, faults[i]) for i in range(config.streams)),
                        key=lambda j: j.submit_at_s))  # fmt: skip
    process_faults = tuple(_faults(rng, config))
    reader_seeds = {
        (job.stream_id, r): rng.randrange(1 << 30) for job in jobs for r in range(config.readers)
    }
    return Plan(config=config, jobs=jobs, faults=process_faults, reader_seeds=reader_seeds)
