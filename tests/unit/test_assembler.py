"""streamfan.assembler: a stream's events back into the reply."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streamfan import events
from streamfan.assembler import Assembler
from streamfan.events import Event

#: Deterministic (the same examples every run), and no example database on disk.
FIXED = settings(deadline=None, derandomize=True, database=None)


def assemble(*evs: Event) -> Assembler:
    assembler = Assembler()
    for event in evs:
        assembler.feed(event)
    return assembler


def delta(index: int = 0, finish_reason: str | None = None, **fields: Any) -> Event:
    return events.delta([{"index": index, "delta": fields, "finish_reason": finish_reason}])


def call(**fields: Any) -> Event:
    return delta(tool_calls=[fields])


def test_content_is_concatenated_and_the_role_kept() -> None:
    a = assemble(delta(role="assistant", content=""), delta(content="Hel"), delta(content="lo"))
    assert a.message() == {"role": "assistant", "content": "Hello"}
    assert a.text == "Hello"


def test_content_never_sent_is_none() -> None:
    a = assemble(delta(role="assistant"), delta(content=None, refusal="No."))
    assert a.message() == {"role": "assistant", "content": None, "refusal": "No."}
    assert a.text == ""


def test_with_no_events_the_message_is_empty() -> None:
    a = Assembler()
    assert a.message() == {"role": "assistant", "content": None}
    assert (a.text, a.finish_reason, a.usage, a.status, a.error) == ("", None, None, None, None)


def test_reasoning_fields_are_concatenated_when_they_are_strings() -> None:
    a = assemble(
        delta(reasoning_content="a", reasoning="x"),
        delta(reasoning_content="b", reasoning={"summary": "not text"}),
    )
    assert a.message() == {
        "role": "assistant",
        "content": None,
        "reasoning_content": "ab",
        "reasoning": "x",
    }


def test_tool_calls_are_merged_by_index() -> None:
    a = assemble(
        call(index=0, id="c0", type="function", function={"name": "f", "arguments": ""}),
        call(index=1, id="c1", type="function", function={"name": "g", "arguments": "{"}),
        call(index=0, function={"arguments": '{"x":'}),
        call(index=1, function={"arguments": "}"}),
        call(index=0, function={"arguments": " 1}"}),
    )
    assert a.message()["tool_calls"] == [
        {"id": "c0", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "c1", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]


def test_tool_calls_without_index_are_found_by_id() -> None:
    a = assemble(
        call(id="a", function={"name": "f", "arguments": "1"}),
        call(id="b", function={"name": "g", "arguments": "2"}),
        call(id="a", function={"arguments": "3"}),
    )
    assert [(c["id"], c["function"]["arguments"]) for c in a.message()["tool_calls"]] == [
        ("a", "13"),
        ("b", "2"),
    ]


def test_tool_call_pieces_with_neither_index_nor_id_continue_the_last_call() -> None:
    a = assemble(
        call(id="a", function={"name": "f", "arguments": "{"}),
        call(function={"arguments": "}"}),
    )
    assert a.message()["tool_calls"] == [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]


def test_a_piece_with_neither_index_nor_id_and_no_call_yet_starts_one() -> None:
    a = assemble(call(function={"name": "f", "arguments": "{}"}))
    assert a.message()["tool_calls"] == [
        {"id": None, "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]


def test_a_reused_index_with_a_new_id_starts_a_new_call() -> None:
    a = assemble(
        call(index=0, id="a", function={"name": "f", "arguments": "{}"}),
        call(index=0, id="b", function={"name": "g", "arguments": "{"}),
        call(index=0, function={"arguments": "}"}),
    )
    assert [(c["id"], c["function"]["arguments"]) for c in a.message()["tool_calls"]] == [
        ("a", "{}"),
        ("b", "{}"),
    ]


def test_tool_call_arguments_sent_as_an_object_become_a_json_string() -> None:
    a = assemble(call(index=0, id="a", function={"name": "f", "arguments": {"x": 1}}))
    assert a.message()["tool_calls"][0]["function"]["arguments"] == '{"x":1}'


def test_the_legacy_function_call_is_merged() -> None:
    a = assemble(
        delta(function_call={"name": "f", "arguments": "{"}),
        delta(function_call={"arguments": "}"}),
    )
    assert a.message()["function_call"] == {"name": "f", "arguments": "{}"}


def test_logprobs_content_lists_are_concatenated() -> None:
    a = assemble(
        events.delta([{"index": 0, "delta": {"content": "a"}, "logprobs": {"content": [1]}}]),
        events.delta([{"index": 0, "delta": {"content": "b"}, "logprobs": None}]),
        events.delta([{"index": 0, "delta": {}, "logprobs": {"content": [2], "refusal": None}}]),
    )
    assert a.logprobs() == {"content": [1, 2], "refusal": None}
    assert a.logprobs(1) is None


def test_a_reset_discards_everything_built_so_far() -> None:
    a = assemble(
        events.start("s", "m", 1, 1),
        delta(content="old", role="assistant"),
        events.usage({"total_tokens": 1}),
        events.reset(2),
        events.start("s", "m", 1, 2),
        delta(content="new"),
    )
    assert a.message() == {"role": "assistant", "content": "new"}
    assert (a.usage, a.attempt) == (None, 2)


def test_usage_comes_from_usage_events_and_done() -> None:
    assert assemble(events.usage({"a": 1})).usage == {"a": 1}
    assert assemble(events.usage({"a": 1}), events.done("stop", {"a": 2})).usage == {"a": 2}
    assert assemble(events.usage({"a": 1}), events.done("stop", None)).usage == {"a": 1}


def test_the_terminal_event_sets_the_status() -> None:
    done = assemble(delta(content="x", finish_reason="stop"), events.done("stop", None))
    assert (done.status, done.finished, done.finish_reason, done.error) == (
        "done",
        True,
        "stop",
        None,
    )
    err = assemble(events.error("upstream_http_error", "boom", retryable=True, upstream_status=503))
    assert err.status == "error"
    assert err.error == {
        "code": "upstream_http_error",
        "message": "boom",
        "retryable": True,
        "upstream_status": 503,
    }
    assert assemble(events.cancelled("bye")).status == "cancelled"
    assert not assemble(delta(content="x")).finished


def test_the_chat_completion_has_openais_shape() -> None:
    a = assemble(
        delta(0, role="assistant", content="a"),
        delta(1, role="assistant", content="b"),
        delta(1, finish_reason="length"),
        delta(0, finish_reason="stop"),
        events.done("stop", {"total_tokens": 2}),
    )
    assert a.chat_completion("s1", "gpt-x", 123) == {
        "id": "s1",
        "object": "chat.completion",
        "created": 123,
        "model": "gpt-x",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "a"},
                "finish_reason": "stop",
                "logprobs": None,
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": "b"},
                "finish_reason": "length",
                "logprobs": None,
            },
        ],
        "usage": {"total_tokens": 2},
    }


def test_a_chat_completion_with_no_deltas_still_has_choice_zero() -> None:
    cc = assemble(events.error("x", "y", retryable=False)).chat_completion("s", "m", 0)
    assert cc["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None},
            "finish_reason": None,
            "logprobs": None,
        }
    ]


def test_malformed_choices_are_skipped_and_a_bad_index_falls_back_to_the_position() -> None:
    a = assemble(events.delta([{"index": "x", "delta": {"content": "a"}}, "junk", {"delta": None}]))
    assert a.text == "a"
    assert a.indexes == [0, 2]


# --- property: assembling a scripted reply gives that reply back ---------------

_text = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=15) | st.sampled_from(
    ["日本語", "🙂👍🏽", "a\u2028b", "é"]
)


@dataclass
class Call:
    id: str
    name: str
    args: str


@dataclass
class Reply:
    content: str | None
    reasoning: str | None
    refusal: str | None
    calls: list[Call]
    finish_reason: str
    logprobs: bool
    index: int = 0
    pieces: list[dict[str, Any]] = field(default_factory=list)

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.refusal is not None:
            msg["refusal"] = self.refusal
        if self.reasoning is not None:
            msg["reasoning_content"] = self.reasoning
        if self.calls:
            msg["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.args}}
                for c in self.calls
            ]
        return msg


def _split(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=4))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@st.composite
def replies(draw: st.DrawFn, index: int) -> Reply:
    calls = [
        Call(f"call_{index}_{i}", draw(st.sampled_from(["f", "get_weather"])), draw(_text))
        for i in range(draw(st.integers(0, 2)))
    ]
    reply = Reply(
        content=draw(st.none() | _text),
        reasoning=draw(st.none() | _text),
        refusal=draw(st.none() | _text),
        calls=calls,
        finish_reason=draw(st.sampled_from(["stop", "length", "tool_calls"])),
        logprobs=draw(st.booleans()),
        index=index,
    )
    # The choice's deltas, in the order an upstream sends them.
    style = draw(st.sampled_from(["indexed", "ids", "bare"]))
    reply.pieces.append({"role": "assistant"})
    for name, value in (("reasoning_content", reply.reasoning), ("content", reply.content)):
        if value is not None:
            reply.pieces += [{name: part} for part in _split(draw, value)]
    if reply.refusal is not None:
        reply.pieces += [{"refusal": part} for part in _split(draw, reply.refusal)]
    for i, c in enumerate(calls):
        for j, part in enumerate(_split(draw, c.args)):
            piece: dict[str, Any] = {"function": {"arguments": part}}
            if j == 0:
                piece.update(id=c.id, type="function")
                piece["function"]["name"] = c.name
            if style == "indexed":
                piece["index"] = i
            elif style == "ids":
                piece["id"] = c.id
            reply.pieces.append({"tool_calls": [piece]})
    return reply


def _choice(reply: Reply, piece: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"index": reply.index, "delta": piece, "finish_reason": None}
    text = piece.get("content")
    if reply.logprobs and text is not None:
        out["logprobs"] = {"content": [{"token": text}]}
    return out


def script(draw: st.DrawFn, replies: list[Reply], usage: dict[str, int] | None) -> list[Event]:
    """The delta/usage events of one attempt, the choices' deltas interleaved."""
    queues = [[_choice(r, p) for p in r.pieces] for r in replies]
    for r, q in zip(replies, queues, strict=True):
        q.append({"index": r.index, "delta": {}, "finish_reason": r.finish_reason})
    out: list[Event] = []
    while any(queues):
        live = [q for q in queues if q]
        if len(live) > 1 and draw(st.booleans()):
            out.append(events.delta([q.pop(0) for q in live]))  # one chunk, both choices
        else:
            out.append(events.delta([draw(st.sampled_from(live)).pop(0)]))
    if usage is not None:
        out.append(events.usage(usage))
    return out


def _expected_logprobs(reply: Reply) -> dict[str, Any] | None:
    if not reply.logprobs or reply.content is None:
        return None
    tokens = [p["content"] for p in reply.pieces if "content" in p]
    return {"content": [{"token": t} for t in tokens], "refusal": None}


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Event], list[Reply], dict[str, int] | None]:
    choices = [draw(replies(i)) for i in range(draw(st.integers(1, 2)))]
    usage = draw(st.none() | st.fixed_dictionaries({"total_tokens": st.integers(0, 99)}))
    evs = [events.start("s", "m", 1, 1), *script(draw, choices, usage)]
    evs.append(events.done(choices[0].finish_reason, usage))
    return evs, choices, usage


@settings(FIXED, max_examples=30)
@given(streams())
def test_assembling_the_events_of_a_scripted_reply_gives_back_that_reply(
    stream: tuple[list[Event], list[Reply], dict[str, int] | None],
) -> None:
    evs, choices, usage = stream
    a = assemble(*evs)
    cc = a.chat_completion("s", "m", 1)
    assert cc["choices"] == [
        {
            "index": r.index,
            "message": r.message(),
            "finish_reason": r.finish_reason,
            "logprobs": _expected_logprobs(r),
        }
        for r in choices
    ]
    assert (a.usage, a.finish_reason, a.text) == (
        usage,
        choices[0].finish_reason,
        choices[0].content or "",
    )


@settings(FIXED, max_examples=20)
@given(first=streams(), second=streams(), data=st.data())
def test_a_reset_discards_the_earlier_attempts(
    first: tuple[list[Event], list[Reply], dict[str, int] | None],
    second: tuple[list[Event], list[Reply], dict[str, int] | None],
    data: st.DataObject,
) -> None:
    # The first attempt failed somewhere before its terminal event.
    cut = data.draw(st.integers(1, len(first[0]) - 1))
    evs = [*first[0][:cut], events.reset(2), *second[0]]
    a = assemble(*evs)
    assert [a.message(r.index) for r in second[1]] == [r.message() for r in second[1]]
    assert a.indexes == [r.index for r in second[1]]
    assert a.usage == second[2]
