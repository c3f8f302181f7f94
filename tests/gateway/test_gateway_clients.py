"""Bad, slow and abusive clients: specific errors, closes with codes, and nobody else slowed."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import redis.asyncio as aioredis
from conftest import FAST, Player, WsClient, eventually, token
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway import Gateway
from streamfan import events
from streamfan.errors import ConfigError
from streamfan.settings import Settings
from streamfan.tokens import mint_token

#: (case, frame, code, stream, reply_to): the op each error answers, None when
#: no op could be read from the frame.
BAD_FRAMES = [
    ("not JSON", "hello", "bad_request", None, None),
    ("not an object", "[1, 2]", "bad_request", None, None),
    ("no op", '{"stream": "s1"}', "bad_request", None, None),
    ("unknown op", '{"op": "publish", "stream": "s1"}', "bad_request", None, None),
    ("op of the wrong type", '{"op": 7}', "bad_request", None, None),
    ("missing stream", '{"op": "subscribe"}', "bad_request", None, "subscribe"),
    (
        "stream of the wrong type",
        '{"op": "subscribe", "stream": 12}',
        "bad_request",
        None,
        "subscribe",
    ),
    ("invalid stream id", '{"op": "subscribe", "stream": "a b"}', "bad_request", None, "subscribe"),
    (
        "from of the wrong type",
        '{"op": "subscribe", "stream": "s1", "from": 0}',
        "bad_request",
        "s1",
        "subscribe",
    ),
    (
        "invalid from",
        '{"op": "subscribe", "stream": "s1", "from": "x-1"}',
        "bad_request",
        "s1",
        "subscribe",
    ),
    (
        "stream the token does not allow",
        '{"op": "subscribe", "stream": "other"}',
        "forbidden",
        "other",
        "subscribe",
    ),
    ("unsubscribe without stream", '{"op": "unsubscribe"}', "bad_request", None, "unsubscribe"),
    ("cancel without the claim", '{"op": "cancel", "stream": "s1"}', "forbidden", "s1", "cancel"),
    ("binary garbage", b"\x00\xff", "bad_request", None, None),
]


async def test_every_bad_frame_gets_its_error_and_the_connection_stays_open(
    gateway: Gateway, gw_settings: Settings
) -> None:
    client = await WsClient.open(gateway.url + "/ws", tok=token(gw_settings, ("s1", "s2", "s3")))
    for case, frame, code, stream, reply_to in BAD_FRAMES:
        await client.ws.send(frame)
        msg = await client.next()
        assert msg["op"] == "error", case
        assert (msg["code"], msg["stream"], msg["reply_to"]) == (code, stream, reply_to), case
        assert msg["message"], case
    await client.send(op="ping")
    assert await client.next() == {"op": "pong"}
    assert gateway.metrics.errors["bad_request"] == 12
    await client.close()


async def test_subscription_limits_answer_with_specific_codes(
    start_gateway: Callable[..., Any], aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    gw: Gateway = await start_gateway(gw_settings.replace(max_subscriptions=2))
    streams = [(await Player(aredis, gw_settings).create()).stream_id for _ in range(3)]
    client = await WsClient.open(gw.url + "/ws", tok=token(gw_settings))
    await client.subscribe(streams[0])
    await client.subscribe(streams[0])
    msg = await client.until(lambda m: m["op"] == "error")
    # already subscribed
    assert (msg["code"], msg["stream"], msg["reply_to"]) == ("bad_request", streams[0], "subscribe")
    await client.subscribe(streams[1])
    await client.subscribe(streams[2])
    msg = await client.until(lambda m: m["op"] == "error")
    assert (msg["code"], msg["stream"], msg["reply_to"]) == (
        "too_many_subscriptions",
        streams[2],
        "subscribe",
    )
    await client.send(op="unsubscribe", stream=streams[1])
    await client.subscribe(streams[2])
    msg = await client.until(lambda m: m["op"] == "subscribed" and m["stream"] == streams[2])
    await client.close()


def _none_alg_token() -> str:
    return jwt.encode({"streams": ["*"], "exp": int(time.time()) + 60}, key=None, algorithm="none")


HANDSHAKES: list[tuple[str, Callable[[Settings], tuple[str, dict[str, str]]], int, str]] = [
    ("no token", lambda s: ("/ws", {}), 401, "missing token"),
    ("garbage token", lambda s: ("/ws?token=abc", {}), 401, "invalid token"),
    (
        "expired token",
        lambda s: (
            "/ws?token=" + mint_token(s.jwt_secret or "", ["*"], ttl_s=10, now=time.time() - 60),
            {},
        ),
        401,
        "token expired",
    ),
    ("alg none", lambda s: ("/ws?token=" + _none_alg_token(), {}), 401, "invalid token"),
    (
        "another key",
        lambda s: ("/ws?token=" + mint_token("another-secret-0123456789abcdef-xyz", ["*"]), {}),
        401,
        "invalid token",
    ),
    (
        "a bearer of the wrong scheme",
        lambda s: ("/ws", {"Authorization": "Basic " + token(s)}),
        401,
        "missing token",
    ),
    (
        "stream not allowed",
        lambda s: ("/streams/b?token=" + token(s, ("a",)), {}),
        403,
        "does not allow",
    ),
    (
        "invalid stream id",
        lambda s: ("/streams/a%20b?token=" + token(s), {}),
        400,
        "invalid stream id",
    ),
    (
        "invalid from",
        lambda s: ("/streams/a?from=now&token=" + token(s), {}),
        400,
        "invalid 'from'",
    ),
    (
        "foreign origin",
        lambda s: ("/ws?token=" + token(s), {"Origin": "https://evil.example"}),
        403,
        "origin",
    ),
]


@pytest.mark.parametrize(
    ("case", "make", "status", "reason"), HANDSHAKES, ids=[h[0] for h in HANDSHAKES]
)
async def test_a_bad_handshake_is_refused_with_an_http_status_and_a_reason(
    start_gateway: Callable[..., Any],
    gw_settings: Settings,
    case: str,
    make: Callable[[Settings], tuple[str, dict[str, str]]],
    status: int,
    reason: str,
) -> None:
    gw: Gateway = await start_gateway(gw_settings.replace(allowed_origins=("https://app.example",)))
    path, headers = make(gw_settings)
    with pytest.raises(InvalidStatus) as info:
        await connect(gw.url + path, additional_headers=headers)
    assert info.value.response.status_code == status
    assert reason in info.value.response.body.decode()


async def test_an_allowed_origin_and_a_bearer_header_are_accepted(
    start_gateway: Callable[..., Any], gw_settings: Settings
) -> None:
    gw: Gateway = await start_gateway(gw_settings.replace(allowed_origins=("https://app.example",)))
    async with connect(
        gw.url + "/ws",
        additional_headers={"Authorization": "Bearer " + token(gw_settings)},
        origin="https://app.example",  # type: ignore[arg-type]
    ) as ws:
        await ws.send('{"op":"ping"}')
        assert await ws.recv() == '{"op":"pong"}'


async def test_an_oversized_frame_closes_the_connection_with_1009(
    gateway: Gateway, gw_settings: Settings
) -> None:
    client = await WsClient.open(gateway.url + "/ws", tok=token(gw_settings))
    await client.ws.send("x" * (gw_settings.max_frame_bytes + 1))
    assert (await client.closed())[0] == 1009


async def test_a_flood_closes_the_connection_with_1008(
    gateway: Gateway, gw_settings: Settings
) -> None:
    client = await WsClient.open(gateway.url + "/ws", tok=token(gw_settings))
    for _ in range(int(gw_settings.max_messages_per_s * 2 + gw_settings.max_subscriptions + 50)):
        await client.ws.send('{"op":"ping"}')
    code, reason = await client.closed()
    assert code == 1008
    assert reason is not None and reason.startswith("flood")
    assert gateway.metrics.flood_disconnects == 1


async def test_a_bare_connection_that_says_nothing_is_closed_as_idle(
    start_gateway: Callable[..., Any], gw_settings: Settings
) -> None:
    gw: Gateway = await start_gateway(gw_settings.replace(handshake_timeout_s=0.3))
    client = await WsClient.open(gw.url + "/ws", tok=token(gw_settings))
    assert (await client.closed())[0] == 4002


async def test_a_connection_is_closed_when_its_token_expires(
    gateway: Gateway, gw_settings: Settings
) -> None:
    client = await WsClient.open(gateway.url + "/ws", tok=token(gw_settings, ttl_s=2))
    await client.send(op="ping")
    assert await client.next() == {"op": "pong"}
    assert await client.closed() == (4001, "token expired")


async def test_a_client_that_does_not_read_is_cut_as_too_slow_and_nobody_else_waits(
    start_gateway: Callable[..., Any], aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    s = gw_settings.replace(send_buffer_bytes=256 * 1024)
    gw: Gateway = await start_gateway(s, FAST.__class__(close_timeout_s=30.0))
    player = await (await Player(aredis, s).create()).begin()
    tok = token(s)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client on a slow link
    sock.connect((gw.host, gw.port))
    slow = WsClient(await connect(gw.url + "/ws?token=" + tok, sock=sock, max_queue=1))
    await slow.subscribe(player.stream_id, "0")
    fast = await WsClient.open(gw.url + "/ws", tok=tok)
    await fast.subscribe(player.stream_id, "0")
    reading = asyncio.create_task(fast.collect(player.stream_id))
    big = "x" * 8000
    for i in range(0, 1500, 5):
        batch = [
            events.delta([{"index": 0, "delta": {"content": f"{i + k}{big}"}}]) for k in range(5)
        ]
        await player.write(batch)
    await player.finish()
    assert (await reading)["op"] == "end"  # type: ignore[index]
    ids = await player.ids()
    assert fast.ids(player.stream_id) == ids
    assert gw.metrics.slow_disconnects == 1
    # The slow client was cut, not fed a gap: what it got is a prefix, and it resumes.
    with pytest.raises(Exception):  # noqa: B017 - whatever ends the read: the close
        await slow.collect(player.stream_id)
    assert (slow.ws.close_code, slow.ws.close_reason) == (4000, "too_slow")
    got = slow.ids(player.stream_id)
    assert got == ids[: len(got)] and len(got) < len(ids)
    resumed = await WsClient.open(gw.url + "/ws", tok=tok)
    await resumed.subscribe(player.stream_id, got[-1] if got else "0")
    assert (await resumed.collect(player.stream_id))["op"] == "end"  # type: ignore[index]
    assert got + resumed.ids(player.stream_id) == ids
    await fast.close()
    await resumed.close()


async def test_a_token_with_the_cancel_claim_cancels_and_subscribers_see_the_end(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await Player(aredis, gw_settings).create()  # queued: cancel ends it at once
    reader = await WsClient.open(gateway.url + "/ws", tok=token(gw_settings))
    await reader.subscribe(player.stream_id)
    await reader.until(lambda m: m["op"] == "subscribed")
    canceller = await WsClient.open(
        gateway.url + "/ws", tok=token(gw_settings, (player.stream_id,), cancel=True)
    )
    await canceller.send(op="cancel", stream="unknown-stream")
    refused = await canceller.next()
    assert (refused["code"], refused["reply_to"]) == ("forbidden", "cancel")  # not in its token
    await canceller.send(op="cancel", stream=player.stream_id)
    # Accepted: the stream was queued, so it is over already.
    assert await canceller.next() == {
        "op": "cancelling",
        "stream": player.stream_id,
        "status": "cancelled",
    }
    end = await reader.finished(player.stream_id)
    assert end == {"op": "end", "stream": player.stream_id, "status": "cancelled"}
    assert reader.events(player.stream_id)[-1]["type"] == "cancelled"
    await canceller.close()
    await reader.close()


async def test_a_cancel_is_answered_with_the_status_it_leaves_the_stream_in(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    running = await (await Player(aredis, gw_settings).create()).begin()
    finished = await (await Player(aredis, gw_settings).create()).begin()
    await finished.play(2)
    client = await WsClient.open(gateway.url + "/ws", tok=token(gw_settings, cancel=True))
    for player, status in ((running, "running"), (finished, "done")):
        await client.send(op="cancel", stream=player.stream_id)
        assert await client.next() == {
            "op": "cancelling",
            "stream": player.stream_id,
            "status": status,
        }
    # The running job is flagged: its worker sees the flag and writes "cancelled".
    assert await aredis.hget(gw_settings.keys.meta(running.stream_id), "cancel")
    await client.close()


async def test_a_refused_cancel_says_so_and_leaves_the_subscription_alone(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    client = await WsClient.open(gateway.url + "/ws", tok=token(gw_settings))  # no cancel claim
    await client.subscribe(player.stream_id)
    await client.send(op="cancel", stream=player.stream_id)
    refused = await client.until(lambda m: m["op"] == "error")
    assert refused == {
        "op": "error",
        "stream": player.stream_id,
        "code": "forbidden",
        "message": f"token does not allow cancelling {player.stream_id!r}",
        "reply_to": "cancel",
    }
    await player.play(3)
    await client.until(lambda m: m["op"] == "end")  # the subscription carried on to the end
    assert client.ids(player.stream_id) == await player.ids()
    await client.close()


async def test_cancelling_a_stream_that_does_not_exist_is_not_found(
    gateway: Gateway, gw_settings: Settings
) -> None:
    client = await WsClient.open(gateway.url + "/ws", tok=token(gw_settings, cancel=True))
    await client.send(op="cancel", stream="no-such-stream")
    msg = await client.next()
    assert (msg["op"], msg["code"], msg["stream"], msg["reply_to"]) == (
        "error",
        "not_found",
        "no-such-stream",
        "cancel",
    )
    await client.close()


async def test_without_a_secret_the_gateway_refuses_to_start_unless_told_it_is_insecure(
    start_gateway: Callable[..., Any], gw_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError, match="STREAMFAN_JWT_SECRET"):
        await Gateway(gw_settings.replace(jwt_secret=None)).start()
    gw: Gateway = await start_gateway(gw_settings.replace(jwt_secret=None, insecure_no_auth=True))
    assert any("INSECURE" in r.message and r.levelname == "WARNING" for r in caplog.records)
    async with connect(gw.url + "/ws") as ws:
        await ws.send('{"op":"cancel","stream":"nope"}')
        assert '"not_found"' in str(await ws.recv())  # no token, and even cancel is open


@pytest.mark.parametrize("compression", [False, True])
async def test_compression_is_negotiated_only_when_turned_on(
    start_gateway: Callable[..., Any], gw_settings: Settings, compression: bool
) -> None:
    gw: Gateway = await start_gateway(gw_settings.replace(compression=compression))
    async with connect(gw.url + "/ws?token=" + token(gw_settings)) as ws:
        assert bool(ws.protocol.extensions) is compression
        await ws.send('{"op":"ping"}')
        assert await ws.recv() == '{"op":"pong"}'


async def test_a_client_closing_mid_catch_up_leaves_nothing_behind(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(3000, batch=50, finish=False)
    tok = token(gw_settings)
    for _ in range(5):
        client = await WsClient.open(gateway.url + "/ws", tok=tok)
        await client.subscribe(player.stream_id)
        await client.until(lambda m: m["op"] == "event")
        client.ws.transport.abort()
    await eventually(lambda: not gateway.peers and not gateway.hub.streams)
