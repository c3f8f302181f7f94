"""The `streamfan` command as a user runs it: a real process, real Redis, real worker.

Every command is checked for its output and for one clear line (no traceback) and
a non-zero exit code on a mistake.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

import orjson
import pytest

from streamfan.client import Client
from streamfan.settings import Settings
from streamfan.tokens import verify_token

from .conftest import RunningWorker, expected_message, settings_env


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def streamfan(settings: Settings, *args: str, env: dict[str, str] | None = None) -> Ran:
    full_env = settings_env(settings)
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def assert_one_line_error(ran: Ran, *words: str) -> None:
    assert ran.code != 0
    assert "Traceback" not in ran.err
    lines = [line for line in ran.err.splitlines() if line.strip()]
    assert len(lines) == 1, ran.err
    for word in words:
        assert word in lines[0]


async def test_submit_prints_the_stream_id_and_a_token_for_it(
    settings: Settings, client: Client
) -> None:
    ran = await streamfan(settings, "submit", "hello there", "--json")
    assert ran.code == 0, ran.err
    info = orjson.loads(ran.out)
    assert settings.jwt_secret is not None
    assert verify_token(settings.jwt_secret, info["token"]).can_read(info["stream_id"])
    assert (await client.status(info["stream_id"])).status == "queued"
    plain = await streamfan(settings, "submit", "again", "--stream-id", "mine")
    assert plain.out.splitlines()[0] == "stream_id: mine"
    assert plain.out.splitlines()[1].startswith("token: ")


async def test_submit_follow_prints_the_reply_as_it_streams(
    pipeline_settings: Settings,
) -> None:
    async with RunningWorker(pipeline_settings):
        ran = await streamfan(pipeline_settings, "submit", "tell me", "--follow", "--model", "m1")
    body = {"model": "m1", "messages": [{"role": "user", "content": "tell me"}]}
    assert ran.code == 0, ran.err
    assert ran.out == expected_message(body)["content"] + "\n"
    assert "stream_id: " in ran.err  # ids go to stderr so stdout is the reply alone


async def test_tail_replays_text_and_json_events(
    pipeline_settings: Settings, client: Client
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "mock": {"n": 1}}
    async with RunningWorker(pipeline_settings):
        sub = await client.submit(body)
        result = await client.result(sub.stream_id)
    text = await streamfan(pipeline_settings, "tail", sub.stream_id)
    assert (text.code, text.out) == (0, result.text + "\n")
    raw = await streamfan(pipeline_settings, "tail", sub.stream_id, "--json", "--from", "0")
    lines = [orjson.loads(line) for line in raw.out.splitlines()]
    assert lines[0]["event"]["type"] == "start"
    assert lines[-1]["event"]["type"] == "done"
    ids = [line["id"] for line in lines]
    later = await streamfan(pipeline_settings, "tail", sub.stream_id, "--json", "--from", ids[2])
    assert [orjson.loads(line)["id"] for line in later.out.splitlines()] == ids[3:]


async def test_status_and_cancel(settings: Settings, client: Client) -> None:
    sub = await client.submit({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    status = await streamfan(settings, "status", sub.stream_id)
    assert orjson.loads(status.out)["status"] == "queued"
    cancel = await streamfan(settings, "cancel", sub.stream_id)
    assert (cancel.code, cancel.out.strip()) == (0, "cancelled")
    after = await streamfan(settings, "status", sub.stream_id)
    assert orjson.loads(after.out)["status"] == "cancelled"
    tail = await streamfan(settings, "tail", sub.stream_id)
    assert tail.code == 1 and "cancelled" in tail.err


async def test_token_mints_a_token_for_the_given_streams(settings: Settings) -> None:
    ran = await streamfan(settings, "token", "a", "b", "--ttl", "60", "--cancel")
    assert settings.jwt_secret is not None
    grant = verify_token(settings.jwt_secret, ran.out.strip())
    assert grant.can_cancel("a") and grant.can_read("b") and not grant.can_read("c")


async def test_token_submit_mints_a_token_that_may_submit_and_names_no_stream(
    settings: Settings,
) -> None:
    ran = await streamfan(settings, "token", "--submit")
    assert settings.jwt_secret is not None
    grant = verify_token(settings.jwt_secret, ran.out.strip())
    assert grant.submit and not grant.can_read("a") and not grant.cancel
    bare = await streamfan(settings, "token", "a")
    assert not verify_token(settings.jwt_secret, bare.out.strip()).submit


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["status", "no-such-stream"], {}, ["not found"]),
        (["cancel", "no-such-stream"], {}, ["not found"]),
        (["tail", "no-such-stream"], {}, ["not found"]),
        (["status", "bad id"], {}, ["invalid stream id"]),
        (["tail", "abc", "--from", "yesterday"], {}, ["invalid position"]),
        (["token", "a"], {"STREAMFAN_JWT_SECRET": ""}, ["STREAMFAN_JWT_SECRET"]),
        (["token"], {}, ["at least one stream"]),
        (["gateway"], {"STREAMFAN_API_KEYS": "short"}, ["STREAMFAN_API_KEYS", "32"]),
        (["status", "abc"], {"STREAMFAN_REDIS_URL": "redis://127.0.0.1:9/0"}, ["Redis"]),
        (["submit", "hi"], {"STREAMFAN_REDIS_URL": "redis://127.0.0.1:9/0"}, ["Redis"]),
        (["status", "abc"], {"STREAMFAN_MAXLEN": "lots"}, ["STREAMFAN_MAXLEN"]),
        (["submit", "hi", "--model", ""], {}, ["model"]),
        (["worker"], {"STREAMFAN_UPSTREAM_BASE_URL": "ftp://x"}, ["STREAMFAN_UPSTREAM_BASE_URL"]),
        (["worker"], {"STREAMFAN_WORKER_MAX_JOBS": "0"}, ["STREAMFAN_WORKER_MAX_JOBS"]),
        (["worker", "--processes", "none"], {}, ["--processes", "auto"]),
        # Checked once by the supervisor, before any child starts.
        (
            ["worker", "--processes", "2"],
            {"STREAMFAN_WORKER_MAX_JOBS": "0"},
            ["STREAMFAN_WORKER_MAX_JOBS"],
        ),
        (
            ["worker", "--processes", "3"],
            {"STREAMFAN_WORKER_METRICS_PORT": "65534"},
            ["STREAMFAN_WORKER_METRICS_PORT"],
        ),
        (["gateway"], {"STREAMFAN_PORT": "99999"}, ["STREAMFAN_PORT"]),
        (["up", "--workers", "0"], {"STREAMFAN_REDIS_URL": "redis://127.0.0.1:9/0"}, ["--workers"]),
    ],
)
async def test_every_mistake_is_one_clear_line_and_a_non_zero_exit(
    settings: Settings, args: list[str], env: dict[str, str], words: list[str]
) -> None:
    assert_one_line_error(await streamfan(settings, *args, env=env), *words)


async def test_no_command_prints_help_and_exits_2(settings: Settings) -> None:
    ran = await streamfan(settings)
    assert ran.code == 2
    assert "submit" in ran.out and "gateway" in ran.out
