"""The official OpenAI SDK against the mock upstream: streams, tool calls, completions."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI

from streamfan.mock.server import MockUpstream

pytestmark = pytest.mark.timeout(30)


# --- the OpenAI SDK -------------------------------------------------------------------


async def test_the_openai_sdk_streams_content_and_usage(mock: MockUpstream) -> None:
    async with AsyncOpenAI(base_url=mock.base_url, api_key="sk-test", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"mock": {"reply_tokens": 30, "tokens_per_s": 1000, "fault_key": "sdk"}},
        )
        content, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                content += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
    record = await mock.wait_done("sdk")
    assert record.script is not None
    assert content == record.script.expected_message().content
    assert "🙂" in content
    assert usage is not None and usage.model_dump(exclude_none=True) == record.script.expected_usage
    assert record.authorization == "Bearer sk-test"
    assert record.body["stream_options"] == {"include_usage": True}


async def test_the_openai_sdk_assembles_tool_calls_of_several_choices(mock: MockUpstream) -> None:
    calls = [{"name": "get_weather", "arguments": '{"city": "São Paulo"}'}, {"name": "noop"}]
    async with AsyncOpenAI(base_url=mock.base_url, api_key="sk-test", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Weather?"}],
            stream=True,
            n=2,
            extra_body={"mock": {"tool_calls": calls, "reasoning": "Look it up."}},
        )
        got: dict[int, dict[int, dict[str, str]]] = {0: {}, 1: {}}
        finish = {}
        async for chunk in stream:
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or ():
                    slot = got[choice.index].setdefault(call.index, {"name": "", "arguments": ""})
                    assert call.function is not None
                    slot["name"] += call.function.name or ""
                    slot["arguments"] += call.function.arguments or ""
                if choice.finish_reason:
                    finish[choice.index] = choice.finish_reason
    script = (await mock.wait_done(0)).script
    assert script is not None
    for index in (0, 1):
        expected = [dict(c["function"]) for c in script.expected_message(index).tool_calls]
        assert [got[index][i] for i in sorted(got[index])] == expected
    assert finish == {0: "tool_calls", 1: "tool_calls"}


async def test_the_openai_sdk_reads_a_non_streaming_completion(mock: MockUpstream) -> None:
    async with AsyncOpenAI(base_url=mock.base_url, api_key="sk-test", max_retries=0) as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hi"}],
            extra_body={"mock": {"reply": "Bonjour, ça va ?"}},
        )
    assert completion.choices[0].message.content == "Bonjour, ça va ?"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
