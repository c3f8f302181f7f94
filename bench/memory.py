"""Scenario ``memory``: N idle subscribed connections on one gateway, then none.

``--connections`` clients in ``--client-procs`` load-generator processes each
subscribe to one of ``--streams`` running, idle streams. Reported: the gateway's
RSS (/proc) before, with the connections (RSS per connection), a second after
they all left, and once the gateway handed memory back (it trims on its own once
``Tuning.trim_min_drop`` connections left: :mod:`gateway.memory`; the bench
waits for ``streamfan_gateway_memory_trims_total`` to move), over ``--rounds``
rounds: a leak shows as RSS that climbs round after round; the allocator
keeping freed arenas shows as a step that does not.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import httpx
import redis.asyncio as aioredis

from bench import report
from bench.fanout import _settings
from bench.machine import machine_info, open_fds, rss_bytes
from bench.procs import Children, redis_for
from bench.producer import claim
from bench.report import progress
from gateway.tuning import Tuning
from streamfan.settings import Settings
from worker.publisher import Publisher

WARMUP_CONNECTIONS = 50
#: How long the gateway may take to trim after the last connection left: two of
#: its checks (the first may fall during the exodus), and some slack.
TRIM_WAIT_S = 4 * Tuning().trim_check_s + 10


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connections", type=int, default=10_000, help="idle connections (N)")
    p.add_argument("--streams", type=int, default=100, help="streams they subscribe to")
    p.add_argument("--client-procs", type=int, default=4, help="load-generator processes (2-4)")
    p.add_argument("--rounds", type=int, default=2, help="connect-and-leave rounds")


async def gauge(gw_url: str, name: str) -> float:
    """One sample of the gateway's /metrics, by name (``streamfan_gateway_`` + ``name``)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get("http" + gw_url[2:] + "/metrics")).text
    for line in text.splitlines():
        if line.startswith(f"streamfan_gateway_{name} "):
            return float(line.split()[1])
    raise RuntimeError(f"the gateway's /metrics has no {name}")


async def hold(children: Children, urls: list[str], procs: int, gw_pid: int) -> dict[str, Any]:
    gw_url = urls[0].split("/streams/")[0]
    trims0 = await gauge(gw_url, "memory_trims_total")
    trim_s0 = await gauge(gw_url, "memory_trim_seconds_total")
    gens = []
    for i in range(procs):
        cfg = {"urls": urls[i::procs], "mode": "idle", "connect_timeout": 60}
        gens.append(await children.helper(f"idle-{i}", "bench.loadgen", cfg))
    ready = [await g.recv(300) for g in gens]
    await asyncio.sleep(1.0)
    loaded, fds = rss_bytes(gw_pid), open_fds(gw_pid)
    for g in gens:
        g.send({"cmd": "close"})
    for g in gens:
        await g.recv(60)
        await g.stop()
    children.children = [c for c in children.children if c not in gens]
    t_left = time.monotonic()
    # Polling the gateway's metrics: there is no event to wait on.
    while await gauge(gw_url, "open_connections") > 0 and time.monotonic() < t_left + 30:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    left = rss_bytes(gw_pid)
    # Normally 0: the gateway trims once the exodus stopped, a check or two later.
    trims = trims_at_left = await gauge(gw_url, "memory_trims_total") - trims0
    connected = sum(r["ready"] for r in ready)
    if connected >= Tuning().trim_min_drop:
        deadline = time.monotonic() + TRIM_WAIT_S
        while trims < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            trims = await gauge(gw_url, "memory_trims_total") - trims0
    return {
        "connected": connected,
        "failed": sum(r["failed"] for r in ready),
        "errors": [e for r in ready for e in r["errors"]][:5],
        "rss_loaded_bytes": loaded,
        "fds_loaded": fds,
        "rss_left_bytes": left,
        "rss_after_bytes": rss_bytes(gw_pid),
        "fds_after": open_fds(gw_pid),
        "trims": int(trims),
        "trims_at_left": int(trims_at_left),
        "trim_cpu_s": await gauge(gw_url, "memory_trim_seconds_total") - trim_s0,
        "trim_after_s": time.monotonic() - t_left if trims else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds = []
    n, procs = args.connections, max(1, min(args.client_procs, args.connections))
    with redis_for(args.redis_url) as (redis_url, _pid):
        r = aioredis.Redis.from_url(redis_url)
        settings = Settings.from_env({}, redis_url=redis_url)
        pub = Publisher(r, settings)
        sids = [uuid.uuid4().hex for _ in range(args.streams)]
        for sid in sids:
            await claim(pub, settings, sid)
        async with Children() as children:
            gw, url = await children.gateway(redis_url)
            urls = [f"{url}/streams/{sids[i % len(sids)]}?from=0" for i in range(n)]
            await hold(children, urls[:WARMUP_CONNECTIONS], 1, gw.pid)
            base = rss_bytes(gw.pid)
            progress(f"memory: gateway RSS {base / 2**20:.1f} MiB after warm-up")
            for i in range(args.rounds):
                progress(f"memory: round {i + 1}: {n} connections in {procs} processes")
                res = await hold(children, urls, procs, gw.pid)
                res["rss_per_connection_bytes"] = (res["rss_loaded_bytes"] - base) / max(
                    res["connected"], 1
                )
                res["rss_left_minus_baseline_bytes"] = res["rss_left_bytes"] - base
                res["rss_after_minus_baseline_bytes"] = res["rss_after_bytes"] - base
                rounds.append(res)
        await r.aclose()
    return {
        "scenario": "memory",
        "command": " ".join(["python -m bench memory", *args.argv]),
        "machine": machine_info(),
        "settings": _settings(),
        "config": {k: v for k, v in vars(args).items() if k not in ("func", "argv", "out")},
        "baseline_rss_bytes": base,
        "rounds": rounds,
    }


def render(data: dict[str, Any]) -> str:
    headers = [
        "round",
        "connected",
        "failed",
        "RSS base MiB",
        "RSS loaded MiB",
        "KiB/conn",
        "RSS left MiB",
        "RSS after trim MiB",
        "after - base MiB",
        "trims",
        "trim CPU ms",
    ]
    base = data["baseline_rss_bytes"]
    rows = [
        [
            i + 1,
            r["connected"],
            r["failed"],
            base / 2**20,
            r["rss_loaded_bytes"] / 2**20,
            r["rss_per_connection_bytes"] / 1024,
            r["rss_left_bytes"] / 2**20,
            r["rss_after_bytes"] / 2**20,
            r["rss_after_minus_baseline_bytes"] / 2**20,
            r["trims"],
            r["trim_cpu_s"] * 1000,
        ]
        for i, r in enumerate(data["rounds"])
    ]
    return report.table(headers, rows)


def main(args: argparse.Namespace) -> dict[str, Any]:
    data = asyncio.run(run(args))
    print(render(data))
    progress(f"wrote {report.write_json('memory', data, args.out)}")
    return data
