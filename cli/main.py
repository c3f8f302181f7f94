"""The ``streamfan`` command: a thin dispatcher over the commands' own modules.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``;
they are imported only when their command runs, so ``streamfan token`` does not
pay for the gateway's imports. Every mistake a user can make ends as one line on
stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from streamfan.errors import ConfigError, StreamfanError

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": (
        "cli.up",
        "run everything on this machine (Redis, mock upstream, worker, gateway)",
    ),
    "worker": ("worker.cli", "run an arq worker that streams chat jobs into Redis"),
    "gateway": ("gateway.cli", "run the WebSocket gateway"),
    "submit": ("cli.commands", "enqueue a chat job; print its stream id and token"),
    "tail": ("cli.commands", "print a stream's content as it arrives"),
    "token": ("cli.commands", "mint a subscribe token"),
    "status": ("cli.commands", "print a stream's meta"),
    "cancel": ("cli.commands", "cancel a running job"),
    "mock-upstream": ("streamfan.mock.server", "OpenAI-compatible scripted SSE server"),
}

EXIT_ERROR = 1
EXIT_USAGE = 2


def _module_for(command: str) -> object:
    module = importlib.import_module(COMMANDS[command][0])
    return module


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamfan",
        description="Stream one LLM reply to many readers, with replay and exact resume.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            # Only the chosen command's module is imported to add its flags.
            module = _module_for(name)
            adder = getattr(module, "add_arguments_for", None)
            if adder is not None:
                adder(name, p)
            else:
                module.add_arguments(p)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args_list if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    module = _module_for(args.command)
    runner = getattr(module, "run_for", None)
    try:
        if runner is not None:
            return int(runner(args.command, args))
        return int(module.run(args))  # type: ignore[attr-defined]
    except ConfigError as exc:
        print(f"streamfan {args.command}: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StreamfanError as exc:
        print(f"streamfan {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
