"""Fixtures for the browser tests: headless Chromium, and the gateway as a child process.

* ``browser``: Debian's Chromium (``/usr/bin/chromium``) driven by Playwright. A
  machine without it fails the test with how to install it: a skip is not a pass.
* ``gateway_process``: ``streamfan gateway`` as a child process that a test can
  stop with SIGTERM and start again **on the same port**, as an operator's restart
  would; the page's client must ride through it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from streamfan.settings import Settings

CHROMIUM = Path(os.environ.get("STREAMFAN_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Screenshots and other artefacts a person may want to look at (gitignored).
OUTPUT_DIR = Path(__file__).resolve().parent.parent / "output"
#: How long the gateway may take to start or stop.
PROCESS_WAIT_S = 20.0


@pytest.fixture
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the browser tests need it "
            "(apt-get install chromium, as .ci/run does; or set STREAMFAN_TEST_CHROMIUM)",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium_path: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
def output_dir() -> Path:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    return OUTPUT_DIR


class GatewayProcess:
    """``python -m cli gateway`` as a child process; restartable on its port."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            STREAMFAN_REDIS_URL=self.settings.redis_url,
            STREAMFAN_JWT_SECRET=self.settings.jwt_secret or "",
            STREAMFAN_PREFIX=self.settings.prefix,
            STREAMFAN_LOG_LEVEL="INFO",
        )
        return env

    def _spawn(self) -> subprocess.Popen[str]:
        with self.log_path.open("a") as log:
            log.write(f"--- start #{self.starts} on port {self.port}\n")
            log.flush()
            return subprocess.Popen(
                [sys.executable, "-m", "cli", "gateway", "--port", str(self.port)],
                env=self._env(),
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )

    async def start(self) -> GatewayProcess:
        """Start on ``self.port`` (a free port the first time); until it listens."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        self.proc = await asyncio.to_thread(self._spawn)
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(PROCESS_WAIT_S):
                line = await asyncio.to_thread(self.proc.stdout.readline)
        except TimeoutError:
            line = ""
        prefix = "listening on ws://"
        if not line.startswith(prefix):
            await self.kill()
            raise AssertionError(f"the gateway did not start: {line!r}\n{self.log()}")
        port = int(line.strip().rsplit(":", 1)[1])
        assert self.port in (0, port), f"restarted on port {port}, not {self.port}"
        self.port = port
        return self

    async def terminate(self) -> int:
        """SIGTERM, as an orchestrator stops it; its exit code once it has exited."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await self._reap()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            await self._reap()

    async def _reap(self) -> int:
        assert self.proc is not None
        code = await asyncio.to_thread(self.proc.wait, PROCESS_WAIT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def gateway_process(settings: Settings, tmp_path: Path) -> Iterator[GatewayProcess]:
    gp = GatewayProcess(settings, tmp_path / "gateway.log")
    yield gp
    if gp.proc is not None and gp.proc.poll() is None:
        gp.proc.kill()
        gp.proc.wait(PROCESS_WAIT_S)
    if gp.proc is not None and gp.proc.stdout is not None and not gp.proc.stdout.closed:
        gp.proc.stdout.close()
