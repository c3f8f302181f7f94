"""nginx in front of the gateways, configured from ``deploy/nginx.conf`` itself.

The run's front is the deployment's proxy, not a look-alike: the file is read from
``deploy/``, its ``upstream gateways`` block is given this run's gateway ports, its
``listen`` a free loopback port, and nginx's own files (pid, logs, temp paths) go
into the run's directory. Everything else — the WebSocket upgrade headers,
``proxy_buffering off``, the long read timeout — is what operators run.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEPLOY_CONF = REPO / "deploy" / "nginx.conf"


class FrontUnavailable(RuntimeError):
    pass


def render(conf: str, gateway_ports: list[int], port: int, run_dir: Path) -> str:
    """``deploy/nginx.conf`` for this run: its upstreams (with their parameters), its port,
    its files (the access log kept, with the deployment's format, in the run's directory)."""
    found = re.search(r"^(\s*)server gateway:\d+([^;]*);\n", conf, re.MULTILINE)
    if found is None:
        raise ValueError("deploy/nginx.conf has no 'server gateway:PORT ...;' line")
    indent, params = found.group(1), found.group(2)
    servers = "".join(f"{indent}server 127.0.0.1:{p}{params};\n" for p in gateway_ports)
    conf = conf[: found.start()] + servers + conf[found.end() :]
    conf, n = re.subn(r"listen \d+;", f"listen 127.0.0.1:{port};", conf)
    if n != 1:
        raise ValueError("deploy/nginx.conf has no single 'listen PORT;'")
    files = "".join(
        f"  {name}_temp_path {run_dir / ('nginx-' + name)};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf, n = re.subn(r"access_log \S+", f"access_log {run_dir / 'nginx-access.log'}", conf)
    if n != 1:
        raise ValueError("deploy/nginx.conf has no single access_log")
    logs = f"  error_log {run_dir / 'nginx-error.log'} warn;\n"
    conf = conf.replace("http {\n", "http {\n" + files + logs, 1)
    head = f"pid {run_dir / 'nginx.pid'};\nerror_log {run_dir / 'nginx-error.log'} warn;\n"
    return head + conf


class Front:
    """``nginx -g 'daemon off;'`` with the rendered config; ``url`` is its ws:// address."""

    def __init__(self, run_dir: Path, gateway_ports: list[int]) -> None:
        self.run_dir = run_dir
        self.gateway_ports = gateway_ports
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self, within_s: float = 10.0) -> None:
        binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
        if binary is None:
            raise FrontUnavailable(
                "nginx is not installed (apt-get install nginx, as .ci/run does)"
            )
        conf = self.run_dir / "nginx.conf"
        conf.write_text(render(DEPLOY_CONF.read_text(), self.gateway_ports, self.port,
                               self.run_dir))  # fmt: skip
        self.proc = await asyncio.create_subprocess_exec(
            binary, "-p", str(self.run_dir), "-c", str(conf), "-g", "daemon off;",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with asyncio.timeout(within_s):
            while True:
                if self.proc.returncode is not None:
                    log = (self.run_dir / "nginx-error.log").read_text(errors="replace")
                    raise FrontUnavailable(f"nginx exited at start: {log[-2000:]}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.02)  # waits-on-time-ok: polling a child's readiness
                    continue
                writer.close()
                return

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGQUIT)  # nginx's graceful shutdown
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
