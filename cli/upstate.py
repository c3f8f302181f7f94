"""Where a running ``streamfan up`` listens, so commands in other terminals find it.

``streamfan up`` writes one JSON file of the current user,
``$XDG_STATE_HOME/streamfan/up.json`` (``~/.local/state/streamfan/up.json`` when
``XDG_STATE_HOME`` is unset or not absolute, as the XDG Base Directory spec says):
the ``STREAMFAN_*`` settings a client needs to reach the run (Redis URL, key
prefix, queue, the run's JWT secret), the gateways' URLs and the pids. It is
written atomically with mode 0600 (it holds a secret) and removed when ``up``
exits cleanly.

The client-side commands layer it *under* the environment: a setting present in
the environment (or given as a flag) wins over the file's. A Redis URL given
explicitly (``STREAMFAN_REDIS_URL`` or ``--redis-url``) means "not that run": the
file is not read at all, so a run's secret is never paired with another Redis.
A file whose ``up`` process is gone (crashed, killed, rebooted) is stale and ignored.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

VERSION = 1
FILE_NAME = "up.json"
REDIS_URL = "STREAMFAN_REDIS_URL"
#: What a client needs to reach a run: where its Redis is, its key layout, the
#: secret its tokens are signed with. Nothing else of ``up``'s environment is kept.
CLIENT_SETTINGS = (
    REDIS_URL,
    "STREAMFAN_EVENTS_REDIS_URL",
    "STREAMFAN_PREFIX",
    "STREAMFAN_QUEUE_NAME",
    "STREAMFAN_JWT_SECRET",
    "STREAMFAN_TOKEN_TTL_S",
)


def state_path(environ: Mapping[str, str]) -> Path:
    """The state file of the user whose environment this is."""
    xdg = environ.get("XDG_STATE_HOME", "")
    # The spec: a relative XDG_STATE_HOME is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        base = Path(xdg)
    else:
        home = environ.get("HOME")
        base = (Path(home) if home else Path.home()) / ".local" / "state"
    return base / "streamfan" / FILE_NAME


@dataclass(frozen=True)
class UpState:
    """What one ``streamfan up`` recorded about itself."""

    pid: int
    #: The kernel's start time of ``pid`` (``/proc/PID/stat`` field 22), so a pid
    #: reused by another process after a crash is not taken for the run.
    pid_start: str | None
    started_at: float
    settings: dict[str, str]
    gateway_urls: tuple[str, ...] = ()
    #: role -> pids of the children (``redis``, ``mock-upstream``, ``worker``, ``gateway``)
    pids: dict[str, list[int]] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:
        return self.settings[REDIS_URL]

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "version": VERSION,
                "pid": self.pid,
                "pid_start": self.pid_start,
                "started_at": self.started_at,
                "settings": self.settings,
                "gateway_urls": list(self.gateway_urls),
                "pids": self.pids,
            },
            option=orjson.OPT_INDENT_2,
        )

    @classmethod
    def from_json(cls, raw: bytes) -> UpState:
        """Parse; ``ValueError`` when it is not a file ``up`` wrote."""
        try:
            doc: Any = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} state file")
        settings = doc.get("settings")
        pid = doc.get("pid")
        if (
            not isinstance(pid, int)
            or isinstance(pid, bool)
            or pid <= 0
            or not isinstance(settings, dict)
            or not all(k in CLIENT_SETTINGS and isinstance(v, str) for k, v in settings.items())
            or REDIS_URL not in settings
        ):
            raise ValueError("missing or malformed fields")
        pid_start = doc.get("pid_start")
        urls = doc.get("gateway_urls", [])
        pids = doc.get("pids", {})
        started_at = doc.get("started_at", 0.0)
        if (
            not (pid_start is None or isinstance(pid_start, str))
            or not isinstance(urls, list)
            or not all(isinstance(u, str) for u in urls)
            or not isinstance(pids, dict)
            or not all(isinstance(v, list) for v in pids.values())
            or not isinstance(started_at, int | float)
        ):
            raise ValueError("missing or malformed fields")
        return cls(pid, pid_start, float(started_at), dict(settings), tuple(urls), dict(pids))


def shown_url(url: str) -> str:
    """``url`` with any password replaced, for a line on a terminal."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:[redacted]@{host}").geturl()


def layered(state: UpState, environ: Mapping[str, str]) -> dict[str, str]:
    """The run's settings under ``environ``: whatever the environment sets wins."""
    return {**state.settings, **environ}


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), or None if unknown."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields follow the last ")".
    fields = raw.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def is_running(state: UpState) -> bool:
    """Whether the ``up`` that wrote ``state`` still runs (and is that process)."""
    try:
        os.kill(state.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, but someone else's: only the start time can tell
    if state.pid_start is None:
        return True
    now = process_start(state.pid)
    return now is None or now == state.pid_start


def write(path: Path, state: UpState) -> None:
    """Write atomically (a reader never sees half a file) with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, state.to_json())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove(path: Path, pid: int) -> None:
    """Remove the file if it still describes the run ``pid`` (a later ``up`` may own it)."""
    try:
        if UpState.from_json(path.read_bytes()).pid == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


@dataclass(frozen=True)
class Found:
    """What a command learned from the state file: settings to use, and one line to say."""

    environ: Mapping[str, str]
    note: str | None
    state: UpState | None = None


def find(environ: Mapping[str, str], *, redis_url_flag: str | None = None) -> Found:
    """The environment a client-side command should build its settings from."""
    if redis_url_flag is not None or REDIS_URL in environ:
        return Found(environ, None)
    path = state_path(environ)
    try:
        info = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        return Found(environ, None)
    except OSError as exc:
        return Found(environ, f"ignoring {path}: {exc.strerror}")
    if info.st_uid != os.getuid():
        return Found(environ, f"ignoring {path}: owned by another user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        return Found(environ, f"ignoring {path}: others may read it (it holds a secret)")
    try:
        state = UpState.from_json(raw)
    except ValueError as exc:
        return Found(environ, f"ignoring {path}: {exc}")
    if not is_running(state):
        return Found(
            environ,
            f"ignoring {path}: the streamfan up that wrote it (pid {state.pid}) is gone",
        )
    started = time.localtime(state.started_at)
    today = time.localtime()[:3] == started[:3]
    since = time.strftime("%H:%M" if today else "%Y-%m-%d %H:%M", started)
    return Found(
        layered(state, environ),
        f"using the streamfan up running since {since} (pid {state.pid}): "
        f"{shown_url(state.redis_url)} (from {path})",
        state,
    )
