"""What the OpenAI-door tests share: the whole stack behind the gateway, and the SDK.

A test module takes the ``door`` fixture with ``from tests.gateway.doorstack import
door_fixture``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from gateway import Gateway
from streamfan import events
from streamfan.assembler import Assembler
from streamfan.client import Client
from streamfan.mock.server import MockUpstream
from streamfan.settings import Settings
from tests.gateway.conftest import WAIT_S
from tests.integration.conftest import RunningWorker

KEY = "sk-test-" + "k" * 40


@dataclass
class Door:
    gateway: Gateway
    client: Client
    settings: Settings
    sdk: openai.AsyncOpenAI

    def sdk_with(self, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.gateway.http_url + "/v1", max_retries=0, timeout=WAIT_S, **kwargs
        )

    async def chunks_of(self, stream_id: str) -> list[list[Any]]:
        """The ``choices`` of every delta event in Redis: what the chunks must carry."""
        rows = await self.client.redis.xrange(self.settings.keys.events(stream_id))
        out = []
        for _, fields in rows:
            ev = events.decode_event(fields[b"e"])
            if ev["type"] == events.RESET:
                out = []
            elif ev["type"] == events.DELTA:
                out.append(ev["choices"])
        return out


@pytest.fixture(name="door")
async def door_fixture(gw_settings: Settings, start_gateway: Any) -> AsyncIterator[Door]:
    async with MockUpstream() as mock:
        s = gw_settings.replace(
            upstream_base_url=mock.base_url, api_keys=(KEY,), retry_base_s=0.05, retry_max_s=0.1
        )
        async with RunningWorker(s), Client(s) as client:
            gw = await start_gateway(s)
            sdk = openai.AsyncOpenAI(
                base_url=gw.http_url + "/v1", api_key=KEY, max_retries=0, timeout=WAIT_S
            )
            yield Door(gw, client, s, sdk)
            await sdk.close()


def request(**mock: Any) -> dict[str, Any]:
    return {
        "model": "mock-gpt",
        "messages": [{"role": "user", "content": "hello"}],
        "extra_body": {"mock": mock},
    }


def assembled(chunks: list[ChatCompletionChunk]) -> Assembler:
    """The reply the SDK's chunks build, by the same rules as the stream's own."""
    return assembled_dicts([c.model_dump(exclude_unset=True) for c in chunks])


def assembled_dicts(chunks: list[dict[str, Any]]) -> Assembler:
    asm = Assembler()
    for c in chunks:
        if c["choices"]:
            asm.feed(events.delta(c["choices"]))
        if c.get("usage") is not None:
            asm.feed(events.usage(c["usage"]))
    return asm
