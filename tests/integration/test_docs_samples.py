"""Every ``<!-- sample: run -->`` block of the docs runs, as pasted, against a live stack.

Each block is written to a file in an empty directory and run in a child process
(``python FILE`` or ``bash -eo pipefail FILE``) with only the environment a user
following the docs would have: the variables ``streamfan up`` tells them to
export (``STREAMFAN_REDIS_URL``, ``STREAMFAN_JWT_SECRET``), plus the gateway's
address (``STREAMFAN_HOST``/``STREAMFAN_PORT``) and the upstream's
(``STREAMFAN_UPSTREAM_BASE_URL``). Behind them run the suite's Valkey, the mock
upstream, a real arq worker and a real gateway. A block that exits non-zero, or
runs longer than :data:`SAMPLE_TIMEOUT_S`, fails its test with its stderr.

The test id is ``file:heading-anchor`` (``-2``, ``-3``… for a heading's later
blocks), so a failure names the place to fix. docs/contributing.md says how to
mark a block.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import sys
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway import Gateway
from streamfan.mock.options import Defaults
from streamfan.mock.server import MockUpstream
from streamfan.settings import ENV_PREFIX, Settings
from tests.markdown import DOC_FILES, RUN, Block, parse

ROOT = Path(__file__).resolve().parents[2]
#: A sample is a short program: a minute is plenty even on a loaded machine.
SAMPLE_TIMEOUT_S = 60.0


def _samples() -> list[Any]:
    params = []
    for path in sorted(p for pattern in DOC_FILES for p in ROOT.glob(pattern)):
        name = str(path.relative_to(ROOT))
        counts: dict[str, int] = {}
        for block in parse(path.read_text()).blocks:
            if block.marker != RUN:
                continue
            anchor = block.anchor or "top"
            counts[anchor] = counts.get(anchor, 0) + 1
            suffix = "" if counts[anchor] == 1 else f"-{counts[anchor]}"
            params.append(pytest.param(name, block, id=f"{name}:{anchor}{suffix}"))
    return params


def sample_env(variables: dict[str, str]) -> dict[str, str]:
    """A user's shell: no STREAMFAN_* of the developer's, ``variables``, the venv first on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(ENV_PREFIX) and k != "OPENAI_API_KEY"
    }
    env.update(variables)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


async def start_sample(block: Block, cwd: Path, env: dict[str, str]) -> Process:
    """``block`` as pasted into a file in ``cwd`` and run there."""
    suffix = ".py" if block.language == "python" else ".sh"
    script = cwd / f"sample{suffix}"
    script.write_text(block.text)
    # The docs tell users to run `.venv/bin/python`, `.venv/bin/streamfan`: let that
    # path name the interpreter running the suite.
    venv = cwd / ".venv"
    if not venv.exists():
        venv.symlink_to(sys.prefix, target_is_directory=True)
    argv = (
        [sys.executable, "-W", "error", str(script)]
        if block.language == "python"
        else ["bash", "-eo", "pipefail", str(script)]
    )
    return await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish_sample(proc: Process, block: Block, where: str, seen: bytes = b"") -> str:
    """Its whole stdout (``seen`` is what was read already), or a failure showing stderr."""
    try:
        async with asyncio.timeout(SAMPLE_TIMEOUT_S):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        problem = f"ran longer than {SAMPLE_TIMEOUT_S:.0f} s"
    else:
        problem = f"exited with {proc.returncode}" if proc.returncode else ""
    out = seen + out
    if problem:
        pytest.fail(
            f"{where} (line {block.line}) {problem}\n"
            f"--- stderr\n{err.decode(errors='replace')}\n"
            f"--- stdout\n{out.decode(errors='replace')}",
            pytrace=False,
        )
    return out.decode()


async def run_sample(block: Block, where: str, cwd: Path, env: dict[str, str]) -> str:
    """Run ``block`` as pasted; its stdout, or a test failure showing its stderr."""
    return await finish_sample(await start_sample(block, cwd, env), block, where)


@pytest.fixture
async def stack(
    pipeline_settings: Settings, start_worker: Callable[[Settings], Any]
) -> AsyncIterator[dict[str, str]]:
    """Valkey, the mock upstream, a worker and a gateway; the environment that finds them."""
    async with start_worker(pipeline_settings), Gateway(pipeline_settings.replace(port=0)) as gw:
        assert pipeline_settings.jwt_secret is not None
        yield sample_env(
            {
                "STREAMFAN_REDIS_URL": pipeline_settings.redis_url,
                "STREAMFAN_JWT_SECRET": pipeline_settings.jwt_secret,
                "STREAMFAN_UPSTREAM_BASE_URL": pipeline_settings.upstream_base_url,
                "STREAMFAN_HOST": gw.host,
                "STREAMFAN_PORT": str(gw.port),
            }
        )


@pytest.mark.parametrize(("doc", "block"), _samples())
async def test_the_sample_runs_as_written(
    doc: str, block: Block, stack: dict[str, str], tmp_path: Path
) -> None:
    await run_sample(block, doc, tmp_path, stack)


def test_there_are_samples_to_run() -> None:
    names = {param.values[0] for param in _samples()}
    assert {"README.md", "docs/protocol.md"} <= names


async def test_a_failing_sample_fails_its_test_with_its_stderr(tmp_path: Path) -> None:
    block = Block("python", "import sys\nsys.exit('the sample broke')\n", 7, RUN, "x")
    with pytest.raises(
        pytest.fail.Exception, match=r"(?s)line 7\) exited with 1.*the sample broke"
    ):
        await run_sample(block, "README.md", tmp_path, sample_env({}))


async def test_a_failing_shell_sample_stops_at_the_failing_command(tmp_path: Path) -> None:
    block = Block("bash", "false | cat\necho never\n", 3, RUN, "x")
    with pytest.raises(pytest.fail.Exception, match="exited with 1") as failed:
        await run_sample(block, "README.md", tmp_path, sample_env({}))
    assert "never" not in str(failed.value)


async def test_a_sample_sees_only_the_stacks_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMFAN_PREFIX", "leaked")  # as a developer's shell might have it
    block = Block("bash", 'echo "${STREAMFAN_PREFIX:-unset} $STREAMFAN_PORT"\n', 1, RUN, "x")
    out = await run_sample(block, "t", tmp_path, sample_env({"STREAMFAN_PORT": "1"}))
    assert out == "unset 1\n"


def _sample(doc: str, anchor: str) -> Block:
    block: Block = next(
        p.values[1] for p in _samples() if p.values[0] == doc and p.values[1].anchor == anchor
    )
    return block


async def test_the_protocol_reader_resumes_after_a_gateway_restart_printing_every_event_once(
    pipeline_settings: Settings,
    start_worker: Callable[[Settings], Any],
    aredis: aioredis.Redis,
    tmp_path: Path,
) -> None:
    """What docs/protocol.md says of its reader: closed with 1001 mid-stream, it
    reconnects to the gateway that takes over the address and resumes from its last id."""
    block = _sample("docs/protocol.md", "a-reader-in-python")
    # 64 tokens at 40/s: the stream is still being written when the gateway goes.
    async with MockUpstream(defaults=Defaults(tokens_per_s=40)) as slow:
        settings = pipeline_settings.replace(upstream_base_url=slow.base_url)
        assert settings.jwt_secret is not None
        async with start_worker(settings):
            first = await Gateway(settings.replace(port=0)).start()
            port = first.port
            env = {
                "STREAMFAN_REDIS_URL": settings.redis_url,
                "STREAMFAN_JWT_SECRET": settings.jwt_secret,
                "STREAMFAN_HOST": first.host,
                "STREAMFAN_PORT": str(port),
            }
            proc = await start_sample(block, tmp_path, sample_env(env))
            assert proc.stdout is not None
            seen = b""
            async with asyncio.timeout(SAMPLE_TIMEOUT_S):
                while not re.fullmatch(rb"\d+-\d+ delta\n", line := await proc.stdout.readline()):
                    assert line, "the reader ended before its first delta"
                    seen += line
            seen += line
            await first.stop()  # every socket closed with 1001 "going away"
            async with Gateway(settings.replace(port=port)) as second:
                out = await finish_sample(proc, block, "docs/protocol.md", seen)
                assert second.metrics.connections_total == 1
    *lines, last = out.splitlines()
    end = ast.literal_eval(last)
    assert end["op"] == "end" and end["status"] == "done"
    printed = [line.split()[0] for line in lines]
    stored = await aredis.xrange(settings.keys.events(end["stream"]))
    assert printed == [entry_id.decode() for entry_id, _ in stored]
