"""Scenario ``ingest``: one worker process streaming 1, 100, 1,000 replies at once.

A real ``streamfan worker`` reads the mock upstream at ``--rate`` tokens/s per
stream (one token per chunk). Over a steady window it reports the worker's CPU
per upstream chunk (/proc), Redis round trips per network read (the worker's
``streamfan_worker_append_round_trips_total`` / ``..._upstream_reads_total``,
and EVALSHA calls from ``INFO commandstats``), and whether it keeps up: delivered chunks
against offered, and the lag of each chunk's entry id timestamp behind the
schedule of its stream (it grows when the worker falls behind).

Baselines measured in this run: the same SSE bytes through
:class:`worker.sse.SSEDecoder` alone, and a bare ``XADD`` loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from bench import report
from bench.events import stamped_delta
from bench.fanout import _settings
from bench.machine import (
    CpuMeter,
    CpusMeter,
    MachineMeter,
    commands_between,
    commandstats,
    machine_info,
)
from bench.procs import Children, add_upstream_arguments, events_for, profiling, redis_for, scrape
from bench.profile_split import split_file
from bench.report import progress
from bench.sse_decoder import openai_body
from bench.ttft import body
from cli.redis_server import free_port
from streamfan.client import Client
from streamfan.keys import Keys
from streamfan.settings import Settings
from worker.sse import SSEDecoder

M = "streamfan_worker_"
LAG_STREAMS = 20
#: A process at this share of one core or more is the saturated part of a row
#: (one Python process runs on one core at a time).
SATURATED_CORES = 0.9


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", default="1,100,1000", help="sweep of concurrent streams")
    p.add_argument("--rate", type=float, default=20.0, help="tokens/s per stream")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before the window")
    p.add_argument("--window", type=float, default=6.0, help="measured seconds")
    add_upstream_arguments(p)
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="also record the worker with py-spy during each window (DIR/ingest-N.folded)",
    )


async def snapshot(port: int, url: str) -> dict[str, Any]:
    m = await scrape(port)
    return {
        "events": m.get(M + "events_written_total", 0.0),
        "writes": m.get(M + "writes_total", 0.0),
        "trips": m.get(M + "append_round_trips_total", 0.0),
        "reads": m.get(M + "upstream_reads_total", 0.0),
        "running": m.get(M + "streams_running", 0.0),
        "cmds": commandstats(url),
    }


async def lag_ms(
    r: aioredis.Redis, sids: list[str], rate: float, window_ms: tuple[float, float]
) -> list[float]:
    """Per chunk written in the window: how far it lies behind its stream's schedule.

    The schedule is the stream's best-kept moment (the least lag over all its
    chunks, the ramp-up included); only chunks written inside the measured window
    are reported, so a slow start does not count against the steady state.
    """
    keys, out = Keys(), []
    for sid in sids:
        entries = await r.xrange(keys.events(sid))
        ts = [
            int(eid.split(b"-")[0]) for eid, f in entries if f[b"e"].startswith(b'{"type":"delta"')
        ]
        behind = [t - k * 1000.0 / rate for k, t in enumerate(ts)]
        best = min(behind, default=0.0)
        out += [
            b - best for b, t in zip(behind, ts, strict=True) if window_ms[0] <= t <= window_ms[1]
        ]
    return out


async def one(
    args: argparse.Namespace,
    sf: Client,
    n: int,
    port: int,
    pids: dict[str, int | None],
    redis_pids: list[int],
    url: str,
) -> dict[str, Any]:
    tokens = int(args.rate * (args.warmup + args.window + 30))
    sids = [(await sf.submit(body(tokens, 0, args.rate))).stream_id for _ in range(n)]
    deadline = time.monotonic() + 60
    # Polling another process's counters: there is no event to wait on.
    while (await snapshot(port, url))["running"] < n and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    await asyncio.sleep(args.warmup)
    s0 = await snapshot(port, url)
    meters = {name: CpuMeter(pid).start() for name, pid in pids.items() if pid}
    rmeter = CpusMeter(redis_pids).start()
    machine = MachineMeter().start()
    t0 = time.time() * 1000
    async with profiling(args.profile, pids["worker"] or 0, f"ingest-{n}", args.window):
        await asyncio.sleep(args.window)
    t1 = time.time() * 1000
    s1 = await snapshot(port, url)
    for meter in meters.values():
        meter.stop()
    rmeter.stop()
    machine.stop()
    wcpu = meters["worker"]
    lags = await lag_ms(sf.redis, sids[:LAG_STREAMS], args.rate, (t0, t1))
    await asyncio.gather(*(sf.cancel(sid) for sid in sids))
    while (await snapshot(port, url))["running"] > 0 and time.monotonic() < deadline + 60:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    chunks = s1["events"] - s0["events"]
    writes, reads = s1["writes"] - s0["writes"], s1["reads"] - s0["reads"]
    trips = s1["trips"] - s0["trips"]
    cmds = commands_between(s0["cmds"], s1["cmds"])
    offered = n * args.rate * wcpu.wall_s
    row = {
        "streams": n,
        "running": int(s0["running"]),
        "seconds": wcpu.wall_s,
        "chunks": chunks,
        "chunks_per_s": chunks / wcpu.wall_s,
        "offered_chunks_per_s": n * args.rate,
        "delivered_fraction": chunks / offered if offered else 0.0,
        "worker_cpu_cores": wcpu.cores,
        "worker_cpu_us_per_chunk": wcpu.cpu_s * 1e6 / max(chunks, 1),
        "upstream_cpu_cores": sum(m.cores for k, m in meters.items() if k.startswith("up")),
        "upstream_cpu_max_process": max(
            (m.cores for k, m in meters.items() if k.startswith("up")), default=0.0
        ),
        "redis_cpu_cores": rmeter.cores if redis_pids else None,
        "redis": args.redis,
        "redis_nodes": max(len(redis_pids), 1),
        "machine_busy_cores": machine.busy_cores,
        "writes": writes,
        "reads": reads,
        "round_trips": trips,
        "streams_per_round_trip": writes / max(trips, 1),
        # On a cluster: round trips to any node (a send is one per node it touches).
        "round_trips_per_read": trips / max(reads, 1),
        "evalsha_per_read": cmds.get("evalsha", 0) / max(reads, 1),
        "redis_commands": cmds,
        "lag_ms": report.summary(lags),
        # With --profile: share of the worker's busy samples by what they did.
        "profile_split": (
            split_file(Path(args.profile) / f"ingest-{n}.folded") if args.profile else {}
        ),
    }
    row["bound"] = bound(row)
    return row


def bound(row: dict[str, Any]) -> str:
    """Which part limited a row: ``worker``, ``upstream``, ``machine``, ``behind`` or ``none``.

    ``worker`` only when the worker process ran at (nearly) a whole core and the
    upstream did not: then chunks per second over the worker's cores is what one
    worker core sustains. A machine whose cores were all busy (other processes
    included) while neither was saturated is ``machine``: the worker was starved.
    """
    if row["upstream_cpu_max_process"] >= SATURATED_CORES:
        return "upstream"
    if row["worker_cpu_cores"] >= SATURATED_CORES:
        return "worker"
    if row["machine_busy_cores"] >= 0.9 * (os.cpu_count() or 1):
        return "machine"
    if row["delivered_fraction"] < 0.95:
        return "behind"  # fell behind with no part saturated (by these thresholds)
    return "none"


def sse_baseline() -> dict[str, float]:
    data, read, rounds = openai_body(2000), 1536, 20
    pieces = [data[i : i + read] for i in range(0, len(data), read)]
    c0 = time.process_time()
    for _ in range(rounds):
        dec = SSEDecoder()
        for p in pieces:
            dec.decode(p)
        dec.flush()
    cpu = time.process_time() - c0
    return {"chunks": 2002 * rounds, "cpu_us_per_chunk": cpu * 1e6 / (2002 * rounds)}


async def xadd_baseline(url: str, n: int = 3000) -> dict[str, float]:
    r = aioredis.Redis.from_url(url)
    ev = orjson.dumps({k: v for k, v in stamped_delta().items() if k != "bench_t"})
    await r.ping()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        await r.xadd("bench:xadd", {"e": ev}, maxlen=100_000, approximate=True)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    await r.delete("bench:xadd")
    await r.aclose()
    return {"calls": n, "cpu_us_per_xadd": cpu * 1e6 / n, "wall_us_per_xadd": wall * 1e6 / n}


async def reader_baseline(
    children: Children, upstream: str, n: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The same replies read and decoded, nothing written (``bench.upstream_reader``)."""
    child = await children.helper(
        f"upstream-reader-{n}",
        "bench.upstream_reader",
        {
            "upstream": upstream,
            "streams": n,
            "rate": args.rate,
            "tokens": int(args.rate * (args.warmup + args.window + 30)),
            "warmup": args.warmup,
            "window": args.window,
            "decode": True,
        },
    )
    return await child.recv(args.warmup + args.window + 120)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sweep = [int(s) for s in args.streams.split(",") if s]
    rows = []
    with (
        redis_for(args.redis_url) as (redis_url, redis_pid),
        events_for(args.redis, redis_url, redis_pid) as (events_url, event_pids),
    ):
        baselines = {"sse_decoder": sse_baseline(), "xadd_loop": await xadd_baseline(redis_url)}
        on_cluster = events_url if args.redis == "cluster" else None
        async with Children() as children:
            ups, upstream = await children.upstream(args.upstream, args.upstream_procs)
            port = free_port()
            worker = await children.worker(
                redis_url,
                upstream,
                port,
                worker_max_jobs=max(sweep) + 10,
                events_redis_url=on_cluster,
            )
            settings = Settings.from_env({}, redis_url=redis_url, events_redis_url=on_cluster)
            async with Client(settings) as sf:
                for n in sweep:
                    progress(f"ingest: {n} streams at {args.rate:g} tokens/s ({args.redis})")
                    pids: dict[str, int | None] = {"worker": worker.pid}
                    pids.update({f"upstream-{i}": u.pid for i, u in enumerate(ups)})
                    rows.append(await one(args, sf, n, port, pids, event_pids, events_url))
                    progress(f"ingest: the same {n} replies read and decoded alone (no Redis)")
                    rows[-1]["upstream_alone"] = await reader_baseline(children, upstream, n, args)
    return {
        "scenario": "ingest",
        "command": " ".join(["python -m bench ingest", *args.argv]),
        "machine": machine_info(),
        "settings": _settings(),
        "config": {k: v for k, v in vars(args).items() if k not in ("func", "argv", "out")},
        "rows": rows,
        "baselines": baselines,
        # What one worker core sustains: only from rows where the worker was the
        # saturated part (None when no row got there); the estimate extrapolates
        # from any row's CPU per chunk and is no more than that.
        "streams_per_worker_core": max(
            (
                r["chunks_per_s"] / r["worker_cpu_cores"] / args.rate
                for r in rows
                if r["bound"] == "worker"
            ),
            default=None,
        ),
        "streams_per_core_estimate": max(
            (
                r["chunks_per_s"] / r["worker_cpu_cores"] / args.rate
                for r in rows
                if r["worker_cpu_cores"] > 0
            ),
            default=0.0,
        ),
        # The most streams measured that kept up (>= 95 % of the chunks, lag p99 < 1 s).
        "max_sustained_streams": max(
            (
                r["streams"]
                for r in rows
                if r["delivered_fraction"] >= 0.95 and r["lag_ms"]["p99"] < 1000
            ),
            default=0,
        ),
    }


def render(data: dict[str, Any]) -> str:
    headers = [
        "streams",
        "chunks/s",
        "offered",
        "worker CPU",
        "µs CPU/chunk",
        "RT/read",
        "evalsha/read",
        "lag p50 ms",
        "lag p99 ms",
        "upstream CPU",
        "Redis CPU",
        "machine busy",
        "bound",
        "read+decode alone µs/chunk",
    ]
    rows = [
        [
            r["streams"],
            r["chunks_per_s"],
            r["offered_chunks_per_s"],
            r["worker_cpu_cores"],
            r["worker_cpu_us_per_chunk"],
            r["round_trips_per_read"],
            r["evalsha_per_read"],
            r["lag_ms"]["p50"],
            r["lag_ms"]["p99"],
            r["upstream_cpu_cores"],
            r["redis_cpu_cores"] if r["redis_cpu_cores"] is not None else "-",
            r["machine_busy_cores"],
            r["bound"],
            r["upstream_alone"]["cpu_us_per_chunk"],
        ]
        for r in data["rows"]
    ]
    b = data["baselines"]
    base = report.table(
        ["baseline", "µs CPU per item"],
        [
            ["SSEDecoder alone, per chunk", b["sse_decoder"]["cpu_us_per_chunk"]],
            ["bare XADD loop (client CPU)", b["xadd_loop"]["cpu_us_per_xadd"]],
            ["bare XADD loop (wall)", b["xadd_loop"]["wall_us_per_xadd"]],
        ],
    )
    out = report.table(headers, rows) + "\n\n" + base
    per_core = data["streams_per_worker_core"]
    out += "\n\nstreams one worker core sustains: " + (
        f"{per_core:.0f} (rows bound by the worker)" if per_core else "no row bound by the worker"
    )
    for r in data["rows"]:
        if r.get("profile_split"):
            shares = [[name, f"{share:.0%}"] for name, share in r["profile_split"].items()]
            out += f"\n\nworker profile, {r['streams']} streams\n"
            out += report.table(["busy samples in", "share"], shares)
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    data = asyncio.run(run(args))
    print(render(data))
    progress(f"wrote {report.write_json('ingest', data, args.out)}")
    return data
