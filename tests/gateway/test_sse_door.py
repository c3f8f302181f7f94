"""The SSE door, ``GET /streams/{ID}/events``, read with a real SSE client (httpx + httpx-sse)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from httpx_sse import ServerSentEvent, aconnect_sse

from cli.redis_server import RedisServer
from gateway import Gateway
from streamfan import events
from streamfan.settings import Settings
from tests.gateway.conftest import FAST, WAIT_S, Player, WsClient, token

pytestmark = pytest.mark.timeout(60)


async def read_sse(
    url: str, *, headers: dict[str, str] | None = None, limit: int | None = None
) -> list[ServerSentEvent]:
    """Every message until the response ends (or ``limit`` messages)."""
    got: list[ServerSentEvent] = []
    async with (
        httpx.AsyncClient(timeout=WAIT_S) as http,
        aconnect_sse(http, "GET", url, headers=dict(headers or {})) as source,
    ):
        assert source.response.status_code == 200, await source.response.aread()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for msg in source.aiter_sse():
            got.append(msg)
            if limit is not None and len(got) >= limit:
                break
    return got


def events_of(msgs: list[ServerSentEvent]) -> list[ServerSentEvent]:
    return [m for m in msgs if m.event not in ("end", "error")]


async def test_a_finished_stream_replays_as_one_sse_message_per_event_then_end(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(5)
    url = f"{gateway.http_url}/streams/{player.stream_id}/events?token={token(gw_settings)}"
    msgs = await read_sse(url)
    ids = await player.ids()
    assert [m.id for m in events_of(msgs)] == ids
    assert [m.event for m in events_of(msgs)] == ["start"] + ["delta"] * 5 + ["done"]
    rows = await aredis.xrange(gw_settings.keys.events(player.stream_id))
    assert [orjson.loads(m.data) for m in events_of(msgs)] == [
        orjson.loads(v[b"e"]) for _, v in rows
    ]
    assert msgs[-1].event == "end" and orjson.loads(msgs[-1].data) == {"status": "done"}


async def test_last_event_id_wins_over_from_and_resumes_after_it(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(6)
    ids = await player.ids()
    url = f"{gateway.http_url}/streams/{player.stream_id}/events?from={ids[1]}"
    bearer = {"Authorization": f"Bearer {token(gw_settings)}"}
    msgs = await read_sse(url, headers={**bearer, "Last-Event-ID": ids[4]})
    assert [m.id for m in events_of(msgs)] == ids[5:]
    msgs = await read_sse(url, headers=bearer)
    assert [m.id for m in events_of(msgs)] == ids[2:]


async def test_a_live_stream_reaches_sse_and_websocket_readers_alike(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    tok = token(gw_settings)
    url = f"{gateway.http_url}/streams/{player.stream_id}/events?token={tok}"
    readers = [asyncio.create_task(read_sse(url)) for _ in range(3)]
    ws = await WsClient.open(f"{gateway.url}/ws", tok=tok)
    await ws.subscribe(player.stream_id)
    async with httpx.AsyncClient(timeout=WAIT_S) as http, asyncio.timeout(WAIT_S):
        gauge = "streamfan_gateway_http_streams 3.0"
        while gauge not in (await http.get(gateway.http_url + "/metrics")).text:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # waits-on-time-ok: polling a gauge no event announces
    await player.play(30, pace_s=0.005)
    await ws.finished(player.stream_id)
    ids = await player.ids()
    for reader in readers:
        msgs = await reader
        assert [m.id for m in events_of(msgs)] == ids
    assert ws.ids(player.stream_id) == ids
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        metrics = (await http.get(gateway.http_url + "/metrics")).text
    assert "streamfan_gateway_http_streams 0.0" in metrics  # all three ended


@pytest.mark.parametrize(
    ("path", "auth", "status", "code"),
    [
        ("/streams/nope/events", True, 404, "not_found"),
        ("/streams/bad%20id/events", True, 400, "bad_request"),
        ("/streams/x/events?from=zzz", True, 400, "bad_request"),
        ("/streams/x/events", False, 401, "unauthorized"),
    ],
)
async def test_refusals_before_the_first_byte_are_http_statuses_with_json_bodies(
    gateway: Gateway, gw_settings: Settings, path: str, auth: bool, status: int, code: str
) -> None:
    if auth:
        path += ("&" if "?" in path else "?") + "token=" + token(gw_settings)
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        r = await http.get(gateway.http_url + path)
    assert r.status_code == status
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code


async def test_a_token_for_another_stream_is_403_and_an_expired_position_410(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(2)
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        url = f"{gateway.http_url}/streams/{player.stream_id}/events"
        r = await http.get(url, params={"token": token(gw_settings, ("other",))})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        gone = f"{gateway.http_url}/streams/expired-stream/events"
        r = await http.get(gone, params={"token": token(gw_settings), "from": "1-0"})
        assert r.status_code == 410 and r.json()["error"]["code"] == "gone"


async def test_origins_outside_the_allow_list_are_refused_and_allowed_ones_get_cors(
    start_gateway: Any, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    settings = gw_settings.replace(allowed_origins=("https://app.example",))
    gw = await start_gateway(settings)
    player = await (await Player(aredis, settings).create()).begin()
    await player.play(1)
    url = f"{gw.http_url}/streams/{player.stream_id}/events?token={token(settings)}"
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        r = await http.get(url, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = await http.get(url, headers={"Origin": "https://app.example"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = await http.options(
            url,
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "last-event-id",
            },
        )
        assert r.status_code == 204
        assert r.headers["access-control-allow-headers"] == "last-event-id"


async def test_an_idle_stream_gets_keep_alive_comments(
    start_gateway: Any, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    gw = await start_gateway(gw_settings, dataclasses.replace(FAST, http_keepalive_s=0.1))
    player = await (await Player(aredis, gw_settings).create()).begin()
    url = f"{gw.http_url}/streams/{player.stream_id}/events?token={token(gw_settings)}"
    async with httpx.AsyncClient(timeout=WAIT_S) as http, http.stream("GET", url) as r:
        seen = b""
        async for data in r.aiter_bytes():
            seen += data
            if b": keep-alive\n\n" in seen:
                break
    assert b"event: start" in seen


async def test_a_reader_that_does_not_read_is_cut_and_resumes_from_its_last_id(
    start_gateway: Any, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    settings = gw_settings.replace(send_buffer_bytes=256 * 1024)
    gw = await start_gateway(settings)
    player = await (await Player(aredis, settings).create()).begin()
    path = f"/streams/{player.stream_id}/events?token={token(settings)}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader on a slow link
    sock.connect((gw.host, gw.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    fast = asyncio.create_task(read_sse(gw.http_url + path))
    big = "x" * 8000
    for i in range(0, 1500, 5):
        batch = [
            events.delta([{"index": 0, "delta": {"content": f"{i + k}{big}"}}]) for k in range(5)
        ]
        await player.write(batch)
    await player.finish()
    ids = await player.ids()
    assert [m.id for m in events_of(await fast)] == ids  # nobody else waited
    assert gw.metrics.slow_disconnects == 1
    # What the cut reader got is a prefix (no gap), and it resumes from its last id.
    received = await asyncio.to_thread(_read_all, sock)
    got = [line[4:] for line in received.decode().split("\n") if line.startswith("id: ")]
    assert got == ids[: len(got)] and len(got) < len(ids)
    resumed = await read_sse(gw.http_url + path, headers={"Last-Event-ID": got[-1]})
    assert got + [m.id for m in events_of(resumed)] == ids


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    sock.settimeout(WAIT_S)
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    return data


async def test_a_reader_whose_token_expires_gets_an_error_event_and_the_response_ends(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    short = token(gw_settings, ttl_s=2)  # exp is whole seconds: 1-2 s from now
    url = f"{gateway.http_url}/streams/{player.stream_id}/events?token={short}"
    msgs = await read_sse(url)  # the stream never ends: only the expiry ends this
    assert msgs[-1].event == "error"
    assert orjson.loads(msgs[-1].data) == {"code": "forbidden", "message": "token expired"}
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        r = await http.get(url)  # the browser's reconnect: refused
    assert r.status_code == 401


async def test_while_redis_is_down_the_sse_door_answers_in_band_so_eventsource_retries(
    private_redis: RedisServer, gw_settings: Settings, start_gateway: Any
) -> None:
    s = gw_settings.replace(redis_url=private_redis.url, api_keys=("k" * 32,))
    gw = await start_gateway(s)
    await asyncio.to_thread(private_redis.kill)
    msgs = await read_sse(f"{gw.http_url}/streams/some-stream/events?token={token(s)}")
    assert [m.event for m in msgs] == ["error"]
    assert orjson.loads(msgs[0].data)["code"] == "unavailable"
    assert msgs[0].retry is not None and msgs[0].retry >= 1000
    # The OpenAI door says 503, which the SDKs retry by themselves.
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        r = await http.get(
            f"{gw.http_url}/v1/chat/completions/some-stream/stream",
            headers={"Authorization": "Bearer " + "k" * 32},
        )
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
