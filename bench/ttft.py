"""Scenario ``ttft``: the time streamfan adds to the first token.

``Client.submit`` → the first ``delta`` at a WebSocket client subscribed through
the gateway, minus the mock upstream's own time to first token (``ttft_ms``).
Measured over ``--jobs`` jobs one after another, at idle and while ``--background``
streams run on the same worker. Everything is a real process: Valkey, the mock
upstream, ``streamfan worker`` (StreamfanWorker, nudged on submit) and
``streamfan gateway``; the measuring client (submit + one WebSocket) is this process.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson

from bench import report
from bench.fanout import _settings
from bench.machine import CpuMeter, machine_info
from bench.procs import Children, add_upstream_arguments, redis_for, scrape
from bench.report import progress
from bench.wsclient import WSClient
from cli.redis_server import free_port
from streamfan import protocol
from streamfan.client import Client
from streamfan.settings import Settings

W = "streamfan_worker_"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, default=200, help="measured jobs at idle")
    p.add_argument("--loaded-jobs", type=int, default=None, help="measured jobs under load")
    p.add_argument("--background", type=int, default=500, help="streams running in 'loaded'")
    p.add_argument("--background-rate", type=float, default=20.0, help="their tokens/s")
    p.add_argument("--upstream-ttft-ms", type=float, default=20.0, help="the mock's own TTFT")
    p.add_argument("--skip-loaded", action="store_true", help="measure at idle only")
    add_upstream_arguments(p)


class Watcher(WSClient):
    """One ``/ws`` connection; resolves per-stream futures on start, first delta and end."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.waiting: dict[str, dict[str, asyncio.Future[float]]] = {}

    def expect(self, sid: str) -> dict[str, asyncio.Future[float]]:
        loop = asyncio.get_running_loop()
        futs = {k: loop.create_future() for k in ("start", "delta", "end")}
        self.waiting[sid] = futs
        self.send_text(orjson.dumps({"op": "subscribe", "stream": sid, "from": "0"}))
        return futs

    def on_message(self, data: bytes) -> None:
        now = time.perf_counter()
        for msg in protocol.split_frame(data):
            futs = self.waiting.get(str(msg.get("stream")))
            if futs is None:
                continue
            kind = msg.get("op")
            if kind == "event":
                kind = msg["event"].get("type")
            if kind == "error":
                for f in futs.values():
                    if not f.done():
                        f.set_exception(RuntimeError(str(msg)))
            elif kind in futs and not futs[kind].done():
                futs[kind].set_result(now)


def body(tokens: int, ttft_ms: float, rate: float = 0.0) -> dict[str, Any]:
    mock = {"reply_tokens": tokens, "ttft_ms": ttft_ms, "tokens_per_s": rate}
    return {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "mock": mock}


async def measure(sf: Client, ws: Watcher, jobs: int, ttft_ms: float) -> dict[str, Any]:
    added, start, submit, ids = [], [], [], []
    for i in range(jobs):
        t0 = time.perf_counter()
        sub = await sf.submit(body(4, ttft_ms))
        t1 = time.perf_counter()
        futs = ws.expect(sub.stream_id)
        async with asyncio.timeout(30):
            t_start = await futs["start"]
            t_delta = await futs["delta"]
            await futs["end"]
        ws.waiting.pop(sub.stream_id, None)
        submit.append((t1 - t0) * 1000)
        start.append((t_start - t0) * 1000)
        added.append((t_delta - t0) * 1000 - ttft_ms)
        ids.append(sub.stream_id)
        if (i + 1) % 10 == 0:
            progress(f"ttft: {i + 1}/{jobs} jobs")
    return {
        "jobs": jobs,
        "added_ms": report.summary(added),
        "to_start_event_ms": report.summary(start),
        "submit_call_ms": report.summary(submit),
        # The slowest jobs by stream id, to find them in the worker's log.
        "slowest": sorted(
            ({"stream_id": i, "added_ms": a} for i, a in zip(ids, added, strict=True)),
            key=lambda j: -j["added_ms"],
        )[:3],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    phases = []
    with redis_for(args.redis_url) as (redis_url, _pid):
        async with Children() as children:
            ups, upstream = await children.upstream(args.upstream, args.upstream_procs)
            port = free_port()
            worker = await children.worker(
                redis_url, upstream, port, worker_max_jobs=args.background + 50
            )
            gw, gw_url = await children.gateway(redis_url)
            settings = Settings.from_env({}, redis_url=redis_url)
            async with Client(settings) as sf:
                ws = Watcher(gw_url + "/ws")
                await ws.connect()
                await measure(sf, ws, 5, args.upstream_ttft_ms)  # warm-up
                progress(f"ttft: idle, {args.jobs} jobs")
                pids = {"worker": worker.pid, "gateway": gw.pid}
                pids.update({f"upstream-{i}": u.pid for i, u in enumerate(ups)})
                meters = {k: CpuMeter(pid).start() for k, pid in pids.items()}
                res = await measure(sf, ws, args.jobs, args.upstream_ttft_ms)
                phases.append(_phase("idle", 0, res, meters))
                if not args.skip_loaded and args.background > 0:
                    phases.append(await loaded(args, sf, ws, port, pids))
                ws.close()
    return {
        "scenario": "ttft",
        "command": " ".join(["python -m bench ttft", *args.argv]),
        "machine": machine_info(),
        "settings": _settings(),
        "config": {k: v for k, v in vars(args).items() if k not in ("func", "argv", "out")},
        "phases": phases,
    }


async def loaded(
    args: argparse.Namespace, sf: Client, ws: Watcher, port: int, pids: dict[str, int]
) -> dict[str, Any]:
    n, rate = args.background, args.background_rate
    progress(f"ttft: starting {n} background streams at {rate:g} tokens/s")
    tokens = int(rate * 600)  # far longer than the phase; cancelled at the end
    bg = [(await sf.submit(body(tokens, 0, rate))).stream_id for _ in range(n)]
    deadline = time.monotonic() + 60
    running = 0.0
    while time.monotonic() < deadline:
        running = (await scrape(port)).get("streamfan_worker_streams_running", 0.0)
        if running >= n:
            break
        await asyncio.sleep(0.2)
    jobs = args.jobs if args.loaded_jobs is None else args.loaded_jobs
    progress(f"ttft: {running:.0f} streams running; {jobs} jobs")
    meters = {k: CpuMeter(pid).start() for k, pid in pids.items()}
    m0 = await scrape(port)
    res = await measure(sf, ws, jobs, args.upstream_ttft_ms)
    m1 = await scrape(port)
    out = _phase("loaded", int(running), res, meters)
    # The admission signals at the end of the phase, and the jobs declined in it.
    out["worker_loop_lag_ms"] = m1.get(W + "loop_lag_seconds", 0.0) * 1000
    out["worker_cpu_signal_cores"] = m1.get(W + "cpu_cores", 0.0)
    out["jobs_declined"] = m1.get(W + "jobs_declined_total", 0.0) - m0.get(
        W + "jobs_declined_total", 0.0
    )
    await asyncio.gather(*(sf.cancel(sid) for sid in bg))
    return out


def _phase(
    name: str, running: int, res: dict[str, Any], meters: dict[str, CpuMeter]
) -> dict[str, Any]:
    for meter in meters.values():
        meter.stop()
    return {
        "phase": name,
        "background_streams": running,
        **res,
        "worker_cpu_cores": meters["worker"].cores,
        "gateway_cpu_cores": meters["gateway"].cores,
        "upstream_cpu_cores": sum(m.cores for k, m in meters.items() if k.startswith("up")),
    }


def render(data: dict[str, Any]) -> str:
    headers = [
        "phase",
        "streams running",
        "jobs",
        "added p50 ms",
        "added p99 ms",
        "added max ms",
        "submit p50 ms",
        "worker CPU",
        "upstream CPU",
    ]
    rows = [
        [
            p["phase"],
            p["background_streams"],
            p["jobs"],
            p["added_ms"]["p50"],
            p["added_ms"]["p99"],
            p["added_ms"]["max"],
            p["submit_call_ms"]["p50"],
            p["worker_cpu_cores"],
            p["upstream_cpu_cores"],
        ]
        for p in data["phases"]
    ]
    return report.table(headers, rows)


def main(args: argparse.Namespace) -> dict[str, Any]:
    data = asyncio.run(run(args))
    print(render(data))
    progress(f"wrote {report.write_json('ttft', data, args.out)}")
    return data
