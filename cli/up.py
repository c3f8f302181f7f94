"""``streamfan up``: everything on one machine, for trying it out.

Starts, as child processes: an embedded Valkey server (unless
``STREAMFAN_REDIS_URL`` is set; data and its append-only file in ``--data-dir`` so
a restart keeps finished streams), the mock upstream (unless
``STREAMFAN_UPSTREAM_BASE_URL`` is set), ``--workers`` worker processes (one
``streamfan worker --processes N``) and ``--gateways`` gateways (each on its own
port). It records where they listen in a state file (:mod:`cli.upstate`) so the
commands in other terminals find this run. It submits one demo prompt and prints the demo
page's URL with a token. Ctrl-C (SIGINT) or SIGTERM stops every child, gateways
first, and waits for them: no process and no port is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from cli import upstate
from cli.redis_server import RedisServer
from streamfan.client import Client
from streamfan.errors import StreamfanError
from streamfan.settings import DEFAULT_HOST, DEFAULT_PORT, Settings
from worker.processes import parse_processes

#: How long a child may take to become ready.
START_TIMEOUT_S = 30.0
#: How long a child may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 5.0
DEMO_TOKENS_PER_S = 40
DEMO_TTFT_MS = 300
DEMO_REPLY_TOKENS = 400
DEMO_PROMPT = "Tell me, in a few paragraphs, what streamfan does."
#: What ``streamfan gateway`` and ``streamfan mock-upstream`` print once they accept.
LISTENING = re.compile(r"listening on (\S+)")


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
    parser.add_argument(
        "--workers",
        default="1",
        metavar="N",
        help="worker processes, under one `streamfan worker --processes N`; 'auto' = one per core",
    )
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
        self.state_path: Path | None = None

    def _spawn(self, name: str, *argv: str, stdout: int | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *argv],
            env=self.env,
            stdout=stdout,
            # Unbuffered: _Announcement selects on the pipe and reads what is there.
            bufsize=0,
            # Own process group: a terminal's Ctrl-C reaches `up` alone, which then
            # stops the children in order.
            start_new_session=True,
        )
        self.children.append((name, proc))
        return proc

    def _spawn_server(self, name: str, *argv: str) -> tuple[subprocess.Popen[bytes], str]:
        """Start a server child on ``--port`` as given (0 too); the URL it announces."""
        proc = self._spawn(name, *argv, stdout=subprocess.PIPE)
        announced = _Announcement(proc)
        _wait_until(self, proc, f"the {name}", announced.ready)
        announced.forward()
        return proc, announced.url

    def start(self) -> tuple[Settings, list[int]]:
        a = self.args
        try:
            workers = parse_processes(a.workers)
        except ValueError as exc:
            raise StreamfanError(f"--workers: {exc}") from None
        if a.gateways < 1:
            raise StreamfanError("--gateways must be at least 1")
        if "STREAMFAN_REDIS_URL" not in self.env:
            data = Path(a.data_dir) / "redis"
            self.redis = RedisServer(host=a.host, data_dir=data).start()
            self.env["STREAMFAN_REDIS_URL"] = self.redis.url
            print(f"redis     {self.redis.url} (data in {data})", flush=True)
        if "STREAMFAN_UPSTREAM_BASE_URL" not in self.env:
            _proc, base_url = self._spawn_server(
                "mock-upstream", "mock-upstream", "--host", a.host, "--port", "0",
                # A pace a person can watch: about what a hosted model streams.
                "--tokens-per-s", str(DEMO_TOKENS_PER_S), "--ttft-ms", str(DEMO_TTFT_MS),
                "--reply-tokens", str(DEMO_REPLY_TOKENS),
            )  # fmt: skip
            self.env["STREAMFAN_UPSTREAM_BASE_URL"] = base_url
            self.env.setdefault("STREAMFAN_UPSTREAM_API_KEY", "sk-mock")
            print(f"upstream  {base_url} (mock)", flush=True)
        if not self.env.get("STREAMFAN_JWT_SECRET"):
            # A fresh secret per run: tokens printed below work for this run only.
            self.env["STREAMFAN_JWT_SECRET"] = secrets.token_urlsafe(32)
        gateways = []
        for i in range(a.gateways):
            asked = 0 if a.port == 0 else a.port + i
            proc, url = self._spawn_server(
                "gateway", "gateway", "--host", a.host, "--port", str(asked)
            )
            # What the gateway bound, not what was asked: with --port 0 the only source.
            gateways.append((proc, urlsplit(url).port or asked))
        ports = [port for _proc, port in gateways]
        for proc, port in gateways:
            _wait_until(
                self,
                proc,
                "the gateway",
                functools.partial(_answers_200, f"http://{a.host}:{port}/readyz"),
            )
            print(f"gateway   ws://{a.host}:{port}/ws", flush=True)
        # The first gateway's real address, for the children and the demo below.
        self.env["STREAMFAN_HOST"] = a.host
        self.env["STREAMFAN_PORT"] = str(ports[0])
        settings = Settings.from_env(self.env)
        # One command for every worker process: `streamfan worker --processes N`
        # restarts one that dies, as a deployment's would.
        supervisor = self._spawn("worker", "worker", "--processes", str(workers))
        shown = "1 process" if workers == 1 else f"{workers} processes, one supervisor"
        print(f"workers   {shown} (pid {supervisor.pid})", flush=True)
        return settings, ports

    def record(self, ports: list[int]) -> Path:
        """Write the state file other terminals' commands find this run by."""
        path = upstate.state_path(os.environ)
        try:
            before = upstate.UpState.from_json(path.read_bytes())
        except (OSError, ValueError):
            before = None
        if before is not None and before.pid != os.getpid() and upstate.is_running(before):
            print(
                f"note      another streamfan up (pid {before.pid}) is running; "
                "other terminals now find this one",
                flush=True,
            )
        pids: dict[str, list[int]] = {}
        if self.redis is not None and self.redis.proc is not None:
            pids["redis"] = [self.redis.proc.pid]
        for name, proc in self.children:
            pids.setdefault(name, []).append(proc.pid)
        state = upstate.UpState(
            pid=os.getpid(),
            pid_start=upstate.process_start(os.getpid()),
            started_at=time.time(),
            settings={k: self.env[k] for k in upstate.CLIENT_SETTINGS if k in self.env},
            gateway_urls=tuple(f"http://{self.args.host}:{port}" for port in ports),
            pids=pids,
        )
        upstate.write(path, state)
        self.state_path = path
        return path

    def stop(self) -> None:
        # The file first: a command run from now on must not find a run half gone.
        if self.state_path is not None:
            upstate.remove(self.state_path, os.getpid())
            self.state_path = None
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


class _Announcement:
    """A server child's ``listening on URL`` line, read from its stdout pipe.

    ``ready()`` never blocks (it reads what the pipe holds), so ``_wait_until``
    can keep watching the stop flag and the child; ``forward()`` then copies the
    rest of the child's stdout to ours for as long as it runs.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buffer = b""
        self.url = ""

    def ready(self) -> bool:
        while not self.url and select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return False  # the child closed it: _wait_until sees it exit
            self.buffer += chunk
            while b"\n" in self.buffer and not self.url:
                line, _, self.buffer = self.buffer.partition(b"\n")
                if match := LISTENING.search(line.decode(errors="replace")):
                    self.url = match.group(1)
                else:
                    _write_out(line + b"\n")
        return bool(self.url)

    def forward(self) -> None:
        if self.buffer:
            _write_out(self.buffer)
        threading.Thread(target=_copy_out, args=(self.fd,), daemon=True).start()


def _write_out(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _copy_out(fd: int) -> None:
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 65536):
            _write_out(chunk)


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
        path = up.record(ports)
        # Children inherit the environment we built; commands in other terminals of
        # this user find it in the state file; anywhere else needs the export.
        print(
            f"\nstate     {path}: the commands in your other terminals use this run;\n"
            "          for anywhere else:\n"
            f"export STREAMFAN_REDIS_URL={up.env['STREAMFAN_REDIS_URL']} "
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
