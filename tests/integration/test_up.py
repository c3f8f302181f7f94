"""`streamfan up` as a newcomer runs it: one command, then Ctrl-C leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import orjson
from websockets.asyncio.client import connect


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces: the ppid is the 2nd field after ")".
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def read_until(stream: asyncio.StreamReader, pattern: str, seen: list[str]) -> re.Match[str]:
    while True:
        line = (await stream.readline()).decode()
        assert line, "streamfan up exited before printing " + pattern + "\n" + "".join(seen)
        seen.append(line)
        if match := re.search(pattern, line):
            return match


async def test_up_serves_a_reply_to_the_cli_and_a_websocket_and_stops_cleanly_on_sigint(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFAN_")}
    env.pop("OPENAI_API_KEY", None)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")  # not the real user's
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "up", "--port", "0",
        "--data-dir", str(tmp_path / "data"),
        env=env, stdout=asyncio.subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        gateway = await asyncio.wait_for(
            read_until(proc.stdout, r"gateway\s+ws://([\d.]+):(\d+)/ws", seen), 60
        )
        exports = await asyncio.wait_for(read_until(proc.stdout, r"export (.*)", seen), 30)
        demo = await asyncio.wait_for(
            read_until(proc.stdout, r"demo page\s+(http://\S+)\?stream=(\w+)&token=(\S+)", seen),
            30,
        )
        host, port = gateway.group(1), int(gateway.group(2))
        stream_id, token = demo.group(2), demo.group(3)
        cli_env = dict(env)
        for pair in exports.group(1).split():
            key, _, value = pair.partition("=")
            cli_env[key] = value

        # The terminal: tail prints the whole reply.
        tail = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "tail", stream_id,
            env=cli_env, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        tail_out, _ = await asyncio.wait_for(tail.communicate(), 60)
        assert tail.returncode == 0
        reply = tail_out.decode().rstrip("\n")
        assert len(reply) > 100

        # A WebSocket client on the shortcut endpoint gets the same reply.
        url = f"ws://{host}:{port}/streams/{stream_id}?from=0&token={token}"
        text = []
        async with connect(url) as ws:
            ended = False
            while not ended:
                frame = await asyncio.wait_for(ws.recv(), 30)
                for line in str(frame).splitlines():
                    msg = orjson.loads(line)
                    if msg["op"] == "event" and msg["event"]["type"] == "delta":
                        for choice in msg["event"]["choices"]:
                            text.append(choice.get("delta", {}).get("content") or "")
                    ended = ended or msg["op"] == "end"
        assert "".join(text) == reply

        # And a new prompt submitted with the CLI streams through it too.
        follow = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "submit", "another one", "--follow",
            env=cli_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(follow.communicate(), 60)
        assert follow.returncode == 0, err.decode()
        assert len(out) > 100

        children = children_of(proc.pid)
        assert len(children) >= 4  # redis, mock upstream, worker, gateway
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
    code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0, "".join(seen)
    assert not [pid for pid in children if alive(pid)], "children survived Ctrl-C"
    with socket.socket() as sock:
        assert sock.connect_ex((host, port)) != 0, "the gateway's port is still open"
