"""The upstream's key echoed back where a limit cuts: not a piece of it in an event or a log.

The real arq worker in-process, the mock upstream over a real socket answering
with an error message (or a mid-stream error chunk) that holds the worker's own
API key exactly where the 500-character message limit (or the 64-character
code limit) falls. The old code cut first and redacted after: the half before
the cut matched the key no more and went out whole.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from streamfan.client import Client
from streamfan.redact import MIN_FRAGMENT
from streamfan.settings import Settings
from worker.translate import CODE_LIMIT, MESSAGE_LIMIT

from .conftest import RunningWorker

#: The worker's key, long enough to be cut in two pieces of 8+ characters.
KEY = "sk-live-7Hq2Wv9Lz4Pn1Xc8Rb5Tm3Yd6Gk0Fj"


def chat(**mock: Any) -> dict[str, Any]:
    return {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "mock": mock}


def pieces(key: str = KEY) -> list[str]:
    return [key[i : i + MIN_FRAGMENT] for i in range(len(key) - MIN_FRAGMENT + 1)]


async def everything_about(client: Client, settings: Settings, stream_id: str) -> str:
    raw = await client.redis.xrange(settings.keys.events(stream_id))
    meta = await client.redis.hgetall(settings.keys.meta(stream_id))
    return (b"".join(f[b"e"] for _i, f in raw) + b"".join(meta.values())).decode()


@pytest.fixture
def keyed(pipeline_settings: Settings) -> Settings:
    return pipeline_settings.replace(upstream_api_key=KEY, max_attempts=1)


@pytest.mark.parametrize("straddle", [MIN_FRAGMENT, len(KEY) // 2, len(KEY) - MIN_FRAGMENT])
async def test_a_key_echoed_across_the_message_limit_of_an_http_error_leaks_nothing(
    keyed: Settings, client: Client, caplog: pytest.LogCaptureFixture, straddle: int
) -> None:
    caplog.set_level(logging.DEBUG)
    message = "e" * (MESSAGE_LIMIT - straddle) + KEY + " was refused"
    async with RunningWorker(keyed):
        sub = await client.submit(chat(fault="http_401", error={"message": message}))
        result = await client.result(sub.stream_id)
    assert result.status == "error" and result.error is not None
    assert result.error["message"].startswith("eeee")  # the upstream's own message
    seen = await everything_about(client, keyed, sub.stream_id) + caplog.text
    assert [p for p in pieces() if p in seen] == []


async def test_a_key_echoed_across_the_code_limit_of_an_error_chunk_leaks_nothing(
    keyed: Settings, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    error = {"message": "no", "type": "t", "code": "c" * (CODE_LIMIT - 12) + KEY}
    async with RunningWorker(keyed):
        sub = await client.submit(chat(fault="error_chunk", error=error))
        result = await client.result(sub.stream_id)
    assert result.status == "error" and result.error is not None
    assert result.error["code"] == "upstream_stream_error"
    seen = await everything_about(client, keyed, sub.stream_id) + caplog.text
    assert [p for p in pieces() if p in seen] == []


async def test_a_worker_masks_its_key_in_whatever_its_process_logs(
    keyed: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # As httpcore logs an upstream's response headers at DEBUG, with the key echoed.
    caplog.set_level(logging.DEBUG)
    async with RunningWorker(keyed):
        logging.getLogger("httpcore.http11").debug(
            "receive_response_headers.complete return_value=%r", [(b"x-echo", KEY.encode())]
        )
    assert "receive_response_headers.complete" in caplog.text
    assert [p for p in pieces() if p in caplog.text] == []
