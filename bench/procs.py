"""Child processes: the gateway, worker and mock upstream under test, and bench helpers.

Every child is started with ``asyncio.create_subprocess_exec``; bench helpers
(load generators, producer, baseline servers) talk to the parent in JSON lines
on stdin/stdout. :class:`Children` stops whatever is still running on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from bench.machine import raise_nofile
from cli.redis_cluster import RedisCluster
from cli.redis_server import RedisServer

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent
LOG_DIR = Path(os.environ.get("BENCH_LOG_DIR", "/tmp/streamfan-bench-logs"))


def _child_setup() -> None:
    raise_nofile()


def child_env(**streamfan: Any) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("STREAMFAN_LOG_LEVEL", "WARNING")
    for key, value in streamfan.items():
        if value is not None:
            env["STREAMFAN_" + key.upper()] = str(value)
    return env


class Child:
    """One child process; ``send``/``recv`` exchange JSON lines with bench helpers."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def line(self, wait_s: float) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), wait_s)
        if not raw:
            raise RuntimeError(f"{self.name} exited (code {await self.proc.wait()}); see {LOG_DIR}")
        return raw.decode().strip()

    async def recv(self, wait_s: float) -> dict[str, Any]:
        while True:
            text = await self.line(wait_s)
            if text.startswith("{"):
                value: dict[str, Any] = json.loads(text)
                return value

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")

    async def stop(self, wait_s: float = 10.0) -> None:
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), wait_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


class Children:
    """Starts children and stops them all (in reverse order) on exit."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    async def __aenter__(self) -> Children:
        LOG_DIR.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start
        return self

    async def __aexit__(self, *exc: object) -> None:
        for child in reversed(self.children):
            await child.stop()

    async def start(
        self, name: str, args: list[str], env: dict[str, str] | None = None, stdin: bool = False
    ) -> Child:
        log = open(LOG_DIR / f"{name}.log", "ab")  # noqa: SIM115, ASYNC230 - owned by the child
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=env or child_env(),
            cwd=str(REPO),
            preexec_fn=_child_setup,
            limit=2**26,
        )
        log.close()
        child = Child(name, proc)
        self.children.append(child)
        return child

    async def helper(self, name: str, module: str, config: dict[str, Any]) -> Child:
        """``python -m bench.MODULE``; its config is the first JSON line on its stdin."""
        child = await self.start(name, [PY, "-m", module], stdin=True)
        child.send(config)
        return child

    async def gateway(self, redis_url: str, **settings: Any) -> tuple[Child, str]:
        """``streamfan gateway --port 0 --insecure-no-auth``; returns it and its ws:// URL."""
        env = child_env(redis_url=redis_url, **settings)
        child = await self.start(
            "gateway",
            [PY, "-m", "cli", "gateway", "--port", "0", "--insecure-no-auth"],
            env,
        )
        while True:
            text = await child.line(30)
            if text.startswith("listening on "):
                return child, text.removeprefix("listening on ").strip()

    async def mock_upstream(self) -> tuple[Child, str]:
        child = await self.start("mock-upstream", [PY, "-m", "cli", "mock-upstream", "--port", "0"])
        while True:
            text = await child.line(30)
            if "listening on " in text:
                return child, text.rsplit(" ", 1)[1]

    async def lean_upstream(self, procs: int = 1) -> tuple[list[Child], str]:
        """``procs`` processes of :mod:`bench.lean_upstream` sharing one port; their URL."""
        first = await self.helper("lean-upstream-0", "bench.lean_upstream", {"port": 0})
        url = (await first.recv(30))["url"]
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        rest = [
            await self.helper(f"lean-upstream-{i}", "bench.lean_upstream", {"port": port})
            for i in range(1, procs)
        ]
        for child in rest:
            await child.recv(30)
        return [first, *rest], url

    async def upstream(self, kind: str, procs: int = 1) -> tuple[list[Child], str]:
        """The upstream a scenario reads: ``lean`` (default) or the full ``mock``."""
        if kind == "mock":
            child, url = await self.mock_upstream()
            return [child], url
        return await self.lean_upstream(procs)

    async def worker(
        self, redis_url: str, upstream: str, metrics_port: int, **settings: Any
    ) -> Child:
        """``streamfan worker``; returns once its metrics answer and it listens for nudges."""
        env = child_env(
            redis_url=redis_url,
            upstream_base_url=upstream,
            upstream_api_key="sk-bench",
            worker_metrics_port=metrics_port,
            **settings,
        )
        child = await self.start("worker", [PY, "-m", "cli", "worker"], env)
        # The worker listens for nudges on the events Redis (any node of a cluster:
        # the one in the URL).
        r = aioredis.Redis.from_url(settings.get("events_redis_url") or redis_url)
        try:
            async with httpx.AsyncClient() as http:
                for _ in range(600):
                    if child.proc.returncode is not None:
                        raise RuntimeError(f"worker exited; see {LOG_DIR}/worker.log")
                    try:
                        await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
                        numsub = await r.pubsub_numsub("streamfan:jobs")
                        if numsub and numsub[0][1] >= 1:
                            return child
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
        finally:
            await r.aclose()
        raise RuntimeError("worker did not start")


def add_upstream_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--upstream",
        choices=("lean", "mock"),
        default="lean",
        help="lean: pre-encoded chunks (bench/lean_upstream.py); mock: streamfan mock-upstream",
    )
    p.add_argument(
        "--upstream-procs", type=int, default=1, help="lean upstream processes (one port)"
    )


@contextlib.contextmanager
def events_for(kind: str, queue_url: str, queue_pid: int | None) -> Iterator[tuple[str, list[int]]]:
    """(events URL, server pids): the queue's Redis (``single``), or a fresh local
    3-master Redis Cluster (``cluster``) for the event keys."""
    if kind == "single":
        yield queue_url, [queue_pid] if queue_pid else []
        return
    with RedisCluster(masters=3) as cluster:
        yield cluster.url, [n.proc.pid for n in cluster.nodes if n.proc is not None]


@contextlib.contextmanager
def redis_for(url: str | None) -> Iterator[tuple[str, int | None]]:
    """(URL, server pid): the given Redis (pid unknown), or a fresh Valkey child."""
    if url:
        yield url, None
        return
    with RedisServer() as server:
        yield server.url, server.proc.pid if server.proc else None


async def scrape(port: int) -> dict[str, float]:
    """A Prometheus text page as {sample name (with labels): value}."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


@contextlib.asynccontextmanager
async def profiling(
    out_dir: str | None, pid: int, name: str, seconds: float
) -> AsyncIterator[None]:
    """Record ``pid`` with py-spy for ``seconds`` (folded stacks in ``out_dir``), if asked."""
    if not out_dir:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(PY).with_name("py-spy"))
    out = Path(out_dir) / f"{name}.folded"
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(int(seconds) - 1, 1)),
        "--rate",
        "200",
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        await proc.wait()
