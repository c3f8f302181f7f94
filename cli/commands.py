"""The client-side commands: ``submit``, ``tail``, ``token``, ``status``, ``cancel``.

They read Redis directly through :class:`streamfan.Client`, like a backend would.
With no Redis URL given, they find a running ``streamfan up`` of the same user
through its state file (:mod:`cli.upstate`) and say so in one line on stderr.
Output for people goes to stdout (the reply text as it arrives) with progress on
stderr; ``--json`` prints one compact JSON object per line for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any, TextIO

import orjson

from cli import upstate
from streamfan import events
from streamfan.client import Client
from streamfan.keys import validate_stream_id
from streamfan.positions import validate_position
from streamfan.settings import Settings

DEFAULT_MODEL = "gpt-4o-mini"
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="Redis URL (STREAMFAN_REDIS_URL)")


def add_arguments_for(name: str, parser: argparse.ArgumentParser) -> None:
    _common(parser)
    if name == "submit":
        parser.add_argument("prompt", help="the user message")
        parser.add_argument("--model", default=DEFAULT_MODEL, help="model name")
        parser.add_argument("--system", help="a system message to put first")
        parser.add_argument("--stream-id", help="idempotency key (default: a new uuid4)")
        parser.add_argument("--owner", help="who may read it (stored in meta)")
        parser.add_argument("--follow", action="store_true", help="print the reply as it streams")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
    elif name == "tail":
        parser.add_argument("stream_id", metavar="ID")
        parser.add_argument(
            "--from",
            dest="from_",
            default="0",
            help="'0' replays everything (default), '$' only new, or an entry id",
        )
        parser.add_argument("--json", action="store_true", help="print raw events, one per line")
    elif name == "token":
        parser.add_argument(
            "stream_ids", metavar="ID", nargs="*", help="stream ids, or '*' (none with --submit)"
        )
        parser.add_argument("--ttl", type=float, help="lifetime in seconds (STREAMFAN_TOKEN_TTL_S)")
        parser.add_argument("--cancel", action="store_true", help="also allow cancelling")
        parser.add_argument(
            "--submit",
            action="store_true",
            help="also allow submitting through the gateway's /v1/chat/completions",
        )
    elif name in ("status", "cancel"):
        parser.add_argument("stream_id", metavar="ID")
    else:  # pragma: no cover - cli/main.py only routes the names above here
        raise ValueError(name)


def run_for(name: str, args: argparse.Namespace) -> int:
    found = upstate.find(os.environ, redis_url_flag=args.redis_url)
    if found.note:
        print(f"streamfan {name}: {found.note}", file=sys.stderr, flush=True)
    settings = Settings.from_env(found.environ, redis_url=args.redis_url)
    # The demo page of the run found, to watch a submitted stream in a browser.
    args.page_url = (
        found.state.gateway_urls[0] if found.state and found.state.gateway_urls else None
    )
    # A mistyped id is the user's to fix: say so before trying to reach Redis.
    for stream_id in [getattr(args, "stream_id", None), getattr(args, "stream_ids", None)]:
        if isinstance(stream_id, str):
            validate_stream_id(stream_id)
    if name == "tail":
        validate_position(args.from_)
    if name == "token":
        return _token(settings, args)
    runner = {"submit": _submit, "tail": _tail, "status": _status, "cancel": _cancel}[name]
    return asyncio.run(runner(settings, args))


def _print_json(obj: Any, out: TextIO = sys.stdout) -> None:
    out.write(orjson.dumps(obj).decode() + "\n")
    out.flush()


def _token(settings: Settings, args: argparse.Namespace) -> int:
    client = Client(settings)
    print(client.token(args.stream_ids, ttl_s=args.ttl, cancel=args.cancel, submit=args.submit))
    return 0


async def _submit(settings: Settings, args: argparse.Namespace) -> int:
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": args.prompt})
    async with Client(settings) as sf:
        sub = await sf.submit(
            {"model": args.model, "messages": messages},
            stream_id=args.stream_id,
            owner=args.owner,
        )
        if args.json:
            _print_json({"stream_id": sub.stream_id, "token": sub.token, "created": sub.created})
        else:
            info = sys.stderr if args.follow else sys.stdout
            print(f"stream_id: {sub.stream_id}", file=info)
            if sub.token:
                print(f"token: {sub.token}", file=info)
                if args.page_url:
                    print(
                        f"page: {args.page_url}/?stream={sub.stream_id}&token={sub.token}",
                        file=info,
                    )
            info.flush()
        if not args.follow:
            return 0
        return await follow(sf, sub.stream_id, "0", as_json=args.json)


async def _tail(settings: Settings, args: argparse.Namespace) -> int:
    async with Client(settings) as sf:
        return await follow(sf, args.stream_id, args.from_, as_json=args.json)


class _Spinner:
    """A progress line on stderr until the first token (only on a terminal)."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._spin())

    async def _spin(self) -> None:
        i = 0
        while True:
            sys.stderr.write(f"\r{SPINNER[i % len(SPINNER)]} waiting for the first token…")
            sys.stderr.flush()
            i += 1
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


async def follow(sf: Client, stream_id: str, from_: str, *, as_json: bool) -> int:
    """Print a stream until its terminal event; exit code 0 only for ``done``."""
    spinner = _Spinner()
    if not as_json:
        spinner.start()
    terminal: dict[str, Any] | None = None
    try:
        async for entry_id, event in sf.events(stream_id, from_=from_):
            if as_json:
                _print_json({"id": entry_id, "event": event})
            else:
                _print_event(event, spinner)
            if events.is_terminal(event):
                terminal = event
    finally:
        spinner.stop()
    if not as_json:
        sys.stdout.write("\n")
        sys.stdout.flush()
    assert terminal is not None
    if terminal["type"] == events.DONE:
        return 0
    if terminal["type"] == events.ERROR:
        print(
            f"streamfan: the stream ended with an error: {terminal.get('code')}: "
            f"{terminal.get('message')}",
            file=sys.stderr,
        )
    else:
        print(f"streamfan: the stream was cancelled: {terminal.get('reason')}", file=sys.stderr)
    return 1


def _print_event(event: dict[str, Any], spinner: _Spinner) -> None:
    etype = event["type"]
    if etype == events.DELTA:
        for choice in event["choices"]:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str) and text:
                spinner.stop()
                sys.stdout.write(text)
                sys.stdout.flush()
    elif etype == events.RESET:
        spinner.stop()
        print(
            f"\n[the upstream failed; attempt {event.get('attempt')} starts over]", file=sys.stderr
        )


async def _status(settings: Settings, args: argparse.Namespace) -> int:
    async with Client(settings) as sf:
        meta = await sf.status(args.stream_id)
    _print_json(meta.as_dict())
    return 0


async def _cancel(settings: Settings, args: argparse.Namespace) -> int:
    async with Client(settings) as sf:
        status = await sf.cancel(args.stream_id, reason="cancelled from the command line")
    print(status)
    return 0
