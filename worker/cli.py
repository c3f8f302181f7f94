"""``streamfan worker``: run an arq worker (the same as ``arq worker.WorkerSettings``).

``--processes N`` (or ``auto``, one per core) runs N of them under this one
command instead: see :mod:`worker.processes`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from streamfan.errors import ConfigError
from streamfan.settings import Settings
from worker import processes

#: Children of a supervisor say which process they are in every log line.
SUPERVISED_LOG_FORMAT = "%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="Redis with the arq queue (STREAMFAN_REDIS_URL)")
    parser.add_argument(
        "--upstream-base-url", help="OpenAI-compatible base URL (STREAMFAN_UPSTREAM_BASE_URL)"
    )
    parser.add_argument(
        "--max-jobs", type=int, help="concurrent streams (STREAMFAN_WORKER_MAX_JOBS)"
    )
    parser.add_argument("--burst", action="store_true", help="run the queued jobs, then exit")
    parser.add_argument(
        "--processes",
        default="1",
        metavar="N",
        help="worker processes under this command, restarted if one dies; 'auto' = one per "
        "core (default 1: this process is the worker)",
    )
    # Set by the supervisor on its children: the pid to die with.
    parser.add_argument("--supervised-by", type=int, help=argparse.SUPPRESS)


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        redis_url=args.redis_url,
        upstream_base_url=args.upstream_base_url.rstrip("/") if args.upstream_base_url else None,
        worker_max_jobs=args.max_jobs,
    )


def run(args: argparse.Namespace) -> int:
    try:
        count = processes.parse_processes(args.processes)
    except ValueError as exc:
        raise ConfigError("--processes", str(exc)) from None
    # Settings are checked here, once, before any child starts: a mistake is one
    # line, not N children failing and being restarted.
    settings = settings_from_args(args)
    logging.getLogger().setLevel(settings.log_level)
    if count > 1:
        port = settings.worker_metrics_port
        if port and port + count - 1 > 65535:
            raise ConfigError(
                "STREAMFAN_WORKER_METRICS_PORT",
                f"process i serves on PORT + i: {port} + {count - 1} is past 65535",
            )
        return processes.supervise(count, burst=args.burst, metrics_port=port)
    # Imported only here: a supervisor has no use for arq, redis and httpx
    # (measured: an idle supervisor holds 23 MiB RSS without them, 35 MiB with them).
    from worker.app import StreamfanWorker, make_worker_settings

    if args.supervised_by is not None:
        if not processes.die_with_parent(args.supervised_by):
            return 1
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(SUPERVISED_LOG_FORMAT))
    # One line per upstream request is noise at 1,000 streams; errors still show.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        worker = StreamfanWorker(**make_worker_settings(settings), burst=args.burst)
        worker.run()
    finally:
        loop.close()
    return 0
