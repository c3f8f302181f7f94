"""The state file by which commands find a running `streamfan up` (cli/upstate.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli import upstate
from cli.upstate import UpState


def state(**changes: object) -> UpState:
    fields: dict[str, object] = {
        "pid": os.getpid(),
        "pid_start": upstate.process_start(os.getpid()),
        "started_at": 1_700_000_000.0,
        "settings": {
            "STREAMFAN_REDIS_URL": "redis://127.0.0.1:7000/0",
            "STREAMFAN_JWT_SECRET": "s" * 32,
        },
        "gateway_urls": ("http://127.0.0.1:8765",),
        "pids": {"worker": [1, 2]},
    }
    fields.update(changes)
    return UpState(**fields)  # type: ignore[arg-type]


def a_dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"HOME": "/h", "XDG_STATE_HOME": "/x"}, "/x/streamfan/up.json"),
        ({"HOME": "/h"}, "/h/.local/state/streamfan/up.json"),
        ({"HOME": "/h", "XDG_STATE_HOME": ""}, "/h/.local/state/streamfan/up.json"),
        # The spec: a relative XDG_STATE_HOME is invalid and ignored.
        ({"HOME": "/h", "XDG_STATE_HOME": "rel"}, "/h/.local/state/streamfan/up.json"),
    ],
)
def test_the_state_file_lives_in_the_users_xdg_state_home(
    environ: dict[str, str], expected: str
) -> None:
    assert upstate.state_path(environ) == Path(expected)


secrets_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@given(
    st.integers(1, 2**22),
    st.none() | st.text(max_size=12),
    st.dictionaries(st.sampled_from(upstate.CLIENT_SETTINGS[1:]), secrets_text),
    st.lists(st.text(max_size=30), max_size=3),
)
def test_a_state_round_trips_through_its_json(
    pid: int, start: str | None, extra: dict[str, str], urls: list[str]
) -> None:
    s = state(
        pid=pid,
        pid_start=start,
        settings={"STREAMFAN_REDIS_URL": "redis://h:1/0", **extra},
        gateway_urls=tuple(urls),
    )
    assert UpState.from_json(s.to_json()) == s


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'{"version": 2}',
        b'{"version": 1, "pid": 5, "settings": {}}',
        b'{"version": 1, "pid": "5", "settings": {"STREAMFAN_REDIS_URL": "r"}}',
        b'{"version": 1, "pid": 5, "settings": {"STREAMFAN_REDIS_URL": "r", "PATH": "/bin"}}',
        b'{"version": 1, "pid": 5, "settings": {"STREAMFAN_REDIS_URL": "r"}, "pids": []}',
    ],
)
def test_anything_else_is_refused_with_a_reason(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        UpState.from_json(raw)


def test_the_environment_wins_over_the_file_setting_by_setting() -> None:
    s = state()
    env = upstate.layered(s, {"STREAMFAN_JWT_SECRET": "mine" * 8, "HOME": "/h"})
    assert env["STREAMFAN_REDIS_URL"] == "redis://127.0.0.1:7000/0"
    assert env["STREAMFAN_JWT_SECRET"] == "mine" * 8
    assert env["HOME"] == "/h"


def test_it_is_written_with_mode_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "state" / "streamfan" / "up.json"
    old = os.umask(0)  # even so
    try:
        upstate.write(path, state())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert UpState.from_json(path.read_bytes()) == state()
    assert [p.name for p in path.parent.iterdir()] == ["up.json"]  # no temp file left


def test_it_is_removed_only_by_the_run_it_describes(tmp_path: Path) -> None:
    path = tmp_path / "up.json"
    upstate.write(path, state(pid=12345))
    upstate.remove(path, os.getpid())
    assert path.exists()
    upstate.remove(path, 12345)
    assert not path.exists()
    upstate.remove(path, 12345)  # already gone: fine


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "xdg"), **extra}


def test_a_running_up_is_found_and_said_in_one_line(tmp_path: Path) -> None:
    environ = env_for(tmp_path)
    upstate.write(upstate.state_path(environ), state())
    found = upstate.find(environ)
    assert found.environ["STREAMFAN_REDIS_URL"] == "redis://127.0.0.1:7000/0"
    assert found.note is not None and "\n" not in found.note
    assert "using the streamfan up" in found.note and "redis://127.0.0.1:7000/0" in found.note
    assert found.state == state()


def test_a_password_in_the_redis_url_is_not_shown(tmp_path: Path) -> None:
    environ = env_for(tmp_path)
    url = "redis://user:hunter2@127.0.0.1:7000/0"
    upstate.write(upstate.state_path(environ), state(settings={"STREAMFAN_REDIS_URL": url}))
    found = upstate.find(environ)
    assert found.environ["STREAMFAN_REDIS_URL"] == url
    assert found.note is not None and "hunter2" not in found.note and "user:" in found.note


@pytest.mark.parametrize(
    ("environ_extra", "flag"),
    [({"STREAMFAN_REDIS_URL": "redis://elsewhere:6379/0"}, None), ({}, "redis://x:1/0")],
)
def test_an_explicit_redis_url_means_the_file_is_not_read(
    tmp_path: Path, environ_extra: dict[str, str], flag: str | None
) -> None:
    environ = env_for(tmp_path, **environ_extra)
    upstate.write(upstate.state_path(environ), state())
    found = upstate.find(environ, redis_url_flag=flag)
    assert found.environ == environ and found.note is None and found.state is None


def test_a_stale_file_is_ignored_with_one_line(tmp_path: Path) -> None:
    environ = env_for(tmp_path)
    upstate.write(upstate.state_path(environ), state(pid=a_dead_pid(), pid_start=None))
    found = upstate.find(environ)
    assert found.environ == environ and found.state is None
    assert found.note is not None and "is gone" in found.note and "\n" not in found.note


def test_a_reused_pid_is_not_taken_for_the_run(tmp_path: Path) -> None:
    environ = env_for(tmp_path)
    # This process is alive, but it is not the one that started at tick "1".
    upstate.write(upstate.state_path(environ), state(pid_start="1"))
    assert upstate.find(environ).state is None


def test_no_file_says_nothing_and_a_broken_one_says_why(tmp_path: Path) -> None:
    environ = env_for(tmp_path)
    assert upstate.find(environ) == upstate.Found(environ, None)
    path = upstate.state_path(environ)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"{not json")
    path.chmod(0o600)
    note = upstate.find(environ).note
    assert note is not None and "not JSON" in note
    path.chmod(0o644)
    note = upstate.find(environ).note
    assert note is not None and "others may read it" in note
