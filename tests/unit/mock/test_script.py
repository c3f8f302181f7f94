"""The mock upstream's script: request body -> the exact chunks, bytes, timing and faults."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfan.mock.options import Defaults
from streamfan.mock.plan import Ending
from streamfan.mock.script import BOM, MALFORMED_DATA, Script
from streamfan.mock.text import tokenize

MESSAGES = [{"role": "user", "content": "Say something, please."}]


def script(mock: dict[str, Any] | None = None, **body: Any) -> Script:
    request: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    request.update(body)
    if mock is not None:
        request["mock"] = mock
    return Script.from_request(request)


def sse_data(body: bytes) -> list[bytes]:
    """The ``data`` of every event of an SSE body (comments skipped; CRLF or LF)."""
    text = body.removeprefix(BOM).replace(b"\r\n", b"\n")
    out = []
    for block in text.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                out.append(line[6:])
    return out


def assemble(chunks: list[dict[str, Any]], n: int = 1) -> list[dict[str, Any]]:
    """What a client builds from chunks: per choice content, reasoning, refusal, tool calls."""
    out: list[dict[str, Any]] = [
        {"content": None, "reasoning_content": None, "refusal": None, "tool_calls": {}}
        for _ in range(n)
    ]
    finish: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            msg, delta = out[choice["index"]], choice["delta"]
            for key in ("content", "reasoning_content", "refusal"):
                if delta.get(key) is not None:
                    msg[key] = (msg[key] or "") + delta[key]
            for call in delta.get("tool_calls") or ():
                slot = msg["tool_calls"].setdefault(
                    call["index"], {"id": None, "type": "function", "function": {"name": ""}}
                )
                if "id" in call:
                    slot["id"] = call["id"]
                function = slot["function"]
                function["name"] += call["function"].get("name", "")
                function["arguments"] = function.get("arguments", "") + call["function"].get(
                    "arguments", ""
                )
            if choice["finish_reason"]:
                finish[choice["index"]] = choice["finish_reason"]
    for index, msg in enumerate(out):
        msg["tool_calls"] = tuple(msg["tool_calls"][i] for i in sorted(msg["tool_calls"]))
        msg["finish_reason"] = finish.get(index)
    return out


def expected(s: Script, index: int) -> dict[str, Any]:
    e = s.expected_message(index)
    return {
        "content": e.content,
        "reasoning_content": e.reasoning_content,
        "refusal": e.refusal,
        "tool_calls": e.tool_calls,
        "finish_reason": e.finish_reason,
    }


# --- chunks ---------------------------------------------------------------------------


def test_the_same_request_gives_the_same_bytes() -> None:
    mock = {"reply_tokens": 30, "tool_calls": [{"name": "f", "arguments": "{}"}]}
    assert script(mock).sse_body() == script(mock).sse_body()


def test_chunks_are_shaped_like_openai_chat_completion_chunks() -> None:
    s = script({"reply": "Hi there"}, stream_options={"include_usage": True})
    chunks = s.chunks()
    for chunk in chunks:
        assert list(chunk)[:6] == [
            "id",
            "object",
            "created",
            "model",
            "system_fingerprint",
            "choices",
        ]
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "gpt-4o-mini"
    first, *middle, finish, usage = chunks
    assert first["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert [c["choices"][0]["delta"] for c in middle] == [{"content": "Hi"}, {"content": " there"}]
    assert all(c["usage"] is None for c in [first, *middle, finish])
    assert finish["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert usage["choices"] == []
    assert usage["usage"] == s.expected_usage
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 2


def test_without_include_usage_no_chunk_mentions_usage() -> None:
    s = script({"reply": "Hi"})
    assert all("usage" not in c for c in s.chunks())
    assert s.expected_usage is None


def test_the_sse_body_is_every_chunk_then_done() -> None:
    s = script({"reply_tokens": 12}, stream_options={"include_usage": True})
    data = sse_data(s.sse_body())
    assert data[-1] == b"[DONE]"
    assert [orjson.loads(d) for d in data[:-1]] == s.chunks()


def test_crlf_ends_every_line_with_crlf() -> None:
    body = script({"reply": "Hi", "crlf": True}).sse_body()
    assert body.count(b"\r\n\r\n") == body.count(b"data: ")
    assert b"\n" not in body.replace(b"\r\n", b"")


def test_tool_call_arguments_are_split_over_chunks_and_reassemble() -> None:
    args = '{"city": "Zürich", "days": [1, 2, 3]}'
    s = script({"tool_calls": [{"name": "weather", "arguments": args}, {"name": "noop"}]})
    pieces = [
        call["function"]["arguments"]
        for c in s.chunks()
        for choice in c["choices"]
        for call in choice["delta"].get("tool_calls") or ()
        if call["index"] == 0
    ]
    assert len(pieces) > 5
    assert "".join(pieces) == args
    [message] = assemble(s.chunks())
    assert message["content"] is None
    assert message["finish_reason"] == "tool_calls"
    assert [c["function"] for c in message["tool_calls"]] == [
        {"name": "weather", "arguments": args},
        {"name": "noop", "arguments": "{}"},
    ]
    assert message == expected(s, 0)


def test_tool_call_arguments_given_as_an_object_are_sent_as_json() -> None:
    s = script({"tool_calls": [{"name": "f", "arguments": {"a": "é"}}]})
    assert s.expected_message().tool_calls[0]["function"]["arguments"] == '{"a":"é"}'


def test_omit_tool_call_index_leaves_index_out_of_tool_call_deltas() -> None:
    s = script({"tool_calls": [{"name": "f", "arguments": "{}"}], "omit_tool_call_index": True})
    calls = [
        call
        for c in s.chunks()
        for ch in c["choices"]
        for call in ch["delta"].get("tool_calls", [])
    ]
    assert calls and all("index" not in call for call in calls)


def test_n_choices_interleave_each_with_its_own_content() -> None:
    s = script({"reply_tokens": 10}, n=3)
    order = [c["choices"][0]["index"] for c in s.chunks()]
    assert order[:6] == [0, 1, 2, 0, 1, 2]
    messages = assemble(s.chunks(), n=3)
    assert len({m["content"] for m in messages}) == 3
    assert messages == [expected(s, i) for i in range(3)]


def test_reasoning_comes_before_content_and_refusal_stands_alone() -> None:
    s = script({"reasoning": "Think first.", "reply": "Then answer."})
    keys = [next(iter(c["choices"][0]["delta"]), None) for c in s.chunks()]
    assert keys.index("reasoning_content") < keys.index("content")
    refused = script({"refusal": "I can't help with that."})
    [message] = assemble(refused.chunks())
    assert message["refusal"] == "I can't help with that."
    assert message["content"] is None
    assert refused.usage is not None
    assert script({"reasoning": "a b"}).usage["completion_tokens_details"] == {  # type: ignore[index]
        "reasoning_tokens": 2
    }


@given(
    reply=st.lists(st.text(max_size=40), min_size=1, max_size=3),
    chunk_tokens=st.integers(1, 5),
    reasoning=st.none() | st.text(min_size=1, max_size=20),
    arguments=st.none() | st.text(max_size=30),
    usage_in_last=st.booleans(),
)
def test_assembled_chunks_give_the_expected_message(
    reply: list[str],
    chunk_tokens: int,
    reasoning: str | None,
    arguments: str | None,
    usage_in_last: bool,
) -> None:
    mock: dict[str, Any] = {
        "reply": reply,
        "chunk_tokens": chunk_tokens,
        "reasoning": reasoning,
        "usage_in_last_choice_chunk": usage_in_last,
    }
    if arguments is not None:
        mock["tool_calls"] = [{"name": "f", "arguments": arguments}]
    s = script(mock, n=len(reply), stream_options={"include_usage": True})
    assert assemble(s.chunks(), n=len(reply)) == [expected(s, i) for i in range(len(reply))]
    # The bytes sent are exactly the chunk objects, compact as orjson writes them.
    assert sse_data(s.sse_body())[:-1] == [orjson.dumps(c) for c in s.chunks()]
    usages = [c["usage"] for c in s.chunks() if c.get("usage")]
    assert usages == [s.expected_usage]


def test_chunk_tokens_groups_tokens_per_chunk() -> None:
    s = script({"reply_tokens": 10, "chunk_tokens": 4})
    contents = [c["choices"][0]["delta"].get("content") for c in s.chunks()]
    assert [len(tokenize(c)) for c in contents[1:-1] if c] == [4, 4, 2]


def test_usage_can_be_overridden_or_left_out() -> None:
    s = script(
        {"reply": "a b", "usage": {"prompt_tokens": 100}}, stream_options={"include_usage": True}
    )
    assert s.expected_usage is not None
    assert (s.expected_usage["prompt_tokens"], s.expected_usage["total_tokens"]) == (100, 102)
    none = script({"usage": False}, stream_options={"include_usage": True})
    assert none.expected_usage is None
    assert all(c.get("usage") is None for c in none.chunks())


def test_usage_in_last_choice_chunk_rides_on_the_finish_chunk() -> None:
    s = script({"reply": "a", "usage_in_last_choice_chunk": True})
    last = s.chunks()[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["usage"] == s.expected_usage is not None


def test_prompt_filter_chunk_comes_first_with_empty_choices() -> None:
    first = script({"prompt_filter_chunk": True}).chunks()[0]
    assert first["choices"] == [] and "usage" not in first
    assert "prompt_filter_results" in first


def test_the_default_reply_comes_from_the_server_defaults() -> None:
    body = {"messages": MESSAGES, "stream": True}
    s = Script.from_request(body, Defaults(reply="Fixed.", model="served"))
    assert s.expected_message().content == "Fixed."
    assert s.model == "served"
    tokens = Script.from_request(body, Defaults(reply_tokens=7))
    assert tokens.usage is not None and tokens.usage["completion_tokens"] == 7


def test_the_non_streaming_completion_holds_the_expected_messages() -> None:
    s = script({"reply": "Hi", "tool_calls": [{"name": "f"}]}, stream=False, n=2)
    completion = s.completion()
    assert completion["object"] == "chat.completion"
    assert [c["message"] for c in completion["choices"]] == [
        s.expected_message(i).as_message() for i in range(2)
    ]
    assert completion["usage"] == s.usage


# --- timing ---------------------------------------------------------------------------


def test_chunks_are_due_at_ttft_plus_tokens_over_rate() -> None:
    s = script({"reply_tokens": 5, "ttft_ms": 200, "tokens_per_s": 10})
    times = [at for at, _ in s.timed_chunks()]
    # role chunk and first token at the ttft, then one token every 0.1 s, finish with the last.
    assert times == pytest.approx([0.2, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6])
    assert s.duration_s == pytest.approx(0.6)


def test_writes_due_together_are_one_send() -> None:
    [fast] = script({"reply_tokens": 50}).plan(fault_active=False)
    assert fast.chunks == 52
    paced = script({"reply_tokens": 3, "tokens_per_s": 10}).plan(fault_active=False)
    assert [send.chunks for send in paced] == [2, 1, 2]  # [DONE] rides with the finish


# --- faults ---------------------------------------------------------------------------


def plan_data(s: Script) -> tuple[list[bytes], Ending]:
    plan = s.plan(fault_active=True)
    return sse_data(b"".join(send.data for send in plan)), plan.ending


@pytest.mark.parametrize(
    ("fault", "ending"),
    [("drop", Ending.DROP), ("reset", Ending.RESET), ("stall", Ending.STALL)],
)
def test_connection_faults_send_after_chunks_then_end_their_way(fault: str, ending: Ending) -> None:
    s = script({"reply_tokens": 10, "fault": fault, "after": 3})
    data, got = plan_data(s)
    assert got is ending
    assert [orjson.loads(d) for d in data] == s.chunks()[:3]


def test_a_fault_defaults_to_two_chunks_in() -> None:
    data, _ = plan_data(script({"reply_tokens": 10, "fault": "drop"}))
    assert len(data) == 2


def test_malformed_inserts_a_non_json_line_and_carries_on() -> None:
    s = script({"reply_tokens": 4, "fault": "malformed", "after": 2})
    data, ending = plan_data(s)
    assert ending is Ending.END
    assert data[2] == MALFORMED_DATA
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(data[2])
    assert [orjson.loads(d) for d in data[:2] + data[3:-1]] == s.chunks()
    assert data[-1] == b"[DONE]"


def test_error_chunk_ends_the_body_with_an_error_object() -> None:
    s = script({"reply_tokens": 4, "fault": "error_chunk", "after": 1, "error": {"code": "x"}})
    data, ending = plan_data(s)
    assert ending is Ending.END
    assert len(data) == 2
    error = orjson.loads(data[-1])["error"]
    assert error["code"] == "x" and error["message"] and error["type"] == "server_error"


def test_truncate_ends_cleanly_before_any_finish_reason_and_done() -> None:
    s = script({"reply_tokens": 3, "fault": "truncate", "after": 100})
    data, ending = plan_data(s)
    assert ending is Ending.END
    chunks = [orjson.loads(d) for d in data]
    assert chunks == s.chunks()[:4]  # role chunk and three tokens
    assert not any(c["choices"][0]["finish_reason"] for c in chunks)


def test_bom_starts_the_body() -> None:
    plan = script({"reply": "x", "fault": "bom"}).plan(fault_active=True)
    assert next(iter(plan)).data.startswith(BOM + b"data: ")
    assert not script({"reply": "x", "fault": "bom"}).sse_body().startswith(BOM)
    assert script({"reply": "x", "bom": True}).sse_body().startswith(BOM)


def test_an_inactive_fault_changes_nothing() -> None:
    s = script({"reply_tokens": 5, "fault": "drop", "after": 1})
    plan = s.plan(fault_active=False)
    assert plan.ending is Ending.END
    assert b"".join(send.data for send in plan) == s.sse_body()
