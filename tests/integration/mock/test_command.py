"""``streamfan mock-upstream`` as a child process: its port line, and a port in use."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from streamfan.mock.records import COMPLETE

from .support import AUTH, chat

pytestmark = pytest.mark.timeout(30)


# --- the command ----------------------------------------------------------------------


def test_the_command_prints_its_port_and_serves() -> None:
    argv = [sys.executable, "-m", "cli", "mock-upstream", "--port", "0", "--reply", "Hi"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.search(r"(http://127\.0\.0\.1:(\d+))/v1", line)
            assert match is not None, line
            assert int(match.group(2)) > 0
            with httpx.Client(base_url=match.group(0), headers=AUTH, timeout=10) as client:
                reply = client.post("/chat/completions", json=chat(stream=False))
                summary = client.get(match.group(1) + "/_mock/requests").json()
        finally:
            proc.terminate()
            _, stderr = proc.communicate(timeout=10)
    assert reply.json()["choices"][0]["message"]["content"] == "Hi"
    assert [s["outcome"] for s in summary] == [COMPLETE]
    assert proc.returncode == 0, stderr


def test_the_command_explains_a_port_in_use() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        argv = [sys.executable, "-m", "cli", "mock-upstream", "--port", port]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "cannot listen on 127.0.0.1:" in proc.stderr
    assert "Traceback" not in proc.stderr
