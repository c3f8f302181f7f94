"""``streamfan mock-upstream``: run the mock upstream until SIGINT or SIGTERM.

The flags set the server-wide :class:`~streamfan.mock.options.Defaults`; a
request's ``mock`` field overrides them. Prints one line, ``streamfan
mock-upstream listening on http://HOST:PORT/v1``, once it accepts connections
(with ``--port 0`` that is how a caller learns the port).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable

from streamfan.mock.options import MAX_TOTAL_TOKENS, Defaults
from streamfan.mock.server import DEFAULT_HOST, DEFAULT_PORT, MockUpstream


def _non_negative(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {raw!r}")
    return value


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer {lo}..{hi}, got {raw!r}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Defaults()
    add = parser.add_argument
    add("--host", default=DEFAULT_HOST, help=f"listen address (default {DEFAULT_HOST})")
    add(
        "--port",
        type=_int_in(0, 65535),
        default=DEFAULT_PORT,
        help=f"listen port (default {DEFAULT_PORT}; 0 picks a free one and prints it)",
    )
    add("--api-key", help="accept only this bearer token (default: any non-empty one)")
    add("--no-auth", action="store_true", help="accept requests without Authorization")
    add("--model", default=d.model, help=f"model named when a request has none ({d.model})")
    add("--reply", help="the reply text (default: generated lorem-style text)")
    add(
        "--reply-tokens",
        type=_int_in(0, MAX_TOTAL_TOKENS),
        default=d.reply_tokens,
        help=f"tokens of a generated reply (default {d.reply_tokens})",
    )
    add(
        "--tokens-per-s",
        type=_non_negative,
        default=d.tokens_per_s,
        help="token rate per choice (default 0: as fast as possible)",
    )
    add("--ttft-ms", type=_non_negative, default=d.ttft_ms, help="time to first token, ms")
    add("--chunk-tokens", type=_int_in(1, 10_000), default=d.chunk_tokens, help="tokens per chunk")
    add(
        "--keepalive-ms",
        type=_non_negative,
        default=d.keepalive_ms,
        help="send ': keep-alive' comments after this much silence (0: never)",
    )


async def _serve_until_signalled(mock: MockUpstream) -> None:
    await mock.start()
    # One line on stdout, flushed: scripts (and `--port 0` users) read the port here.
    print(f"streamfan mock-upstream listening on {mock.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await mock.stop()


def run(args: argparse.Namespace) -> int:
    defaults = Defaults(
        reply=args.reply,
        reply_tokens=args.reply_tokens,
        tokens_per_s=args.tokens_per_s,
        ttft_ms=args.ttft_ms,
        chunk_tokens=args.chunk_tokens,
        keepalive_ms=args.keepalive_ms,
        model=args.model,
    )
    mock = MockUpstream(
        args.host,
        args.port,
        api_key=args.api_key,
        require_auth=not args.no_auth,
        defaults=defaults,
    )
    asyncio.run(_serve_until_signalled(mock))
    return 0
