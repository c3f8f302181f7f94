"""The ``streamfan`` command: a thin dispatcher over the commands' own modules.

Each command is a pair of functions, ``add_arguments(parser)`` and ``run(args) -> int``,
from its module: :mod:`cli.up`, ``worker/cli.py``, ``gateway/cli.py``,
:mod:`cli.commands` (the client-side commands) and :mod:`cli.mock`. Every mistake
a user can make ends as one line on stderr and a non-zero exit code, never a
traceback.

A command's module is imported when that command runs (a plain ``import`` in its
loader below), not all of them up front. Measured (RSS after import, Python 3.11):
a gateway process holds 33 MB with its own modules and 39 MB with every
command's; the mock upstream 24 MB against 39 MB and 0.1 s against 0.35 s to
start; ``streamfan token`` 31 MB against 39 MB. Every gateway, worker and mock
process of a deployment, a test or a benchmark would pay that.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Sequence

from streamfan import redact
from streamfan.errors import ConfigError, StreamfanError
from streamfan.settings import Settings

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
Loader = Callable[[], tuple[AddArguments, Run]]

EXIT_ERROR = 1
EXIT_USAGE = 2


def _up() -> tuple[AddArguments, Run]:
    from cli import up

    return up.add_arguments, up.run


def _worker() -> tuple[AddArguments, Run]:
    from worker import cli as worker_cli

    return worker_cli.add_arguments, worker_cli.run


def _gateway() -> tuple[AddArguments, Run]:
    from gateway import cli as gateway_cli

    return gateway_cli.add_arguments, gateway_cli.run


def _mock() -> tuple[AddArguments, Run]:
    from cli import mock

    return mock.add_arguments, mock.run


def _client_command(name: str) -> Loader:
    def load() -> tuple[AddArguments, Run]:
        from cli import commands

        add = functools.partial(commands.add_arguments_for, name)
        return add, functools.partial(commands.run_for, name)

    return load


#: command -> (one-line help, the loader of its flags and runner)
COMMANDS: dict[str, tuple[str, Loader]] = {
    "up": ("run everything on this machine (Redis, mock upstream, worker, gateway)", _up),
    "worker": ("run arq workers (--processes N) that stream chat jobs into Redis", _worker),
    "gateway": ("run the WebSocket gateway", _gateway),
    "submit": ("enqueue a chat job; print its stream id and token", _client_command("submit")),
    "tail": ("print a stream's content as it arrives", _client_command("tail")),
    "token": ("mint a subscribe token", _client_command("token")),
    "status": ("print a stream's meta", _client_command("status")),
    "cancel": ("cancel a running job", _client_command("cancel")),
    "mock-upstream": ("OpenAI-compatible scripted SSE server", _mock),
}


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, Run | None]:
    """The parser, with the flags of ``command`` (only its module is imported), and its runner."""
    parser = argparse.ArgumentParser(
        prog="streamfan",
        description="Stream one LLM reply to many readers, with replay and exact resume.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runner = None
    for name, (help_text, load) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            add_arguments, runner = load()
            add_arguments(p)
    return parser, runner


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args_list if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser, run = build_parser(command)
    args = parser.parse_args(args_list)
    if args.command is None or run is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # On the handler, so it sees every logger's records at every level (a
    # handshake's ?token= at DEBUG, an upstream's headers in httpcore's).
    redact.install()
    try:
        # A bad setting: the command builds its settings and reports it itself.
        with contextlib.suppress(ConfigError):
            redact.install(Settings.from_env().secrets)
        return int(run(args))
    except ConfigError as exc:
        print(f"streamfan {args.command}: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StreamfanError as exc:
        print(f"streamfan {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
