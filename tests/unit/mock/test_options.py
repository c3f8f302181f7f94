"""The mock upstream's options: the ``mock`` field and the OpenAI fields it reads, validated."""

from __future__ import annotations

from typing import Any

import pytest

from streamfan.mock.options import Defaults, MockOptionError, Options, parse_options

MESSAGES = [{"role": "user", "content": "Say something, please."}]


def options(mock: Any = None, **body: Any) -> Options:
    request: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    request.update(body)
    if mock is not None:
        request["mock"] = mock
    return parse_options(request, Defaults())


def test_fault_times_limits_the_fault_to_the_first_attempts() -> None:
    o = options({"fault": "http_500", "fault_times": 2, "fault_key": "job-1"})
    assert o.fault is not None
    assert (o.fault.kind, o.fault.status, o.fault.name) == ("http", 500, "http_500")
    assert [o.fault.applies(attempt) for attempt in (1, 2, 3)] == [True, True, False]
    assert options({"fault": "drop"}).fault.applies(99)  # type: ignore[union-attr]


def test_http_429_carries_a_retry_after_of_one_second_unless_told() -> None:
    assert options({"fault": "http_429"}).fault.retry_after == "1"  # type: ignore[union-attr]
    assert options({"fault": "http_429", "retry_after": 2.5}).fault.retry_after == "2.5"  # type: ignore[union-attr]
    assert options({"fault": "http_500"}).fault.retry_after is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("mock", "option"),
    [
        ("nope", "mock"),
        ({"reply_tokenz": 3}, "mock"),
        ({"reply_tokens": -1}, "mock.reply_tokens"),
        ({"reply_tokens": True}, "mock.reply_tokens"),
        ({"tokens_per_s": "fast"}, "mock.tokens_per_s"),
        ({"chunk_tokens": 0}, "mock.chunk_tokens"),
        ({"fault": "explode"}, "mock.fault"),
        ({"fault": "http_200"}, "mock.fault"),
        ({"fault_times": 2, "fault": "drop"}, "mock.fault_times"),
        ({"after": 2}, "mock.after"),
        ({"tool_calls": [{"arguments": "{}"}]}, "mock.tool_calls[0]"),
        ({"reply": ["a", "b"]}, "mock.reply"),
        ({"usage": {"prompt_tokens": "many"}}, "mock.usage.prompt_tokens"),
        ({"crlf": "yes"}, "mock.crlf"),
    ],
)
def test_a_bad_option_is_an_error_naming_it(mock: Any, option: str) -> None:
    with pytest.raises(MockOptionError) as info:
        options(mock)
    assert info.value.option == option
    assert str(info.value).startswith(option + ": ")


def test_openai_fields_are_checked_too() -> None:
    with pytest.raises(MockOptionError, match=r"^n: "):
        options(n=0)
    with pytest.raises(MockOptionError, match=r"^stream: "):
        options(stream="yes")
