"""Scenario ``fanout``: S streams x C clients per stream on one gateway process.

Events come from :mod:`bench.producer` (the worker's own Lua write script through
:class:`worker.publisher.Publisher`, in its own process; the worker and upstream
are left out of the measurement) and carry a ``bench_t`` timestamp taken just
before the write. Clients are :mod:`bench.loadgen` processes.

For each C, each server runs two phases with fresh streams:

``max``   the producer writes as fast as it can: delivered events/s is the
          server's maximum (for small C the producer is the limit: see ``producer``);
``half``  the producer writes at half of streamfan's measured maximum (the same
          offered rate for all three servers): the delivery latency figures;
``fixed`` the producer writes at ``--fixed-rate`` per stream (default 20, an LLM's
          token rate): latency at the load streamfan exists for.

Servers: ``streamfan`` (``python -m cli gateway``, its WebSocket), ``sse`` (the
same gateway process, read through its SSE door ``/streams/{ID}/events`` by
:class:`bench.sseclient.SSEClient`), ``ceiling`` and ``naive``
(:mod:`bench.servers`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
import uuid
from typing import Any

from bench import report
from bench.machine import (
    CpuMeter,
    CpusMeter,
    commands_between,
    commandstats,
    machine_info,
    rss_bytes,
)
from bench.procs import Child, Children, events_for, redis_for
from bench.report import progress
from streamfan.settings import Settings

SERVERS = ("streamfan", "sse", "ceiling", "naive")
LAT_SAMPLE = 50_000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", default="1,100,1000", help="sweep of C (e.g. 1,100,1000,5000)")
    p.add_argument("--streams", type=int, default=1, help="S streams (default 1)")
    p.add_argument("--client-procs", type=int, default=2, help="load-generator processes")
    p.add_argument("--deliveries", type=int, default=300_000, help="eventsxclients per max phase")
    p.add_argument("--min-events", type=int, default=200, help="events per stream, at least")
    p.add_argument("--max-events", type=int, default=3000, help="events per stream, at most")
    p.add_argument("--half-seconds", type=float, default=4.0, help="length of the half phase")
    p.add_argument(
        "--fixed-rate",
        type=float,
        default=20.0,
        help="events/s per stream of the fixed phase (0: skip)",
    )
    p.add_argument("--deadline", type=float, default=60.0, help="phase time limit, seconds")
    p.add_argument("--servers", default=",".join(SERVERS), help="which servers to run")


@dataclasses.dataclass
class Bench:
    args: argparse.Namespace
    redis_url: str
    redis_pid: int | None
    children: Children
    #: Where the event keys are (the queue's Redis, or a cluster node) and its pids.
    events_url: str
    events_pids: list[int]
    urls: dict[str, str]
    pids: dict[str, int]
    helpers: dict[str, Child]


async def phase(b: Bench, server: str, clients: int, events: int, rate: float) -> dict[str, Any]:
    a = b.args
    streams = [uuid.uuid4().hex for _ in range(a.streams)]
    producer: Child | None = None
    if server != "ceiling":
        producer = await b.children.helper(
            "producer",
            "bench.producer",
            {
                "redis_url": b.redis_url,
                "events_url": b.events_url,
                "streams": streams,
                "events": events,
                "rate": rate,
            },
        )
        await producer.recv(30)
    pid = b.pids[server]
    rss_idle = rss_bytes(pid)
    path = "/streams/{}/events?from=0" if server == "sse" else "/streams/{}?from=0"
    urls = [b.urls[server] + path.format(sid) for sid in streams for _ in range(clients)]
    procs = max(1, min(a.client_procs, len(urls)))
    expected = events * len(urls)
    stride = max(1, expected // LAT_SAMPLE)
    gens = []
    for i in range(procs):
        config = {
            "urls": urls[i::procs],
            "mode": "count",
            "stride": stride,
            "deadline_s": a.deadline,
            "idle_s": 5.0,
        }
        gens.append(await b.children.helper(f"loadgen-{i}", "bench.loadgen", config))
    ready = [await g.recv(a.deadline) for g in gens]
    failed = sum(r["failed"] for r in ready)
    rss_loaded = rss_bytes(pid)
    stats0 = commandstats(b.events_url)
    cpu = CpuMeter(pid).start()
    rcpu = CpusMeter(b.events_pids).start()
    t_go = time.time()
    go = {"cmd": "go", "streams": streams, "events": events, "rate": rate}
    (producer or b.helpers["ceiling"]).send(go)
    for g in gens:
        g.send({"cmd": "go"})
    results = [await g.recv(a.deadline + 30) for g in gens]
    cpu.stop()
    rcpu.stop()
    rss_peak = max(rss_loaded, rss_bytes(pid))
    made = await (producer or b.helpers["ceiling"]).recv(a.deadline)
    stats1 = commandstats(b.events_url)
    for child in [*gens, *([producer] if producer else [])]:
        await child.stop()
    b.children.children = [c for c in b.children.children if c not in gens and c is not producer]
    delivered = sum(r["events"] for r in results)
    frames = sum(r["frames"] for r in results)
    last_rx = max((r["last_rx"] for r in results), default=t_go) or t_go
    span = max(last_rx - t_go, 1e-6)
    lat = [x for r in results for x in r["lat_ms"]]
    lat_s = report.summary(lat)
    lat_s["max"] = max((r["lat_max_ms"] for r in results), default=lat_s["max"])
    cmds = commands_between(stats0, stats1)
    n_cmds = sum(cmds.values())
    conns = len(urls)
    return {
        "server": server,
        "clients_per_stream": clients,
        "streams": a.streams,
        "connections": conns,
        "events_per_stream": events,
        "offered_rate_per_stream": rate,
        "delivered": delivered,
        "expected": expected,
        "delivered_fraction": delivered / expected if expected else 0.0,
        "frames": frames,
        "seconds": span,
        "events_per_s": delivered / span,
        "frames_per_s": frames / span,
        "latency_ms": lat_s,
        "latency_quantiles_ms": report.quantiles(lat),
        "server_cpu_cores": cpu.cores,
        "server_cpu_us_per_event": cpu.cpu_s * 1e6 / max(delivered, 1),
        "redis_cpu_cores": rcpu.cores,
        "redis": b.args.redis,
        "redis_nodes": max(len(b.events_pids), 1),
        "client_cpu_cores": sum(r["cpu_s"] for r in results) / span,
        "client_procs": procs,
        "server_rss_idle_bytes": rss_idle,
        "server_rss_bytes": rss_peak,
        "rss_per_connection_bytes": max(rss_peak - rss_idle, 0) / conns,
        "redis_commands": cmds,
        "redis_commands_per_event": n_cmds / max(delivered, 1),
        "connect_failed": failed,
        "closed_early": sum(r["closed_early"] for r in results),
        "close_codes": _merge([r["close_codes"] for r in results]),
        "producer": made,
    }


def _merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sweep = [int(c) for c in args.clients.split(",") if c]
    servers = [s for s in args.servers.split(",") if s]
    if args.redis == "cluster":
        # The naive server reads one Redis; the ceiling has none and stays.
        servers = [s for s in servers if s != "naive"]
    rows: list[dict[str, Any]] = []
    with (
        redis_for(args.redis_url) as (redis_url, redis_pid),
        events_for(args.redis, redis_url, redis_pid) as (events_url, events_pids),
    ):
        async with Children() as children:
            on_cluster = events_url if args.redis == "cluster" else None
            gw, gw_url = await children.gateway(redis_url, events_redis_url=on_cluster)
            urls, pids, helpers = {"streamfan": gw_url}, {"streamfan": gw.pid}, {}
            urls["sse"], pids["sse"] = "http" + gw_url.removeprefix("ws"), gw.pid
            for kind in ("ceiling", "naive"):
                if kind in servers:
                    h = await children.helper(
                        kind, "bench.servers", {"kind": kind, "redis_url": redis_url}
                    )
                    urls[kind], pids[kind], helpers[kind] = (await h.recv(30))["url"], h.pid, h
            b = Bench(
                args, redis_url, redis_pid, children, events_url, events_pids, urls, pids, helpers
            )
            for c in sweep:
                events = max(args.min_events, min(args.max_events, args.deliveries // c))
                max_rows = {}
                for server in servers:
                    progress(f"fanout C={c} {server}: max phase, {events} events/stream")
                    row = await phase(b, server, c, events, 0.0)
                    row["phase"] = "max"
                    rows.append(row)
                    max_rows[server] = row
                ref = max_rows.get("streamfan") or next(iter(max_rows.values()))
                rate = max(1.0, 0.5 * ref["events_per_s"] / (args.streams * c))
                n_half = max(20, min(args.max_events, int(rate * args.half_seconds)))
                plan = [("half", rate, n_half)]
                if args.fixed_rate > 0:
                    n_fixed = max(20, int(args.fixed_rate * args.half_seconds))
                    plan.append(("fixed", args.fixed_rate, n_fixed))
                for name, r, n in plan:
                    for server in servers:
                        progress(f"fanout C={c} {server}: {name} phase, {r:.0f} events/s/stream")
                        row = await phase(b, server, c, n, r)
                        row["phase"] = name
                        rows.append(row)
    return {
        "scenario": "fanout",
        "command": " ".join(["python -m bench fanout", *args.argv]),
        "machine": machine_info(),
        "settings": _settings(),
        "config": {k: v for k, v in vars(args).items() if k not in ("func", "argv")},
        "event_source": "bench.producer: worker.publisher.Publisher (the worker's Lua APPEND), "
        "one event per round trip; latency from bench_t stamped in the event before the write",
        "rows": rows,
        "ratios": ratios(rows),
        "sse_vs_websocket": sse_ratios(rows),
    }


def _settings() -> dict[str, Any]:
    s = dataclasses.asdict(Settings.from_env({}))
    return {k: v for k, v in s.items() if "secret" not in k and "key" not in k}


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["phase"], r["clients_per_stream"], r["server"]): r for r in rows}
    out = []
    for (ph, c, server), r in by.items():
        if server != "streamfan" or ph != "max":
            continue
        item: dict[str, Any] = {"clients_per_stream": c}
        for base in ("ceiling", "naive"):
            other = by.get(("max", c, base))
            if other and other["events_per_s"] > 0:
                item[f"vs_{base}_events_per_s"] = r["events_per_s"] / other["events_per_s"]
                item[f"vs_{base}_frames_per_s"] = r["frames_per_s"] / other["frames_per_s"]
        out.append(item)
    return out


def sse_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The SSE door against the WebSocket, per C: deliveries per server CPU-second
    (``max``) and p99 latency (``fixed``)."""
    by = {(r["phase"], r["clients_per_stream"], r["server"]): r for r in rows}
    out = []
    for (ph, c, server), sse in by.items():
        ws = by.get((ph, c, "streamfan"))
        if server != "sse" or ws is None:
            continue
        item: dict[str, Any] = {"clients_per_stream": c, "phase": ph}
        sse_per_cpu = 1e6 / max(sse["server_cpu_us_per_event"], 1e-9)
        ws_per_cpu = 1e6 / max(ws["server_cpu_us_per_event"], 1e-9)
        item["deliveries_per_cpu_s"] = {"sse": sse_per_cpu, "websocket": ws_per_cpu}
        item["deliveries_per_cpu_s_ratio"] = sse_per_cpu / ws_per_cpu
        item["p99_ms"] = {"sse": sse["latency_ms"]["p99"], "websocket": ws["latency_ms"]["p99"]}
        item["p99_ratio"] = sse["latency_ms"]["p99"] / max(ws["latency_ms"]["p99"], 1e-9)
        out.append(item)
    return out


HEADERS = [
    "C",
    "server",
    "phase",
    "ev/s",
    "frames/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "srv CPU",
    "µs CPU/ev",
    "client CPU",
    "RSS MiB",
    "KiB/conn",
    "redis cmd/ev",
    "delivered",
]


def render(data: dict[str, Any]) -> str:
    rows = [
        [
            r["clients_per_stream"],
            r["server"],
            r["phase"],
            r["events_per_s"],
            r["frames_per_s"],
            r["latency_ms"]["p50"],
            r["latency_ms"]["p99"],
            r["latency_ms"]["max"],
            r["server_cpu_cores"],
            r["server_cpu_us_per_event"],
            r["client_cpu_cores"],
            r["server_rss_bytes"] / 2**20,
            r["rss_per_connection_bytes"] / 1024,
            r["redis_commands_per_event"],
            f"{r['delivered_fraction']:.0%}",
        ]
        for r in data["rows"]
    ]
    out = report.table(HEADERS, rows)
    ratio_rows = [
        [
            x["clients_per_stream"],
            x.get("vs_ceiling_events_per_s", float("nan")),
            x.get("vs_naive_events_per_s", float("nan")),
            x.get("vs_ceiling_frames_per_s", float("nan")),
            x.get("vs_naive_frames_per_s", float("nan")),
        ]
        for x in data["ratios"]
    ]
    sse_rows = [
        [
            x["clients_per_stream"],
            x["phase"],
            x["deliveries_per_cpu_s"]["sse"],
            x["deliveries_per_cpu_s"]["websocket"],
            x["deliveries_per_cpu_s_ratio"],
            x["p99_ms"]["sse"],
            x["p99_ms"]["websocket"],
            x["p99_ratio"],
        ]
        for x in data.get("sse_vs_websocket", [])
    ]
    return (
        out
        + "\n\n"
        + report.table(
            ["C", "ev/s x ceiling", "ev/s x naive", "frames/s x ceiling", "frames/s x naive"],
            ratio_rows,
        )
        + "\n\n"
        + report.table(
            ["C", "phase", "SSE ev/CPU-s", "WS ev/CPU-s", "x", "SSE p99", "WS p99", "x"],
            sse_rows,
        )
    )


def main(args: argparse.Namespace) -> dict[str, Any]:
    data = asyncio.run(run(args))
    # Written before it is rendered: a report bug must not lose a run.
    path = report.write_json("fanout", data, args.out)
    print(render(data))
    progress(f"wrote {path}")
    return data
