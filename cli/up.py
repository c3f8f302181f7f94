"""``streamfan up``: everything on one machine, for trying it out.

Starts, as child processes: an embedded Valkey server (unless
``STREAMFAN_REDIS_URL`` is set; data and its append-only file in ``--data-dir`` so
a restart keeps finished streams), the mock upstream (unless
``STREAMFAN_UPSTREAM_BASE_URL`` is set), ``--workers`` workers and ``--gateways``
gateways (each on its own port). It submits one demo prompt and prints the demo
page's URL with a token. Ctrl-C (SIGINT) or SIGTERM stops every child, gateways
first, and waits for them: no process and no port is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from cli.redis_server import RedisServer, free_port
from streamfan.client import Client
from streamfan.errors import StreamfanError
from streamfan.settings import DEFAULT_HOST, DEFAULT_PORT, Settings

#: How long a child may take to become ready.
START_TIMEOUT_S = 30.0
#: How long a child may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 5.0
DEMO_TOKENS_PER_S = 40
DEMO_TTFT_MS = 300
DEMO_REPLY_TOKENS = 400
DEMO_PROMPT = "Tell me, in a few paragraphs, what streamfan does."


class _StopRequested(Exception):
    """SIGINT/SIGTERM arrived while starting: stop what started, and exit."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help="address of every server")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"first gateway's port (default {DEFAULT_PORT}, 0 = free ports); gateway i: PORT+i",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--gateways", type=int, default=1, help="gateway processes")
    parser.add_argument(
        "--data-dir",
        default=".streamfan",
        help="where the embedded Redis keeps its data (default ./.streamfan)",
    )
    parser.add_argument("--no-demo", action="store_true", help="do not submit a demo prompt")


class Up:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.redis: RedisServer | None = None
        self.env = dict(os.environ)
        #: Set by SIGINT/SIGTERM; every wait checks it.
        self.stopping = False

    def _spawn(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *argv],
            env=self.env,
            # Own process group: a terminal's Ctrl-C reaches `up` alone, which then
            # stops the children in order.
            start_new_session=True,
        )
        self.children.append((name, proc))
        return proc

    def start(self) -> tuple[Settings, list[int]]:
        a = self.args
        if a.workers < 1 or a.gateways < 1:
            raise StreamfanError("--workers and --gateways must be at least 1")
        if "STREAMFAN_REDIS_URL" not in self.env:
            data = Path(a.data_dir) / "redis"
            self.redis = RedisServer(host=a.host, data_dir=data).start()
            self.env["STREAMFAN_REDIS_URL"] = self.redis.url
            print(f"redis     {self.redis.url} (data in {data})", flush=True)
        if "STREAMFAN_UPSTREAM_BASE_URL" not in self.env:
            port = free_port(a.host)
            self._spawn(
                "mock-upstream", "mock-upstream", "--host", a.host, "--port", str(port),
                # A pace a person can watch: about what a hosted model streams.
                "--tokens-per-s", str(DEMO_TOKENS_PER_S), "--ttft-ms", str(DEMO_TTFT_MS),
                "--reply-tokens", str(DEMO_REPLY_TOKENS),
            )  # fmt: skip
            _wait_until(
                self,
                self.children[-1][1],
                "the mock upstream",
                functools.partial(_listening, a.host, port),
            )
            self.env["STREAMFAN_UPSTREAM_BASE_URL"] = f"http://{a.host}:{port}/v1"
            self.env.setdefault("STREAMFAN_UPSTREAM_API_KEY", "sk-mock")
            print(f"upstream  http://{a.host}:{port}/v1 (mock)", flush=True)
        if not self.env.get("STREAMFAN_JWT_SECRET"):
            # A fresh secret per run: tokens printed below work for this run only.
            self.env["STREAMFAN_JWT_SECRET"] = secrets.token_urlsafe(32)
        settings = Settings.from_env(self.env)
        for _ in range(a.workers):
            self._spawn("worker", "worker")
        ports = [free_port(a.host) if a.port == 0 else a.port + i for i in range(a.gateways)]
        for port in ports:
            self._spawn("gateway", "gateway", "--host", a.host, "--port", str(port))
        for port, (_name, proc) in zip(ports, self.children[-len(ports) :], strict=True):
            _wait_until(
                self,
                proc,
                "the gateway",
                functools.partial(_answers_200, f"http://{a.host}:{port}/readyz"),
            )
            print(f"gateway   ws://{a.host}:{port}/ws", flush=True)
        return settings, ports

    def stop(self) -> None:
        # Gateways first (clients get "going away"), then workers (they hand their
        # jobs back), then the upstream, then Redis.
        order = {"gateway": 0, "worker": 1, "mock-upstream": 2}
        for _name, proc in sorted(self.children, key=lambda c: order.get(c[0], 9)):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.children.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None


def _wait_until(
    up: Up, proc: subprocess.Popen[bytes], what: str, ready: Callable[[], bool]
) -> None:
    """Poll ``ready()`` until it is true; fail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if up.stopping:
            raise _StopRequested
        if proc.poll() is not None:
            raise StreamfanError(f"{what} exited at start (code {proc.returncode})")
        if ready():
            return
        time.sleep(0.05)
    raise StreamfanError(f"{what} was not ready within {START_TIMEOUT_S:g} s")


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


#: The demo page's submit token lives this long (seconds): a demo, not a credential.
DEMO_SUBMIT_TTL_S = 3600.0


def _answers_200(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


async def _demo(settings: Settings, host: str, port: int) -> None:
    async with Client(settings) as sf:
        sub = await sf.submit(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": DEMO_PROMPT}]}
        )
        token = sf.token(["*"], cancel=True)
        # The page's prompt box submits through /v1/chat/completions with this one.
        submit = sf.token([], submit=True, ttl_s=DEMO_SUBMIT_TTL_S)
    print(
        f"\ndemo page  http://{host}:{port}/?stream={sub.stream_id}&token={token}&submit={submit}\n"
        f"terminal   streamfan tail {sub.stream_id}\n"
        f"submit     streamfan submit 'your prompt' --follow\n"
        "Ctrl-C stops everything.",
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    up = Up(args)

    def on_signal(signum: int, _frame: object) -> None:
        # Only a flag: raising here could interrupt stop() half-way and leave
        # children behind; a second Ctrl-C changes nothing.
        up.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        settings, ports = up.start()
        # Children inherit the environment we built; commands in this shell don't.
        print(
            f"\nexport STREAMFAN_REDIS_URL={up.env['STREAMFAN_REDIS_URL']} "
            f"STREAMFAN_JWT_SECRET={up.env['STREAMFAN_JWT_SECRET']}",
            flush=True,
        )
        if not args.no_demo:
            asyncio.run(_demo(settings, args.host, ports[0]))
        while not up.stopping:
            for name, proc in up.children:
                if proc.poll() is not None:
                    raise StreamfanError(f"{name} exited unexpectedly (code {proc.returncode})")
            time.sleep(0.2)
    except _StopRequested:
        pass
    finally:
        if up.children or up.redis is not None:
            print("\nstopping…", file=sys.stderr, flush=True)
        up.stop()
    return 0
