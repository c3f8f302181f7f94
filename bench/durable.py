"""Scenario ``durable``: what STREAMFAN_DURABLE_FINISH costs per stream.

Valkey with ``appendonly yes`` and ``appendfsync everysec`` (what the setting is
for), the mock upstream and one ``streamfan worker``; rounds of ``--streams``
concurrent streams, alternating the worker between ``off`` and the ``--mode``
under test in the same run. Per stream: the finish delay — the time between its
last content entry and its terminal entry, read from the entry ids' millisecond
clock, so no client is in the measurement — and the worker's CPU per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from typing import Any

from bench import report
from bench.fanout import _settings
from bench.machine import CpuMeter, machine_info
from bench.procs import Children
from bench.report import percentile, progress
from cli.redis_server import RedisServer, free_port
from streamfan.client import Client
from streamfan.positions import parse_id
from streamfan.settings import DURABLE_LOCAL, DURABLE_MODES, DURABLE_OFF, Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", type=int, default=200, help="concurrent streams per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds per mode (alternating)")
    p.add_argument("--tokens", type=int, default=32, help="reply tokens per stream")
    p.add_argument("--mode", choices=[m for m in DURABLE_MODES if m != DURABLE_OFF],
                   default=DURABLE_LOCAL, help="the mode measured against off")  # fmt: skip


def body(tokens: int) -> dict[str, Any]:
    mock = {"reply_tokens": tokens, "tokens_per_s": 0}
    return {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "mock": mock}


def pct(values: list[float], q: float) -> float:
    return percentile(sorted(values), q * 100)


async def one_round(sf: Client, streams: int, tokens: int) -> list[float]:
    """Run ``streams`` at once to their end; each one's finish delay, ms."""
    subs = [await sf.submit(body(tokens)) for _ in range(streams)]
    results = await asyncio.gather(*(sf.result(s.stream_id) for s in subs))
    assert all(r.status == "done" for r in results), [r.status for r in results]
    delays = []
    for sub in subs:
        rows = await sf.redis.xrange(sf.keys.events(sub.stream_id))
        last_delta, terminal = rows[-2][0], rows[-1][0]
        delays.append(float(parse_id(terminal)[0] - parse_id(last_delta)[0]))
    return delays


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="streamfan-bench-durable-") as data:
        # Its own Valkey, AOF on with appendfsync everysec: what the setting is for
        # (--redis-url is not used: a Redis without an AOF has nothing to wait for).
        server = RedisServer(data_dir=data).start()
        try:
            settings = Settings.from_env({}, redis_url=server.url)
            async with Children() as children, Client(settings) as sf:
                _mock, upstream = await children.mock_upstream()
                for n in range(args.rounds * 2):
                    mode = DURABLE_OFF if n % 2 == 0 else args.mode
                    worker = await children.worker(
                        server.url, upstream, free_port(), durable_finish=mode
                    )
                    meter = CpuMeter(worker.pid).start()
                    delays = await one_round(sf, args.streams, args.tokens)
                    meter.stop()
                    await worker.stop()
                    row = rows.setdefault(mode, {"delay_ms": [], "cpu_us_per_stream": []})
                    row["delay_ms"] += delays
                    row["cpu_us_per_stream"].append(meter.cpu_s / args.streams * 1e6)
                    progress(f"{mode}: finish delay p50 {pct(delays, 0.5):.0f} ms, "
                             f"p99 {pct(delays, 0.99):.0f} ms")  # fmt: skip
        finally:
            server.stop()
    summary = {
        mode: {
            "finish_delay_ms_p50": pct(row["delay_ms"], 0.5),
            "finish_delay_ms_p99": pct(row["delay_ms"], 0.99),
            "worker_cpu_us_per_stream": statistics.median(row["cpu_us_per_stream"]),
        }
        for mode, row in rows.items()
    }
    off, on = summary[DURABLE_OFF], summary[args.mode]
    summary["ratio"] = {
        "worker_cpu_per_stream": on["worker_cpu_us_per_stream"] / off["worker_cpu_us_per_stream"],
        "added_finish_delay_ms_p50": on["finish_delay_ms_p50"] - off["finish_delay_ms_p50"],
    }
    return {
        "scenario": "durable",
        "command": " ".join(["python -m bench durable", *args.argv]),
        "machine": machine_info(),
        "settings": _settings(),
        "config": {k: args.__dict__[k] for k in ("streams", "rounds", "tokens", "mode")},
        "rows": summary,
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    result = asyncio.run(run(args))
    progress(f"wrote {report.write_json('durable', result, args.out)}")
    rows = result["rows"]
    print(report.table(
        ["mode", "finish delay p50 ms", "p99 ms", "worker CPU µs / stream"],
        [[mode, r["finish_delay_ms_p50"], r["finish_delay_ms_p99"], r["worker_cpu_us_per_stream"]]
         for mode, r in rows.items() if mode != "ratio"],
    ))  # fmt: skip
    return result
