"""A second terminal finds `streamfan up` by itself: no export, any directory.

`streamfan up` runs as a child process with its embedded Valkey and mock upstream;
the commands run as other processes with a clean environment (no STREAMFAN_*), in
another working directory, sharing only HOME and XDG_STATE_HOME with it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import sys
from pathlib import Path

import httpx
import orjson

from cli import upstate
from cli.commands import DEFAULT_MODEL
from cli.up import DEMO_REPLY_TOKENS
from streamfan.client import Client
from streamfan.mock.options import Defaults
from streamfan.mock.script import Script
from streamfan.settings import Settings
from streamfan.tokens import verify_token

from .test_cli import Ran
from .test_up import children_of, read_until
from .test_worker_processes import Logged

USING = "using the streamfan up"


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFAN_")}
    env.pop("OPENAI_API_KEY", None)
    env["HOME"] = str(tmp_path / "home")
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    return env


async def streamfan(env: dict[str, str], cwd: Path, *args: str) -> Ran:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args,
        env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def read_state(path: Path) -> tuple[int, upstate.UpState]:
    return stat.S_IMODE(path.stat().st_mode), upstate.UpState.from_json(path.read_bytes())


def exists(path: Path) -> bool:
    return path.exists()


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def lines_saying(ran: Ran, words: str) -> list[str]:
    return [line for line in ran.err.splitlines() if words in line]


async def test_every_command_in_another_terminal_uses_the_running_up(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    (tmp_path / "up-dir").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "up", "--port", "0", "--no-demo", "--workers", "2",
        "--data-dir", str(tmp_path / "data"),
        env=env, cwd=tmp_path / "up-dir",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert up.stdout is not None
    logs = Logged(up)
    seen: list[str] = []
    try:
        gateway = await asyncio.wait_for(
            read_until(up.stdout, r"gateway\s+ws://([\d.]+):(\d+)/ws", seen), 60
        )
        said = await asyncio.wait_for(read_until(up.stdout, r"state\s+(\S+):", seen), 30)
        host, port = gateway.group(1), int(gateway.group(2))
        path = Path(said.group(1))
        assert path == tmp_path / "state" / "streamfan" / "up.json"
        mode, state = read_state(path)
        assert mode == 0o600  # it holds the secret
        assert state.pid == up.pid

        # --port 0: the port reported is the one the gateway bound, in the output,
        # the state file and the children's environment.
        assert port != 0 and state.gateway_urls == (f"http://{host}:{port}",)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{state.gateway_urls[0]}/readyz")).status_code == 200
        # --workers 2: one supervisor, two worker processes under it.
        (supervisor_pid,) = state.pids["worker"]
        workers = await asyncio.wait_for(logs.ready_pids(2), 30)
        assert workers == children_of(supervisor_pid)
        for pid in workers:
            worker_env = environ_of(pid)
            assert (worker_env["STREAMFAN_HOST"], worker_env["STREAMFAN_PORT"]) == (host, str(port))

        follow = await streamfan(env, elsewhere, "submit", "hi", "--follow")
        assert follow.code == 0, follow.err
        assert len(lines_saying(follow, USING)) == 1
        assert len(lines_saying(follow, str(path))) == 1
        match = re.search(r"stream_id: (\S+)", follow.err)
        assert match, follow.err
        stream_id = match.group(1)
        reply = follow.out.rstrip("\n")
        # Exactly what up's mock says to this request, with up's server defaults.
        body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
        script = Script.from_request(body, Defaults(reply_tokens=DEMO_REPLY_TOKENS))
        assert reply == script.expected_message().as_message()["content"]
        assert f"page: {state.gateway_urls[0]}/?stream={stream_id}&token=" in follow.err

        # The same reply, as the run's Redis holds it.
        settings = Settings.from_env(state.settings)
        async with Client(settings) as sf:
            assert (await sf.result(stream_id)).text == reply

        tail = await streamfan(env, elsewhere, "tail", stream_id)
        assert (tail.code, tail.out.rstrip("\n")) == (0, reply)
        assert len(lines_saying(tail, USING)) == 1

        status = await streamfan(env, elsewhere, "status", stream_id)
        assert orjson.loads(status.out)["status"] == "done", status.err

        token = await streamfan(env, elsewhere, "token", stream_id, "--cancel")
        assert token.code == 0, token.err
        grant = verify_token(state.settings["STREAMFAN_JWT_SECRET"], token.out.strip())
        assert grant.can_read(stream_id) and grant.can_cancel(stream_id)

        long = await streamfan(env, elsewhere, "submit", "a long one", "--json")
        long_id = orjson.loads(long.out)["stream_id"]
        cancel = await streamfan(env, elsewhere, "cancel", long_id)
        # Queued: cancelled at once; running: the worker ends it.
        assert (cancel.code, cancel.out.strip() in ("cancelled", "cancelling")) == (0, True)
        ended = await streamfan(env, elsewhere, "tail", long_id)
        assert ended.code == 1 and "cancelled" in ended.err
        after = await streamfan(env, elsewhere, "status", long_id)
        assert orjson.loads(after.out)["status"] == "cancelled"

        # Explicit settings win: this Redis is not the run's, and nothing says "using".
        explicit = dict(env, STREAMFAN_REDIS_URL="redis://127.0.0.1:9/0")
        refused = await streamfan(explicit, elsewhere, "status", stream_id)
        assert refused.code != 0 and "Redis" in refused.err
        assert lines_saying(refused, USING) == []
        flagged = await streamfan(
            env, elsewhere, "status", stream_id, "--redis-url", "redis://127.0.0.1:9/0"
        )
        assert flagged.code != 0 and lines_saying(flagged, USING) == []
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(up.wait(), 30) == 0, "".join(seen + logs.lines)
    await logs.reader
    assert not exists(path), "a clean exit leaves no state file"


async def test_a_stale_state_file_is_ignored_with_one_line_saying_so(
    tmp_path: Path, settings: Settings
) -> None:
    env = clean_env(tmp_path)
    async with Client(settings) as sf:
        sub = await sf.submit({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    # A run that died without cleaning up (kill -9, a reboot): its pid is gone, its
    # Redis (here the suite's, holding the stream) may even still answer.
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()
    path = upstate.state_path(env)
    assert settings.jwt_secret is not None
    upstate.write(
        path,
        upstate.UpState(
            pid=gone.pid,
            pid_start=None,
            started_at=0.0,
            settings={
                "STREAMFAN_REDIS_URL": settings.redis_url,
                "STREAMFAN_JWT_SECRET": settings.jwt_secret,
            },
        ),
    )
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    ran = await streamfan(env, cwd, "status", sub.stream_id)
    stale = lines_saying(ran, f"ignoring {path}")
    assert len(stale) == 1 and f"(pid {gone.pid}) is gone" in stale[0], ran.err
    assert lines_saying(ran, USING) == []
    assert ran.code != 0, "the stale run's Redis was used"
    # The file is left for the next `streamfan up` to replace.
    assert exists(path)
