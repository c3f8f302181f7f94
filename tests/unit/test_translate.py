"""worker.translate: upstream chunks to streamfan events, and how a reply ends."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamfan import events
from streamfan.assembler import Assembler
from streamfan.errors import UpstreamError, UpstreamStreamError, UpstreamTruncated
from worker.sse import ServerSentEvent, SSEDecoder
from worker.translate import MESSAGE_LIMIT, Translator

CHUNK_FIELDS = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "system_fingerprint": "fp",
}


def chunk(choices: list[Any] | None = None, **extra: Any) -> str:
    return orjson.dumps({**CHUNK_FIELDS, "choices": choices or [], **extra}).decode()


def choice(index: int = 0, finish_reason: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def test_a_chunk_with_choices_becomes_a_delta_with_the_choices_as_sent() -> None:
    choices = [choice(content="Hi", reasoning_content="hm", refusal=None, vendor_x=[1])]
    assert Translator().feed(chunk(choices)) == [events.delta(choices)]


def test_chunk_level_fields_are_left_out() -> None:
    [event] = Translator().feed(chunk([choice(content="x")]))
    assert set(event) == {"type", "choices"}


def test_a_usage_chunk_with_empty_choices_becomes_a_usage_event() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    translator = Translator()
    assert translator.feed(chunk([], usage=usage)) == [events.usage(usage)]
    assert translator.usage == usage


def test_a_chunk_with_choices_and_usage_gives_the_delta_then_the_usage() -> None:
    usage = {"total_tokens": 1}
    choices = [choice(content="x", finish_reason="stop")]
    assert Translator().feed(chunk(choices, usage=usage)) == [
        events.delta(choices),
        events.usage(usage),
    ]


def test_a_chunk_with_empty_choices_and_no_usage_adds_no_event() -> None:
    translator = Translator()
    assert translator.feed(chunk([], usage=None, prompt_filter_results=[{"x": 1}])) == []
    assert translator.feed('{"choices": null}') == []


def test_tool_calls_without_index_pass_through_as_sent() -> None:
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{"}}]
    choices = [choice(tool_calls=calls)]
    assert Translator().feed(chunk(choices)) == [events.delta(choices)]


def test_done_finishes_the_reply_with_the_finish_reason_and_the_last_usage() -> None:
    translator = Translator()
    translator.feed(chunk([choice(content="a")]))
    translator.feed(chunk([choice(finish_reason="length")]))
    translator.feed(chunk([], usage={"total_tokens": 9}))
    assert not translator.finished
    assert translator.feed("[DONE]") == []
    assert translator.finished
    assert translator.finish_reason == "length"
    assert translator.end_of_body() == events.done("length", {"total_tokens": 9})


def test_input_after_done_is_ignored() -> None:
    translator = Translator()
    translator.feed(ServerSentEvent("[DONE]"))
    assert translator.feed(chunk([choice(content="late")])) == []
    assert translator.feed("not json") == []


def test_a_body_that_ends_after_a_finish_reason_finished_normally() -> None:
    translator = Translator()
    translator.feed(chunk([choice(content="a")]))
    translator.feed(chunk([choice(finish_reason="stop")]))
    assert translator.end_of_body() == events.done("stop", None)


def test_a_body_that_ends_without_done_or_finish_reason_is_truncated() -> None:
    translator = Translator()
    translator.feed(chunk([choice(content="a")]))
    with pytest.raises(UpstreamTruncated) as info:
        translator.end_of_body()
    assert info.value.retryable
    assert info.value.code == "upstream_truncated"


def test_an_empty_body_is_truncated() -> None:
    with pytest.raises(UpstreamTruncated):
        Translator().end_of_body()


def test_with_two_choices_the_body_may_end_only_once_both_finished() -> None:
    translator = Translator()
    translator.feed(chunk([choice(0, content="a"), choice(1, content="b")]))
    translator.feed(chunk([choice(1, finish_reason="stop")]))
    with pytest.raises(UpstreamTruncated):
        translator.end_of_body()
    translator.feed(chunk([choice(0, finish_reason="length")]))
    assert translator.end_of_body() == events.done("length", None)


def test_an_error_object_after_some_deltas_raises_with_the_upstreams_message_only() -> None:
    translator = Translator()
    assert translator.feed(chunk([choice(content="partial")]))
    error = {
        "message": "The server had an error",
        "type": "server_error",
        "param": "secret-param",
        "request_id": "req_123",
    }
    with pytest.raises(UpstreamStreamError) as info:
        translator.feed(orjson.dumps({"error": error}).decode())
    exc = info.value
    assert exc.code == "upstream_stream_error"
    assert exc.message == "[server_error] The server had an error"
    assert not exc.retryable
    assert "secret-param" not in str(exc) and "req_123" not in str(exc)


def test_an_error_with_a_numeric_code_carries_it_as_the_upstream_status() -> None:
    with pytest.raises(UpstreamStreamError) as info:
        Translator().feed('{"error": {"code": 502, "message": "Provider returned error"}}')
    assert (info.value.upstream_status, info.value.message) == (502, "Provider returned error")


def test_an_error_next_to_choices_wins() -> None:
    with pytest.raises(UpstreamStreamError):
        Translator().feed(chunk([choice(finish_reason="error")], error={"message": "boom"}))


def test_a_null_error_field_is_no_error() -> None:
    assert Translator().feed(chunk([choice(content="x")], error=None))


def test_an_sse_event_named_error_is_an_error_object() -> None:
    with pytest.raises(UpstreamStreamError) as info:
        Translator().feed(ServerSentEvent('{"error": {"message": "overloaded"}}', "error"))
    assert info.value.message == "overloaded"
    with pytest.raises(UpstreamStreamError) as info:
        Translator().feed(ServerSentEvent('{"message": "bad", "code": "x1"}', "error"))
    assert info.value.message == "[x1] bad"
    with pytest.raises(UpstreamStreamError) as info:
        Translator().feed(ServerSentEvent("plain words", "error"))
    assert info.value.message == "plain words"


def test_secrets_in_an_upstream_error_message_are_redacted() -> None:
    translator = Translator(secrets=["sk-live-123", ""])
    with pytest.raises(UpstreamStreamError) as info:
        translator.feed('{"error": {"message": "bad key sk-live-123", "code": "sk-live-123"}}')
    assert "sk-live-123" not in info.value.message
    assert info.value.message == "[[redacted]] bad key [redacted]"


def test_a_long_upstream_error_message_is_cut() -> None:
    with pytest.raises(UpstreamStreamError) as info:
        Translator().feed(orjson.dumps({"error": {"message": "x" * 10_000}}).decode())
    assert len(info.value.message) == MESSAGE_LIMIT


@pytest.mark.parametrize("data", ["{not json", "[1, 2]", '"text"', "42", "data: {}"])
def test_a_data_line_that_is_not_a_json_object_is_a_retryable_bad_data_error(data: str) -> None:
    with pytest.raises(UpstreamError) as info:
        Translator().feed(data)
    assert (info.value.code, info.value.retryable) == ("upstream_bad_data", True)
    assert not isinstance(info.value, UpstreamStreamError)


def test_choices_that_are_not_a_list_are_bad_data() -> None:
    with pytest.raises(UpstreamError) as info:
        Translator().feed('{"choices": {"index": 0}}')
    assert info.value.code == "upstream_bad_data"


def test_an_empty_data_payload_is_a_keep_alive() -> None:
    assert Translator().feed(ServerSentEvent("")) == []
    assert Translator().feed(" ") == []


def test_events_with_other_names_are_ignored() -> None:
    assert Translator().feed(ServerSentEvent('{"choices": [{"index": 0}]}', "ping")) == []


def test_a_done_sentinel_with_surrounding_space_finishes() -> None:
    translator = Translator()
    translator.feed(" [DONE] ")
    assert translator.finished


def test_a_decoded_body_with_provider_quirks_assembles_into_the_reply() -> None:
    body = "".join(
        f"data: {c}\n\n"
        for c in [
            chunk([choice(role="assistant", content="", reasoning_content="Think")]),
            chunk([choice(reasoning_content="ing…")]),
            chunk([choice(content="Hé\u2028llo")]),
            chunk(
                [choice(tool_calls=[{"id": "c1", "function": {"name": "f", "arguments": '{"a"'}}])]
            ),
            chunk([choice(tool_calls=[{"id": "c1", "function": {"arguments": ": 1}"}}])]),
            chunk([choice(finish_reason="tool_calls")]),
            chunk([], usage={"total_tokens": 4}),
            "[DONE]",
        ]
    ).encode()
    decoder, translator, assembler = SSEDecoder(), Translator(), Assembler()
    for i in range(0, len(body), 7):
        for sse in decoder.decode(body[i : i + 7]):
            for event in translator.feed(sse):
                assembler.feed(event)
    assembler.feed(translator.end_of_body())
    assert assembler.message() == {
        "role": "assistant",
        "content": "Hé\u2028llo",
        "reasoning_content": "Thinking…",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
        ],
    }
    assert (assembler.finish_reason, assembler.usage, assembler.status) == (
        "tool_calls",
        {"total_tokens": 4},
        "done",
    )
