"""``python -m chaos --seed N --duration D``: run the service under seeded faults and judge it.

Exit status 0 when every reply and every reader is exact, with no duplicate, no
gap, no process that exited by itself and no key retention would miss; 1
otherwise. The report table goes to stdout, the problems (if any) after it, and a
JSON summary to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from chaos.plan import ALL_FAULTS, Config
from chaos.run import run
from chaos.verdict import table


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    p.add_argument("--seed", type=int, default=d.seed, help=f"plan seed (default {d.seed})")
    p.add_argument("--duration", type=float, default=d.duration_s,
                   help=f"seconds of faults and submits (default {d.duration_s:g})")  # fmt: skip
    p.add_argument("--streams", type=int, default=d.streams, help="streams in the run")
    p.add_argument("--readers", type=int, default=d.readers, help="readers per stream")
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes")
    p.add_argument("--gateways", type=int, default=d.gateways, help="gateway processes")
    p.add_argument("--faults", default=",".join(d.process_faults),
                   help=f"process faults to use (any of {', '.join(ALL_FAULTS)})")  # fmt: skip
    p.add_argument("--front", choices=["nginx"], default=None,
                   help="readers connect through nginx (deploy/nginx.conf)")  # fmt: skip
    p.add_argument("--run-dir", type=Path, default=None, help="logs and Redis data (default: temp)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config(
            seed=args.seed, duration_s=args.duration, streams=args.streams,
            readers=args.readers, workers=args.workers, gateways=args.gateways,
            process_faults=tuple(f for f in args.faults.split(",") if f),
            front=args.front == "nginx",
        )  # fmt: skip
    except ValueError as exc:
        print(f"python -m chaos: {exc}", file=sys.stderr)
        return 2
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="streamfan-chaos-"))
    summary = asyncio.run(run(config, run_dir))
    print(f"chaos run: seed {config.seed}, {config.duration_s:g} s, {config.streams} streams x "
          f"{config.readers} readers, {config.workers} workers, {config.gateways} gateways; "
          f"logs in {run_dir}")  # fmt: skip
    print(table(summary))
    for problem in summary.problems[:50]:
        print("problem:", problem)
    for line in summary.process_exits + [f"no TTL: {k}" for k in summary.leftover_keys[:20]]:
        print("problem:", line)
    if args.out:
        args.out.write_text(json.dumps(dataclasses.asdict(summary), indent=2))
    return 0 if summary.passed else 1


if __name__ == "__main__":
    sys.exit(main())
