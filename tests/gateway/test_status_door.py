"""``GET /streams/{ID}``: the meta, and once finished the assembled reply in one response."""

from __future__ import annotations

import httpx
import pytest
import redis.asyncio as aioredis

from gateway import Gateway
from streamfan import events
from streamfan.assembler import Assembler
from streamfan.settings import Settings
from tests.gateway.conftest import WAIT_S, Player, token

pytestmark = pytest.mark.timeout(60)


async def get(gateway: Gateway, path: str, tok: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        return await http.get(gateway.http_url + path, headers=headers)


async def test_a_running_stream_shows_its_meta_and_no_reply(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(2, finish=False)
    r = await get(gateway, f"/streams/{player.stream_id}", token(gw_settings))
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "running" and body["model"] == "m"
    assert body["last_id"] == (await player.ids())[-1]
    assert "message" not in body and "owner" not in body


async def test_a_finished_stream_comes_whole_as_the_assembler_builds_it(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(7)
    r = await get(gateway, f"/streams/{player.stream_id}", token(gw_settings))
    body = r.json()
    expected = Assembler()
    for _, fields in await aredis.xrange(gw_settings.keys.events(player.stream_id)):
        expected.feed(events.decode_event(fields[b"e"]))
    assert body["status"] == "done"
    assert (
        body["message"]
        == expected.message()
        == {
            "role": "assistant",
            "content": "".join(f"t{i} " for i in range(7)),
        }
    )
    assert body["finish_reason"] == "stop" and body["usage"] == {"total_tokens": 8}
    assert [c["index"] for c in body["choices"]] == [0]


@pytest.mark.parametrize(
    ("path", "auth", "status", "code"),
    [
        ("/streams/no-such-stream", "all", 404, "not_found"),
        ("/streams/a%20b", "all", 400, "bad_request"),
        ("/streams/some-stream", None, 401, "unauthorized"),
        ("/streams/some-stream", "other", 403, "forbidden"),
    ],
)
async def test_refusals_are_statuses_with_openai_shaped_bodies(
    gateway: Gateway, gw_settings: Settings, path: str, auth: str | None, status: int, code: str
) -> None:
    tok = None if auth is None else token(gw_settings, ("*",) if auth == "all" else ("x",))
    r = await get(gateway, path, tok)
    assert r.status_code == status
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["code"] == code
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")


async def test_a_websocket_upgrade_on_the_same_path_is_still_the_websocket_shortcut(
    gateway: Gateway, aredis: aioredis.Redis, gw_settings: Settings
) -> None:
    from tests.gateway.conftest import WsClient

    player = await (await Player(aredis, gw_settings).create()).begin()
    await player.play(1)
    ws = await WsClient.open(f"{gateway.url}/streams/{player.stream_id}", tok=token(gw_settings))
    assert (await ws.finished(player.stream_id))["op"] == "end"
    r = await get(gateway, "/healthz", None)  # websockets' own endpoints are untouched
    assert r.status_code == 200 and r.text == "ok\n"
    r = await get(gateway, f"/streams/{player.stream_id}", token(gw_settings))
    assert r.json()["status"] == "done"
