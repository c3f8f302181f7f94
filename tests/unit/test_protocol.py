"""The WebSocket protocol, pure: every bad client frame maps to a specific error."""

from __future__ import annotations

import string

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfan import events, protocol
from streamfan.protocol import (
    CLOSE_REASONS,
    Cancel,
    CloseCode,
    Invalid,
    Ping,
    Subscribe,
    Unsubscribe,
    parse_frame,
)

VALID = [
    ('{"op":"ping"}', Ping()),
    ('{"op":"subscribe","stream":"abc","from":"0"}', Subscribe("abc", "0-0")),
    ('{"op":"subscribe","stream":"abc"}', Subscribe("abc", "0-0")),
    ('{"op":"subscribe","stream":"abc","from":"$"}', Subscribe("abc", "$")),
    ('{"op":"subscribe","stream":"a.b:c-d_e","from":"17-3"}', Subscribe("a.b:c-d_e", "17-3")),
    (
        '{"op":"subscribe","stream":"abc","from":"1700000000000"}',
        Subscribe("abc", "1700000000000-0"),
    ),
    ('{"op":"unsubscribe","stream":"abc"}', Unsubscribe("abc")),
    ('{"op":"cancel","stream":"abc"}', Cancel("abc")),
    (b'{"op":"ping","extra":"ignored"}', Ping()),
]


@pytest.mark.parametrize(("frame", "expected"), VALID)
def test_a_valid_frame_parses_to_its_operation(frame: str | bytes, expected: object) -> None:
    assert parse_frame(frame) == expected


BAD = [
    ("not json", "nonsense", None, None),
    ("truncated json", '{"op":"ping"', None, None),
    ("empty frame", "", None, None),
    ("invalid utf-8", b'{"op":"\xff"}', None, None),
    ("a list", '["subscribe"]', None, None),
    ("a string", '"ping"', None, None),
    ("a number", "42", None, None),
    ("null", "null", None, None),
    ("no op", '{"stream":"abc"}', None, None),
    ("op not a string", '{"op":1}', None, None),
    ("op null", '{"op":null}', None, None),
    ("unknown op", '{"op":"publish","stream":"abc"}', None, None),
    ("op in the wrong case", '{"op":"Subscribe","stream":"abc"}', None, None),
    ("subscribe without stream", '{"op":"subscribe"}', None, "subscribe"),
    ("unsubscribe without stream", '{"op":"unsubscribe"}', None, "unsubscribe"),
    ("cancel without stream", '{"op":"cancel"}', None, "cancel"),
    ("stream not a string", '{"op":"subscribe","stream":5}', None, "subscribe"),
    ("stream a list", '{"op":"subscribe","stream":["a"]}', None, "subscribe"),
    ("stream empty", '{"op":"subscribe","stream":""}', None, "subscribe"),
    ("stream with a slash", '{"op":"subscribe","stream":"a/b"}', None, "subscribe"),
    ("stream with a brace", '{"op":"subscribe","stream":"a}b"}', None, "subscribe"),
    ("stream too long", '{"op":"subscribe","stream":"' + "a" * 129 + '"}', None, "subscribe"),
    ("from a number", '{"op":"subscribe","stream":"abc","from":0}', "abc", "subscribe"),
    ("from null", '{"op":"subscribe","stream":"abc","from":null}', "abc", "subscribe"),
    ("from garbage", '{"op":"subscribe","stream":"abc","from":"latest"}', "abc", "subscribe"),
    ("from negative", '{"op":"subscribe","stream":"abc","from":"-1"}', "abc", "subscribe"),
    ("from with a bad seq", '{"op":"subscribe","stream":"abc","from":"17-x"}', "abc", "subscribe"),
    (
        "from over 64 bits",
        '{"op":"subscribe","stream":"abc","from":"18446744073709551616"}',
        "abc",
        "subscribe",
    ),
    (
        "from exclusive syntax",
        '{"op":"subscribe","stream":"abc","from":"(17-0"}',
        "abc",
        "subscribe",
    ),
    ("from unicode digits", '{"op":"subscribe","stream":"abc","from":"١٢"}', "abc", "subscribe"),
]


@pytest.mark.parametrize(
    ("case", "frame", "stream", "reply_to"), BAD, ids=[c for c, _, _, _ in BAD]
)
def test_a_bad_frame_is_a_bad_request_that_names_the_op_it_answers_if_it_has_one(
    case: str, frame: str | bytes, stream: str | None, reply_to: str | None
) -> None:
    result = parse_frame(frame)
    assert isinstance(result, Invalid), case
    assert result.code == protocol.BAD_REQUEST
    assert result.stream == stream
    assert result.reply_to == reply_to
    assert result.message


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_the_parser_never_raises(data: bytes | str) -> None:
    assert isinstance(parse_frame(data), (Invalid, Ping, Subscribe, Unsubscribe, Cancel))


ID_CHARS = string.ascii_letters + string.digits + "._:-"


@given(
    st.text(alphabet=ID_CHARS, min_size=1, max_size=128),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.dictionaries(
        st.text(max_size=10),
        st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text(max_size=20),
        max_size=5,
    ),
)
def test_an_event_line_is_the_stored_event_verbatim_inside_a_json_message(
    stream: str, ms: int, seq: int, extra: dict[str, object]
) -> None:
    event = {"type": "delta", "choices": [{"index": 0, "delta": {"content": 'a\n"b"'}}], **extra}
    raw = events.encode_event(event)
    entry_id = f"{ms}-{seq}".encode()
    line = protocol.event_line(protocol.event_prefix(stream), entry_id, raw)
    assert b"\n" not in line
    assert raw in line  # spliced, not re-encoded
    assert orjson.loads(line) == {
        "op": "event",
        "stream": stream,
        "id": f"{ms}-{seq}",
        "event": event,
    }


def test_a_stored_event_with_a_raw_newline_is_re_encoded_to_keep_the_framing() -> None:
    line = protocol.event_line(
        protocol.event_prefix("s"), b"1-0", b'{"type":"delta",\n"choices":[]}'
    )
    assert b"\n" not in line
    assert orjson.loads(line)["event"] == {"type": "delta", "choices": []}


def test_a_frame_of_several_messages_splits_back_into_them() -> None:
    lines = [
        protocol.subscribed("s", "running", "0-0"),
        protocol.event_line(protocol.event_prefix("s"), b"1-0", b'{"type":"done","usage":null}'),
        protocol.end("s", "done"),
        protocol.error(None, protocol.BAD_REQUEST, "x", reply_to=None),
        protocol.cancelling("s", "running"),
        protocol.PONG,
    ]
    frame = protocol.join_lines(lines)
    assert [m["op"] for m in protocol.split_frame(frame)] == [
        "subscribed",
        "event",
        "end",
        "error",
        "cancelling",
        "pong",
    ]
    assert protocol.split_frame(frame.decode())[3] == {
        "op": "error",
        "stream": None,
        "code": "bad_request",
        "message": "x",
        "reply_to": None,
    }


def test_the_answers_carry_the_position_the_status_and_the_op_they_answer() -> None:
    assert orjson.loads(protocol.subscribed("s", "running", "17-3")) == {
        "op": "subscribed",
        "stream": "s",
        "status": "running",
        "last_id": "17-3",
    }
    assert orjson.loads(protocol.cancelling("s", "cancelled")) == {
        "op": "cancelling",
        "stream": "s",
        "status": "cancelled",
    }
    refused = protocol.error("s", protocol.FORBIDDEN, "no", reply_to=protocol.CANCEL)
    assert orjson.loads(refused)["reply_to"] == "cancel"
    # The op name every client operation answers to is the one parse_frame reads.
    for frame, op in [
        ('{"op":"subscribe","stream":"s"}', protocol.SUBSCRIBE),
        ('{"op":"unsubscribe","stream":"s"}', protocol.UNSUBSCRIBE),
        ('{"op":"cancel","stream":"s"}', protocol.CANCEL),
        ('{"op":"ping"}', protocol.PING),
    ]:
        parsed = parse_frame(frame)
        assert not isinstance(parsed, Invalid)
        assert parsed.op == op == orjson.loads(frame)["op"]
    assert protocol.OPS == ("subscribe", "unsubscribe", "cancel", "ping")


@pytest.mark.parametrize(
    ("raw", "etype"),
    [
        (events.encode_event(events.done("stop", None)), "done"),
        (events.encode_event(events.cancelled("user")), "cancelled"),
        (events.encode_event(events.delta([])), "delta"),
        (b'{"choices":[],"type":"error"}', "error"),  # type not first: full parse
        (b'{"type":"a\\"b"}', 'a"b'),
        (b"not json", None),
        (b"[1]", None),
    ],
)
def test_the_event_type_is_read_cheaply_and_correctly(raw: bytes, etype: str | None) -> None:
    assert protocol.event_type(raw) == etype


def test_close_codes_are_grouped_into_reconnect_and_terminal() -> None:
    reconnect = {c for c in CloseCode if c.reconnect}
    assert reconnect == {
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL_ERROR,
        CloseCode.TOO_SLOW,
        CloseCode.TOKEN_EXPIRED,
        CloseCode.IDLE,
    }
    assert not protocol.should_reconnect(4500)
    assert protocol.should_reconnect(1006)
    # Codes nobody meant as final (a proxy's 1000, a restart's 1012) reconnect.
    assert protocol.should_reconnect(1000) and protocol.should_reconnect(1012)
    assert not protocol.should_reconnect(1002)
    for code in CloseCode:
        assert len(CLOSE_REASONS[code].encode()) <= 123


def test_error_codes_are_the_ones_the_design_names() -> None:
    expected = {
        "bad_request",
        "not_found",
        "forbidden",
        "too_many_subscriptions",
        "too_slow",
        "unavailable",
        "gone",
    }
    assert expected == protocol.ERROR_CODES
