"""HTTP on the gateway's port, metrics, and shutdown, in-process and as ``streamfan gateway``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from conftest import FAST, GatewayProcess, Player, WsClient, settings_env, token
from prometheus_client.parser import text_string_to_metric_families

from gateway import Gateway
from gateway.peer import MAX_FRAME_OUT
from streamfan import events
from streamfan.settings import Settings


async def test_health_readiness_and_unknown_paths(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as http:
        assert (await http.get("/healthz")).text == "ok\n"
        ready = await http.get("/readyz")
        while ready.status_code != 200:  # the pub/sub connection comes up just after start
            await asyncio.sleep(0.02)  # waits-on-time-ok: polling readiness
            ready = await http.get("/readyz")
        assert ready.text == "ready\n"
        assert (await http.get("/nope")).status_code == 404


async def test_the_demo_page_and_the_browser_client_are_served_when_installed(
    gw_settings: Settings, tmp_path: Path
) -> None:
    gw = Gateway(gw_settings, tuning=FAST, static_dir=tmp_path)
    async with gw, httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.port}") as http:
        assert (await http.get("/")).status_code == 404
        assert (await http.get("/streamfan.js")).status_code == 404
        (tmp_path / "index.html").write_text("<!doctype html><title>demo</title>")
        (tmp_path / "streamfan.js").write_text("export class StreamFan {}")
        page = await http.get("/")
        assert (page.status_code, page.text) == (200, "<!doctype html><title>demo</title>")
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        js = await http.get("/streamfan.js")
        assert js.text == "export class StreamFan {}"
        assert js.headers["content-type"].startswith("text/javascript")


def _samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


async def test_metrics_count_what_was_delivered_per_gateway(
    start_gateway: Callable[..., Any], aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    gw: Gateway = await start_gateway(gw_settings)
    other: Gateway = await start_gateway(gw_settings)
    player = await (await Player(aredis, gw_settings).create()).begin()
    clients = []
    for _ in range(2):
        client = await WsClient.open(gw.url + "/ws", tok=token(gw_settings))
        await client.subscribe(player.stream_id)
        await client.until(lambda m: m["op"] == "event")  # caught up on "start"
        clients.append(client)
    await clients[0].send(op="subscribe", stream="bad id")
    await clients[0].until(lambda m: m["op"] == "error")
    await player.play(40, batch=4)
    for client in clients:
        await client.finished(player.stream_id)
    async with httpx.AsyncClient() as http:
        resp = await http.get(gw.http_url + "/metrics")
        idle = _samples((await http.get(other.http_url + "/metrics")).text)
    assert resp.headers["content-type"].startswith("text/plain")
    m = _samples(resp.text)
    p = "streamfan_gateway_"
    assert m[p + "events_delivered_total"] == 2 * 42
    assert m[p + "connections_total"] == 2
    assert m[p + "open_connections"] == 2
    assert m[p + "subscriptions"] == 0  # both streams ended
    assert m[p + "frames_sent_total"] >= 2 * 11
    assert m[p + "bytes_sent_total"] > 0
    assert m[p + "errors_total{code=bad_request}"] == 1
    assert m[p + "delivery_lag_seconds_count"] == 41  # live entries, once per stream
    assert m[p + "redis_up"] == 1
    assert idle[p + "events_delivered_total"] == 0  # a registry per gateway
    for client in clients:
        await client.close()


async def test_a_long_history_of_large_events_arrives_in_frames_clients_accept(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    for i in range(0, 600, 50):
        await player.write(
            [
                events.delta([{"index": 0, "delta": {"content": f"{i + k}" + "y" * 6000}}])
                for k in range(50)
            ]
        )
    await player.finish()
    client = await WsClient.open(gateway.url + "/ws", tok=token(gw_settings))
    await client.subscribe(player.stream_id)
    assert (await client.collect(player.stream_id))["op"] == "end"  # type: ignore[index]
    assert client.ids(player.stream_id) == await player.ids()
    assert max(client.sizes) <= MAX_FRAME_OUT < sum(client.sizes) / 4
    await client.close()


async def test_stopping_closes_every_socket_with_going_away(
    gw_settings: Settings, aredis: aioredis.Redis
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    gw = await Gateway(gw_settings, tuning=FAST).start()
    clients = [await WsClient.open(gw.url + "/ws", tok=token(gw_settings)) for _ in range(5)]
    for c in clients:
        await c.subscribe(player.stream_id)
        await c.until(lambda m: m["op"] == "event")
    await gw.stop()
    for c in clients:
        assert await c.closed() == (1001, "going away")


async def test_the_gateway_command_prints_its_port_and_exits_0_on_sigterm(
    gateway_process: Callable[..., GatewayProcess], gw_settings: Settings, aredis: aioredis.Redis
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    proc = gateway_process(gw_settings)
    assert proc.url.startswith("ws://127.0.0.1:")
    client = await WsClient.open(proc.url + "/streams/" + player.stream_id, tok=token(gw_settings))
    await player.play(5, finish=False)
    await client.until(lambda m: m["op"] == "event" and m["event"]["type"] == "delta")
    assert await asyncio.to_thread(proc.terminate) == 0
    assert await client.closed() == (1001, "going away")


def test_the_gateway_command_refuses_to_run_without_a_secret(gw_settings: Settings) -> None:
    env = settings_env(gw_settings)
    env["STREAMFAN_JWT_SECRET"] = ""
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "gateway", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "STREAMFAN_JWT_SECRET" in proc.stderr and "--insecure-no-auth" in proc.stderr
