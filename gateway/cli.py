"""``streamfan gateway``: run the WebSocket gateway until SIGTERM or SIGINT.

Prints ``listening on ws://HOST:PORT`` on stdout once it accepts connections
(with ``--port 0`` that is how a caller learns the port). On SIGTERM/SIGINT it
closes every socket with 1001 "going away", so clients reconnect to another
replica and resume from their last id, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from gateway.server import Gateway, connection_log
from streamfan.settings import DEFAULT_HOST, DEFAULT_PORT, Settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help=f"listen address (STREAMFAN_HOST, default {DEFAULT_HOST})")
    parser.add_argument(
        "--port",
        type=int,
        help=f"listen port, 0 picks a free one (STREAMFAN_PORT, default {DEFAULT_PORT})",
    )
    parser.add_argument("--redis-url", help="Redis URL (STREAMFAN_REDIS_URL)")
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="serve without tokens: anyone may read and cancel every stream (development only)",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        host=args.host,
        port=args.port,
        redis_url=args.redis_url,
        insecure_no_auth=args.insecure_no_auth,
    )


async def serve(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Gateway(settings) as gw:
            print(f"listening on {gw.url}", flush=True)
            await stop.wait()
            log.info("signal received: closing every connection (1001 going away)")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return 0


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    logging.getLogger().setLevel(settings.log_level)
    if settings.log_level != "DEBUG":
        # One line per connection opened and closed drowns everything else.
        connection_log.setLevel(logging.WARNING)
    code = asyncio.run(serve(settings))
    sys.stdout.flush()
    return code
