"""The chaos run's pure parts: its seeded plan and its verdict on what readers saw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chaos.front import DEPLOY_CONF, render
from chaos.plan import PROCESS_FAULTS, UPSTREAM_FAULTS, Config, make_plan
from chaos.verdict import ReaderLog, StreamOutcome, judge_reader, summarise
from streamfan import events


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    config = Config(seed=7, duration_s=30, streams=10)
    assert make_plan(config) == make_plan(config)
    assert make_plan(config) != make_plan(Config(seed=8, duration_s=30, streams=10))


@given(seed=st.integers(0, 2**31), duration=st.floats(5, 600), streams=st.integers(1, 40))
def test_every_fault_kind_happens_inside_the_run_one_at_a_time(
    seed: int, duration: float, streams: int
) -> None:
    plan = make_plan(Config(seed=seed, duration_s=duration, streams=streams))
    assert {f.kind for f in plan.faults} == set(PROCESS_FAULTS)
    moments = [f.at_s for f in plan.faults]
    assert moments == sorted(moments)
    assert all(0 < at < duration for at in moments)
    assert all(0 <= job.submit_at_s <= duration / 2 for job in plan.jobs)
    upstream = [job.upstream_fault for job in plan.jobs if job.upstream_fault]
    assert len(upstream) == round(streams * 0.4)
    if len(upstream) >= len(UPSTREAM_FAULTS):  # every kind at least once
        assert set(upstream) == set(UPSTREAM_FAULTS)
    else:  # as many kinds as there are faulted streams
        assert len(set(upstream)) == len(upstream)
    for job in plan.jobs:
        mock = job.body["mock"]
        assert mock["fault_key"] == job.stream_id
        if job.upstream_fault is None:
            assert "fault" not in mock
        else:  # only the first attempt fails, so the stream can still end done
            assert job.upstream_fault in UPSTREAM_FAULTS and mock["fault_times"] == 1


def test_a_config_that_cannot_run_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown process faults"):
        Config(process_faults=("kill_everything",))
    with pytest.raises(ValueError, match="worker"):
        Config(workers=0)


def _delta(text: str) -> dict[str, Any]:
    return events.delta([{"index": 0, "delta": {"content": text}, "finish_reason": None}])


def _stream(texts: list[str]) -> list[tuple[str, dict[str, Any]]]:
    evs = [events.start("s", "m", 0, 1), *(_delta(t) for t in texts), events.done("stop", None)]
    return [(f"1-{i}", e) for i, e in enumerate(evs)]


def _outcome(entries: list[tuple[str, dict[str, Any]]], content: str) -> StreamOutcome:
    return StreamOutcome(
        stream_id="s",
        entry_ids=tuple(i for i, _ in entries),
        status=events.STATUS_DONE,
        message={"role": "assistant", "content": content},
        expected={"role": "assistant", "content": content},
    )


def test_an_exact_reader_passes() -> None:
    entries = _stream(["a", "b", "c"])
    log = ReaderLog("s", 0, received=list(entries), end_status=events.STATUS_DONE)
    verdict = judge_reader(log, _outcome(entries, "abc"))
    assert verdict.exact and verdict.ended and verdict.problems == []


@given(st.data())
def test_a_duplicate_a_gap_or_a_swap_is_always_caught(data: st.DataObject) -> None:
    texts = data.draw(st.lists(st.text("xyz", min_size=1, max_size=3), min_size=2, max_size=8))
    entries = _stream(texts)
    received = list(entries)
    i = data.draw(st.integers(1, len(entries) - 2))
    damage = data.draw(st.sampled_from(["duplicate", "gap", "swap"]))
    if damage == "duplicate":
        received.insert(i, received[i])
    elif damage == "gap":
        del received[i]
    else:
        received[i], received[i + 1] = received[i + 1], received[i]
    log = ReaderLog("s", 0, received=received, end_status=events.STATUS_DONE)
    verdict = judge_reader(log, _outcome(entries, "".join(texts)))
    assert verdict.problems
    assert {"duplicate": verdict.duplicates, "gap": verdict.gaps,
            "swap": verdict.out_of_order}[damage] > 0  # fmt: skip


def test_a_reader_without_end_or_with_the_wrong_text_fails_the_run() -> None:
    entries = _stream(["a", "b"])
    unended = ReaderLog("s", 0, received=list(entries), end_status=None)
    outcome = _outcome(entries, "ab")
    assert not judge_reader(unended, outcome).ended
    reset = [
        *entries[:2],
        ("1-9", events.reset(2)),
        *[(f"2-{k}", e) for k, (_, e) in enumerate(entries[1:])],
    ]
    after_reset = ReaderLog("s", 1, received=reset, end_status=events.STATUS_DONE)
    # reset drops what came before it: "a" once, not "aab"
    assert judge_reader(after_reset, StreamOutcome(
        "s", tuple(i for i, _ in reset), events.STATUS_DONE,
        {"role": "assistant", "content": "ab"}, {"role": "assistant", "content": "ab"},
    )).exact  # fmt: skip
    summary = summarise({"s": outcome}, [unended], {"kill_worker": 1})
    assert not summary.passed and summary.readers_exact == 0
    clean = ReaderLog("s", 0, received=list(entries), end_status=events.STATUS_DONE)
    assert summarise({"s": outcome}, [clean], {}).passed
    assert not summarise({"s": outcome}, [clean], {}, process_exits=["worker exited"]).passed


def test_the_front_is_the_deployments_nginx_conf_with_this_runs_ports(tmp_path: Path) -> None:
    conf = render(DEPLOY_CONF.read_text(), [7001, 7002], 9000, tmp_path)
    assert "server gateway:" not in conf
    assert "server 127.0.0.1:7001 max_fails=1 fail_timeout=1s;" in conf
    assert "server 127.0.0.1:7002 max_fails=1 fail_timeout=1s;" in conf
    assert "listen 127.0.0.1:9000;" in conf
    assert f"access_log {tmp_path / 'nginx-access.log'} streamfan;" in conf
    # what operators run is kept: the upgrade headers, no buffering
    assert "proxy_set_header Upgrade $http_upgrade;" in conf and "proxy_buffering off;" in conf
    with pytest.raises(ValueError, match="server gateway"):
        render("events {}\nhttp {\n}\n", [1], 2, tmp_path)
