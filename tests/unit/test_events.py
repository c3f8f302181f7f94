"""streamfan.events: constructors, encode/decode, and what decode refuses."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfan import events
from streamfan.errors import InvalidEvent
from streamfan.events import Event, decode_event, encode_event

#: Deterministic (the same examples every run), and no example database on disk.
FIXED = settings(deadline=None, derandomize=True, database=None)

_text = st.text(max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_usage = st.dictionaries(_text, _json, max_size=4)
_choice = st.fixed_dictionaries(
    {"index": st.integers(0, 3), "delta": st.dictionaries(_text, _json, max_size=4)},
    optional={"finish_reason": st.none() | _text, "logprobs": _json},
)

any_event = st.one_of(
    st.builds(events.start, _text, _text, st.integers(0, 2**40), st.integers(1, 100)),
    st.builds(events.delta, st.lists(_choice, max_size=3)),
    st.builds(events.usage, _usage),
    st.builds(events.done, st.none() | _text, st.none() | _usage),
    st.builds(
        events.error,
        _text,
        _text,
        retryable=st.booleans(),
        upstream_status=st.none() | st.integers(100, 599),
    ),
    st.builds(events.cancelled, _text),
    st.builds(events.reset, st.integers(1, 100)),
)


@settings(FIXED, max_examples=50)
@given(any_event)
def test_decoding_an_encoded_event_gives_it_back(event: Event) -> None:
    data = encode_event(event)
    assert b"\n" not in data and b"\r" not in data
    assert decode_event(data) == event
    assert decode_event(data.decode()) == event


def test_every_event_type_has_a_constructor_and_a_terminal_status() -> None:
    built = {
        events.start("s", "m", 1, 1)["type"],
        events.delta([])["type"],
        events.usage({})["type"],
        events.done(None, None)["type"],
        events.error("c", "m", retryable=False)["type"],
        events.cancelled("r")["type"],
        events.reset(2)["type"],
    }
    assert built == events.EVENT_TYPES
    assert set(events.TERMINAL_STATUS) == events.TERMINAL_TYPES


def test_an_error_without_an_upstream_status_leaves_the_field_out() -> None:
    assert "upstream_status" not in events.error("c", "m", retryable=True)
    assert events.error("c", "m", retryable=True, upstream_status=502)["upstream_status"] == 502


def test_only_done_error_and_cancelled_are_terminal() -> None:
    assert [events.is_terminal(e) for e in (events.done(None, None), events.reset(1))] == [
        True,
        False,
    ]


def test_unknown_fields_pass_through_decode() -> None:
    assert decode_event(b'{"type": "usage", "usage": {}, "x-vendor": 1}')["x-vendor"] == 1


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (b'"delta"', "must be a JSON object"),
        (b"{}", "unknown event type None"),
        (b'{"type": "nope"}', "unknown event type 'nope'"),
        (b'{"type": "start", "stream_id": "s"}', "start event lacks model, created, attempt"),
        (b'{"type": "delta", "choices": {}}', "choices must be a list"),
        (b'{"type": "error", "code": "c", "message": "m"}', "lacks retryable"),
    ],
)
def test_decode_refuses_what_is_not_an_event(data: bytes, says: str) -> None:
    with pytest.raises(InvalidEvent, match=says.replace("(", r"\(")):
        decode_event(data)


def test_invalid_event_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        decode_event(b"nope")


def test_encoding_is_compact_utf8_json() -> None:
    event: dict[str, Any] = events.delta([{"index": 0, "delta": {"content": "é\u2028"}}])
    data = encode_event(event)
    assert b" " not in data
    assert orjson.loads(data) == event
    assert "é".encode() in data
