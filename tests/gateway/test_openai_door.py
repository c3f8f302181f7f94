"""The OpenAI-compatible door read by the official ``openai`` Python SDK, against the real
stack: Valkey, the mock upstream, an arq worker and the gateway."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.gateway.conftest import WAIT_S
from tests.gateway.doorstack import KEY, Door, assembled, door_fixture, request  # noqa: F401

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize(
    "mock",
    [
        {"reply_tokens": 40},
        {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
        {"n": 2, "reply_tokens": 25},
        {"reasoning": "thinking...", "refusal": "I would rather not.", "reply": "ok"},
    ],
    ids=["text", "tool_calls", "n2", "vendor_fields"],
)
async def test_the_sdks_stream_equals_client_result_and_retrieve(
    door: Door, mock: dict[str, Any]
) -> None:
    stream = await door.sdk.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **request(**mock)
    )
    chunks = [c async for c in stream]
    sid = chunks[0].id
    result = await door.client.result(sid)
    assert result.status == "done"
    asm = assembled(chunks)
    # The same ChatCompletion: text, tool calls, every choice, usage.
    assert asm.chat_completion(sid, chunks[0].model, chunks[0].created) == result.chat_completion
    assert result.usage is not None and chunks[-1].choices == [] and chunks[-1].usage
    # Each chunk's choices are the upstream's, untouched (vendor fields too).
    assert [
        [ch.model_dump(exclude_unset=True) for ch in c.choices] for c in chunks if c.choices
    ] == await door.chunks_of(sid)
    assert {(c.id, c.object, c.model, c.created) for c in chunks} == {
        (sid, "chat.completion.chunk", "mock-gpt", result.chat_completion["created"])
    }
    retrieved = await door.sdk.chat.completions.retrieve(sid)
    assert retrieved.model_dump(exclude_unset=True) == result.chat_completion


async def test_usage_is_only_streamed_when_asked_for(door: Door) -> None:
    stream = await door.sdk.chat.completions.create(stream=True, **request(reply_tokens=5))
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


async def test_stream_false_waits_and_returns_the_chat_completion(door: Door) -> None:
    raw = await door.sdk.chat.completions.with_raw_response.create(**request(reply_tokens=30, n=2))
    completion = raw.parse()
    sid = raw.headers["x-streamfan-stream-id"]
    assert completion.id == sid
    result = await door.client.result(sid)
    assert completion.model_dump(exclude_unset=True) == result.chat_completion
    assert len(completion.choices) == 2 and completion.usage is not None
    assert raw.headers["x-streamfan-token"]


async def _break_off_after(door: Door, body: dict[str, Any], n: int) -> tuple[str, list[Any]]:
    """POST and read the first ``n`` chunk messages raw; (stream id, [(SSE id, content)])."""
    out: list[tuple[str, str]] = []
    url = door.gateway.http_url + "/v1/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}"}
    async with (
        httpx.AsyncClient(timeout=WAIT_S) as http,
        http.stream("POST", url, headers=headers, json=body) as r,
    ):
        assert r.status_code == 200
        entry_id = None
        async for line in r.aiter_lines():
            if line.startswith("id: "):
                entry_id = line[4:]
            elif line.startswith("data: {"):
                choices = orjson.loads(line[6:])["choices"]
                assert entry_id is not None and choices
                out.append((entry_id, choices[0]["delta"].get("content") or ""))
                if len(out) >= n:
                    break
        return r.headers["x-streamfan-stream-id"], out


def reattach(sdk: openai.AsyncOpenAI, sid: str, **params: str) -> Any:
    """``GET /v1/chat/completions/{ID}/stream`` through the SDK's own SSE stream."""
    return sdk.get(
        f"/chat/completions/{sid}/stream",
        cast_to=ChatCompletionChunk,
        stream=True,
        stream_cls=openai.AsyncStream[ChatCompletionChunk],
        options={"params": params},
    )


async def test_a_reader_that_breaks_off_reattaches_with_starting_after_and_the_text_is_exact(
    door: Door,
) -> None:
    body = {
        "model": "mock-gpt",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "mock": {"reply_tokens": 120, "tokens_per_s": 200},
    }
    sid, first = await _break_off_after(door, body, 10)
    # The job goes on without its reader (disconnect is not cancel).
    tail = [c async for c in await reattach(door.sdk, sid, starting_after=first[-1][0])]
    result = await door.client.result(sid)
    assert result.status == "done"
    text = "".join(t for _, t in first) + "".join(
        (c.choices[0].delta.content or "") for c in tail if c.choices
    )
    assert text == result.text
    # Last-Event-ID (what an SSE client resends) works as starting_after does.
    other_way = door.sdk_with(api_key=KEY, default_headers={"Last-Event-ID": first[-1][0]})
    again_tail = [c async for c in await reattach(other_way, sid)]
    await other_way.close()
    assert [c.model_dump() for c in again_tail] == [c.model_dump() for c in tail]
    # A second SDK client re-attaching from the start sees the very chunks a first one does.
    other = door.sdk_with(api_key=KEY)
    again = [c.model_dump() async for c in await reattach(other, sid)]
    whole = [c.model_dump() async for c in await reattach(door.sdk, sid)]
    await other.close()
    assert again == whole
    assert whole[-len(tail) :] == [c.model_dump() for c in tail]


async def test_a_forced_retry_after_partial_output_makes_the_sdk_raise_and_a_reattach_is_exact(
    door: Door,
) -> None:
    stream = await door.sdk.chat.completions.create(
        stream=True,
        **request(
            reply_tokens=60, tokens_per_s=100, fault="drop", after=6, fault_key="k1", fault_times=1
        ),
    )
    got: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIError) as raised:
        async for c in stream:
            got.append(c)
    assert got, "the reset came before any output"
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "stream_reset"
    sid = got[0].id
    assert raised.value.body["stream_id"] == sid
    again = await reattach(door.sdk, sid)
    text = "".join([(c.choices[0].delta.content or "") async for c in again if c.choices])
    result = await door.client.result(sid)
    assert result.text and text == result.text
    assert (await door.client.status(sid)).attempt == 2


async def test_a_reply_that_failed_for_good_is_a_502_the_sdk_does_not_retry(door: Door) -> None:
    with pytest.raises(openai.InternalServerError) as raised:
        await door.sdk.chat.completions.create(**request(fault="http_400"))
    response = raised.value.response
    assert response.status_code == 502 and response.headers["x-should-retry"] == "false"
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"]
    sid = response.headers["x-streamfan-stream-id"]
    assert (await door.client.status(sid)).status == "error"
    # A streaming reader of the same failure gets the error object the SDK raises.
    stream = await door.sdk.chat.completions.create(stream=True, **request(fault="http_400"))
    with pytest.raises(openai.APIError) as streamed:
        async for _ in stream:
            pass
    assert isinstance(streamed.value.body, dict) and streamed.value.body["code"] == err["code"]


async def test_cancel_through_the_door_ends_the_stream_and_retrieve_says_so(door: Door) -> None:
    stream = await door.sdk.chat.completions.create(
        stream=True, **request(reply_tokens=400, tokens_per_s=50)
    )
    first = await stream.__anext__()
    cancelled = await door.sdk.post(
        f"/chat/completions/{first.id}/cancel", cast_to=httpx.Response, body={}
    )
    assert cancelled.status_code == 200 and cancelled.json()["status"] in ("running", "cancelled")
    with pytest.raises(openai.APIError) as raised:
        async for _ in stream:
            pass
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "cancelled"
    with pytest.raises(openai.ConflictError):
        await door.sdk.chat.completions.retrieve(first.id)
