"""The whole path with the real parts: Client.submit → arq worker → mock upstream →
Redis → gateway → 250 WebSocket clients, joining late and resuming after drops."""

from __future__ import annotations

import asyncio
import random

from conftest import WsClient, token

from gateway import Gateway
from streamfan.client import Client
from streamfan.mock.server import MockUpstream
from streamfan.settings import Settings
from tests.integration.conftest import RunningWorker


async def test_250_clients_of_a_real_2000_token_reply_each_get_every_id_once_in_order(
    gateway: Gateway, gw_settings: Settings
) -> None:
    rng = random.Random(11)
    n_tokens = 2000
    async with MockUpstream() as mock, Client(gw_settings) as client:
        settings = gw_settings.replace(upstream_base_url=mock.base_url)
        tok = token(gw_settings)
        async with RunningWorker(settings):
            body = {
                "model": "mock-gpt",
                "messages": [{"role": "user", "content": "a long one"}],
                "mock": {"reply_tokens": n_tokens, "tokens_per_s": 500},
            }
            sub = await client.submit(body)

            async def follow(from_: str) -> WsClient:
                ws = await WsClient.open(gateway.url + "/ws", tok=tok)
                await ws.subscribe(sub.stream_id, from_)
                return ws

            async def reader(join_after: int, drop_after: int | None) -> list[str]:
                await mock.wait_chunks(0, join_after)
                ws = await follow("0")
                seen: list[str] = []
                if drop_after is not None:
                    end = await ws.collect(sub.stream_id, stop_after=drop_after)
                    seen = ws.ids(sub.stream_id)
                    ws.ws.transport.abort()
                    if end is not None:
                        return seen
                    ws = await follow(seen[-1])
                end = await ws.collect(sub.stream_id)
                assert end is not None and end["op"] == "end", end
                await ws.close()
                return seen + ws.ids(sub.stream_id)

            readers = [
                asyncio.create_task(
                    reader(
                        rng.randint(1, n_tokens),
                        rng.randint(1, n_tokens) if i < 50 else None,
                    )
                )
                for i in range(250)
            ]
            results = await asyncio.gather(*readers)
            reply = await client.result(sub.stream_id)
    truth = [e.decode() for e, _ in await client_ids(gw_settings, sub.stream_id)]
    assert reply.status == "done"
    assert len(truth) >= n_tokens
    for got in results:
        assert got == truth


async def client_ids(settings: Settings, stream_id: str) -> list[tuple[bytes, object]]:
    async with Client(settings) as c:
        rows: list[tuple[bytes, object]] = await c.redis.xrange(settings.keys.events(stream_id))
        return rows
