"""Each benchmark scenario runs at tiny sizes and produces sane figures.

These check that the harness works end to end (processes start and stop, every
key of the JSON is there, every number is finite and the ones that must be are
positive), never the figures' values: those depend on the machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import main
from bench.report import all_finite

pytestmark = pytest.mark.timeout(60)


def run(scenario: str, out: Path, redis_url: str, flags: str) -> dict[str, Any]:
    """``python -m bench SCENARIO FLAGS`` against the test Redis, results in ``out``."""
    assert main([scenario, "--out", str(out), "--redis-url", redis_url, *flags.split()]) == 0
    latest = out / f"{scenario}-latest.json"
    data: dict[str, Any] = json.loads(latest.read_text())
    assert data["scenario"] == scenario
    assert data["command"].startswith(f"python -m bench {scenario}")
    machine = data["machine"]
    assert machine["cores"] > 0 and machine["ram_bytes"] > 0 and machine["python"]
    assert "redis_url" in data["settings"]
    assert all_finite(data)
    return data


def test_fanout_measures_streamfan_its_sse_door_and_both_baselines(
    tmp_path: Path, redis_url: str
) -> None:
    data = run(
        "fanout",
        tmp_path,
        redis_url,
        "--clients 2 --client-procs 1 --min-events 30 --max-events 30 "
        "--half-seconds 0.5 --fixed-rate 100 --deadline 20",
    )
    rows = data["rows"]
    assert {(r["server"], r["phase"]) for r in rows} == {
        (s, p) for s in ("streamfan", "sse", "ceiling", "naive") for p in ("max", "half", "fixed")
    }
    assert {(x["clients_per_stream"], x["phase"]) for x in data["sse_vs_websocket"]} == {
        (2, p) for p in ("max", "half", "fixed")
    }
    for r in rows:
        assert r["delivered"] == r["expected"] > 0
        assert r["events_per_s"] > 0 and r["frames"] > 0
        assert 0 <= r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
        assert len(r["latency_quantiles_ms"]) == 101
        assert r["server_rss_bytes"] > 0 and r["server_cpu_cores"] >= 0
        assert r["redis_commands_per_event"] >= 0
    streamfan = [r for r in rows if r["server"] == "streamfan"]
    assert all(r["redis_commands"].get("evalsha", 0) > 0 for r in streamfan)
    (ratio,) = data["ratios"]
    assert ratio["vs_ceiling_events_per_s"] > 0 and ratio["vs_naive_events_per_s"] > 0
    assert ratio["vs_ceiling_frames_per_s"] > 0 and ratio["vs_naive_frames_per_s"] > 0


def test_ttft_measures_added_time_at_idle_and_under_load(tmp_path: Path, redis_url: str) -> None:
    data = run("ttft", tmp_path, redis_url, "--jobs 3 --background 5 --upstream-ttft-ms 5")
    phases = {p["phase"]: p for p in data["phases"]}
    assert set(phases) == {"idle", "loaded"}
    assert phases["loaded"]["background_streams"] == 5
    for p in phases.values():
        assert p["jobs"] == 3 == p["added_ms"]["count"]
        assert p["to_start_event_ms"]["p50"] > 0 and p["submit_call_ms"]["p50"] > 0


def test_ingest_measures_cpu_and_round_trips_per_read(tmp_path: Path, redis_url: str) -> None:
    data = run("ingest", tmp_path, redis_url, "--streams 1,3 --rate 50 --warmup 0.5 --window 1")
    assert [r["streams"] for r in data["rows"]] == [1, 3]
    for r in data["rows"]:
        assert r["chunks"] > 0 and r["reads"] > 0 and r["writes"] > 0
        assert r["worker_cpu_us_per_chunk"] > 0 and r["round_trips_per_read"] > 0
        assert r["lag_ms"]["count"] > 0
        assert r["round_trips"] > 0 and r["streams_per_round_trip"] >= 1
        alone = r["upstream_alone"]
        assert alone["streams"] == r["streams"] and alone["chunks"] > 0
        assert alone["cpu_us_per_chunk"] > 0
    assert data["baselines"]["sse_decoder"]["cpu_us_per_chunk"] > 0
    assert data["baselines"]["xadd_loop"]["wall_us_per_xadd"] > 0
    assert data["streams_per_core_estimate"] > 0
    assert data["max_sustained_streams"] >= 0


def test_ingest_and_fanout_run_with_the_events_on_a_cluster(tmp_path: Path, redis_url: str) -> None:
    data = run(
        "ingest",
        tmp_path,
        redis_url,
        "--redis cluster --streams 6 --rate 50 --warmup 0.5 --window 1",
    )
    (row,) = data["rows"]
    assert row["redis"] == "cluster" and row["redis_nodes"] == 3
    assert row["chunks"] > 0 and row["redis_commands"]["evalsha"] > 0
    # One round trip per node a send touches, never more.
    assert 0 < row["round_trips_per_read"] <= 3
    data = run(
        "fanout",
        tmp_path,
        redis_url,
        "--redis cluster --clients 2 --streams 3 --client-procs 1 --min-events 30 "
        "--max-events 30 --half-seconds 0.5 --fixed-rate 0 --deadline 20",
    )
    servers = {r["server"] for r in data["rows"]}
    assert {"streamfan", "ceiling"} <= servers and "naive" not in servers
    for r in data["rows"]:
        assert r["delivered"] == r["expected"] > 0
        if r["server"] == "streamfan":
            assert r["redis"] == "cluster" and r["redis_commands_per_event"] > 0


def test_memory_measures_rss_with_and_after_connections(tmp_path: Path, redis_url: str) -> None:
    data = run(
        "memory", tmp_path, redis_url, "--connections 20 --streams 3 --client-procs 2 --rounds 1"
    )
    (rnd,) = data["rounds"]
    assert rnd["connected"] == 20 and rnd["failed"] == 0
    assert data["baseline_rss_bytes"] > 0 and rnd["rss_loaded_bytes"] > 0
    assert rnd["rss_after_bytes"] > 0 and rnd["fds_after"] < rnd["fds_loaded"]
    assert rnd["rss_left_bytes"] > 0
    # Far fewer connections than the gateway's trim needs gone: none, and no wait for one.
    assert rnd["trims"] == 0 and rnd["trim_after_s"] is None


def test_plot_draws_the_fanout_charts(tmp_path: Path, redis_url: str) -> None:
    results = tmp_path / "results"
    run(
        "fanout",
        results,
        redis_url,
        "--clients 1,2 --client-procs 1 --min-events 20 "
        "--max-events 20 --half-seconds 0.5 --fixed-rate 0",
    )
    img = tmp_path / "img"
    assert main(["plot", "--results", str(results), "--img", str(img)]) == 0
    for name in ("fanout-throughput.svg", "fanout-latency.svg"):
        assert (img / name).read_text().lstrip().startswith("<?xml")


def test_clients_measures_the_append_and_the_sharded_wakeup_on_a_cluster(
    tmp_path: Path, cluster_url: str
) -> None:
    # Only the library the suite installs; coredis and valkey-glide come with .[bench].
    data = run("clients", tmp_path, cluster_url, "--libs redis-py --appends 50 --messages 200")
    (row,) = data["rows"]
    assert row["lib"] == "redis-py"
    assert row["append_cpu_us"] > 0 and row["wakeup_cpu_us"] > 0


def test_durable_measures_the_finish_delay_and_cpu_of_both_modes(tmp_path: Path) -> None:
    # No --redis-url: the scenario starts its own Valkey with an AOF.
    assert main(["durable", "--out", str(tmp_path), "--streams", "4", "--rounds", "1"]) == 0
    data = json.loads((tmp_path / "durable-latest.json").read_text())
    assert data["scenario"] == "durable" and all_finite(data)
    rows = data["rows"]
    for mode in ("off", "local"):
        assert rows[mode]["worker_cpu_us_per_stream"] > 0
        assert rows[mode]["finish_delay_ms_p99"] >= rows[mode]["finish_delay_ms_p50"] >= 0
    assert rows["ratio"]["worker_cpu_per_stream"] > 0
