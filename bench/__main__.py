"""``python -m bench SCENARIO [options]``: run one benchmark scenario (or ``plot``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

SCENARIOS = {
    "fanout": "S streams x C clients on one gateway, against a ceiling and a naive server",
    "ttft": "time the pipeline adds to the first token",
    "ingest": "worker CPU and Redis round trips per upstream chunk",
    "memory": "RSS per idle subscribed connection, and after they leave",
    "durable": "what STREAMFAN_DURABLE_FINISH costs per stream (finish delay, worker CPU)",
    "clients": "Redis Cluster client libraries: CPU per append and per sharded wake-up",
    "plot": "draw docs/img/*.svg from bench/results/*-latest.json",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name, help_text in SCENARIOS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--out", type=Path, default=None, help="results directory")
        if name != "plot":
            p.add_argument("--redis-url", help="use this Redis (default: start a Valkey child)")
        if name in ("fanout", "ingest"):
            p.add_argument(
                "--redis",
                choices=("single", "cluster"),
                default="single",
                help="event keys on the queue's Redis, or on a local 3-master Redis Cluster",
            )
        importlib.import_module(f"bench.{name}").add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]
    importlib.import_module(f"bench.{args.scenario}").main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
