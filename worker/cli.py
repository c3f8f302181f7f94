"""``streamfan worker``: run an arq worker (the same as ``arq worker.WorkerSettings``)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from streamfan.settings import Settings
from worker.app import StreamfanWorker, make_worker_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="Redis with the arq queue (STREAMFAN_REDIS_URL)")
    parser.add_argument(
        "--upstream-base-url", help="OpenAI-compatible base URL (STREAMFAN_UPSTREAM_BASE_URL)"
    )
    parser.add_argument(
        "--max-jobs", type=int, help="concurrent streams (STREAMFAN_WORKER_MAX_JOBS)"
    )
    parser.add_argument("--burst", action="store_true", help="run the queued jobs, then exit")


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        redis_url=args.redis_url,
        upstream_base_url=args.upstream_base_url.rstrip("/") if args.upstream_base_url else None,
        worker_max_jobs=args.max_jobs,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    logging.getLogger().setLevel(settings.log_level)
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
