"""The OpenAI-compatible door read by the official ``openai`` Node SDK (npm), as a child process.

``tests/node/package.json`` pins the SDK; ``.ci/run`` installs it, and so does
this module when ``tests/node/node_modules`` is missing (``npm install``: the
npm registry must be reachable). A machine without ``node``/``npm`` fails these
tests with how to install them: a skip is not a pass.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.gateway.doorstack import KEY, Door, assembled_dicts, door_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(180)

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
SCRIPT = NODE_DIR / "door.mjs"


@pytest.fixture(scope="module")
def node_sdk() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed (apt-get install nodejs npm)", pytrace=False)
    if not (NODE_DIR / "node_modules" / "openai").exists():
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
    return Path(node)


async def run_node(node: Path, door: Door, mode: str, body: Any, *args: str) -> Any:
    env = {**os.environ, "BASE_URL": door.gateway.http_url + "/v1", "API_KEY": KEY}
    proc = await asyncio.create_subprocess_exec(
        str(node),
        str(SCRIPT),
        mode,
        orjson.dumps(body).decode(),
        *args,
        cwd=NODE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return orjson.loads(out)


def body(**mock: Any) -> dict[str, Any]:
    return {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "mock": mock}


@pytest.mark.parametrize(
    "mock",
    [
        {"reply_tokens": 30},
        {"tool_calls": [{"name": "lookup", "arguments": {"q": "streamfan"}}]},
        {"n": 2, "reply_tokens": 20},
    ],
    ids=["text", "tool_calls", "n2"],
)
async def test_the_node_sdks_stream_and_retrieve_equal_client_result(
    node_sdk: Path, door: Door, mock: dict[str, Any]
) -> None:
    got = await run_node(node_sdk, door, "stream", body(**mock))
    chunks = got["chunks"]
    sid = chunks[0]["id"]
    result = await door.client.result(sid)
    asm = assembled_dicts(chunks)
    assert asm.chat_completion(sid, chunks[0]["model"], chunks[0]["created"]) == (
        result.chat_completion
    )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == result.usage
    assert got["retrieved"] == result.chat_completion
    # A second Node client re-attaching to that stream sees the very same chunks.
    again = await run_node(node_sdk, door, "reattach", {}, sid)
    assert again["chunks"] == chunks
    after = await run_node(node_sdk, door, "reattach", {}, sid, await nth_id(door, sid, 3))
    assert after["chunks"] == chunks[-len(after["chunks"]) :] and after["chunks"]


async def nth_id(door: Door, sid: str, n: int) -> str:
    rows = await door.client.redis.xrange(door.settings.keys.events(sid))
    return str(rows[n][0].decode())


async def test_the_node_sdk_without_streaming_gets_the_chat_completion(
    node_sdk: Path, door: Door
) -> None:
    got = await run_node(node_sdk, door, "create", body(reply_tokens=12))
    result = await door.client.result(got["completion"]["id"])
    assert got["completion"] == result.chat_completion


async def test_a_forced_retry_after_partial_output_makes_the_node_sdk_throw(
    node_sdk: Path, door: Door
) -> None:
    mock = {"reply_tokens": 60, "tokens_per_s": 100, "fault": "drop", "after": 6}
    got = await run_node(node_sdk, door, "reset", body(**mock, fault_key="node-k", fault_times=1))
    assert got["chunks"], "the reset came before any output"
    assert got["error"]["name"] == "APIError"
    assert got["error"]["body"]["code"] == "stream_reset"
    sid = got["chunks"][0]["id"]
    again = await run_node(node_sdk, door, "reattach", {}, sid)
    text = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in again["chunks"] if c["choices"]
    )
    assert text == (await door.client.result(sid)).text
