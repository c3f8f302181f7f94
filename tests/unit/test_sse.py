"""worker.sse: the incremental SSE decoder, against the WHATWG event-stream rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfan.errors import UpstreamError
from worker.sse import ServerSentEvent, SSEDecoder

#: Deterministic (the same examples every run), and no example database on disk.
FIXED = settings(deadline=None, derandomize=True, database=None)


def decode_all(*chunks: bytes, decoder: SSEDecoder | None = None) -> list[ServerSentEvent]:
    decoder = decoder or SSEDecoder()
    out: list[ServerSentEvent] = []
    for chunk in chunks:
        out.extend(decoder.decode(chunk))
    out.extend(decoder.flush())
    return out


def datas(*chunks: bytes) -> list[str]:
    return [e.data for e in decode_all(*chunks)]


def test_a_data_line_and_a_blank_line_make_one_message_event() -> None:
    assert decode_all(b"data: hello\n\n") == [ServerSentEvent("hello", "message", "", None)]


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"], ids=["LF", "CR", "CRLF"])
def test_every_line_end_style_is_understood(eol: bytes) -> None:
    body = b"data: a" + eol + eol + b"data: b" + eol + b"data: c" + eol + eol
    assert datas(body) == ["a", "b\nc"]


def test_a_cr_at_the_end_of_one_read_and_an_lf_at_the_start_of_the_next_are_one_line_end() -> None:
    assert datas(b"data: a\r", b"\ndata: b\r\n\r", b"\n") == ["a\nb"]


def test_a_cr_alone_at_the_end_of_a_read_still_ends_the_line() -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b"data: a\r\r") == [ServerSentEvent("a")]
    assert decoder.decode(b"data: b\r\r") == [ServerSentEvent("b")]


def test_a_bom_at_the_start_is_stripped() -> None:
    assert datas(b"\xef\xbb\xbfdata: x\n\n") == ["x"]


def test_a_bom_split_across_reads_is_stripped() -> None:
    assert datas(b"\xef", b"\xbb", b"\xbfdata: x\n\n") == ["x"]


def test_only_one_bom_is_stripped() -> None:
    # The second BOM belongs to the field name, which is then unknown: no event.
    assert datas(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n") == ["y"]


def test_a_bom_later_in_the_stream_is_data() -> None:
    assert datas(b"data: a\n\ndata: \xef\xbb\xbfb\n\n") == ["a", "\ufeffb"]


def test_comments_are_counted_and_make_no_event() -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b": keep-alive\n\n:\n\n") == []
    assert decoder.comments == 2
    assert decoder.decode(b": ping\ndata: x\n\n") == [ServerSentEvent("x")]
    assert decoder.comments == 3


def test_multi_line_data_is_joined_with_lf() -> None:
    assert datas(b"data: a\ndata:\ndata:  b\n\n") == ["a\n\n b"]


def test_only_one_space_after_the_colon_is_removed() -> None:
    assert datas(b"data:x\n\ndata: x\n\ndata:  x\n\n") == ["x", "x", " x"]


def test_a_field_without_a_colon_has_an_empty_value() -> None:
    assert datas(b"data\n\n") == [""]
    assert datas(b"data\ndata\n\n") == ["\n"]


def test_an_event_without_data_is_not_dispatched() -> None:
    assert decode_all(b"event: ping\n\nid: 1\n\nretry: 5\n\n") == []


def test_event_id_and_retry_fields_are_read() -> None:
    events = decode_all(b"event: update\nid: 7\nretry: 1500\ndata: x\n\ndata: y\n\n")
    assert events == [
        ServerSentEvent("x", "update", "7", 1500),
        # The event name is per event; the last id and the retry persist.
        ServerSentEvent("y", "message", "7", 1500),
    ]


def test_an_id_containing_nul_is_ignored() -> None:
    assert decode_all(b"id: 1\n\nid: 2\x003\ndata: x\n\n")[0].id == "1"


def test_a_retry_that_is_not_ascii_digits_is_ignored() -> None:
    decoder = SSEDecoder()
    decode_all(b"retry: 100\ndata: x\n\nretry: 1e3\nretry: -5\nretry: \xd9\xa3\n", decoder=decoder)
    assert decoder.retry == 100


def test_unknown_fields_are_ignored() -> None:
    assert datas(b"foo: bar\ndata: x\nDATA: y\n\n") == ["x"]


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c"])
def test_only_cr_and_lf_end_lines(char: str) -> None:
    body = f'data: {{"content": "a{char}b"}}\n\n'.encode()
    assert datas(body) == [f'{{"content": "a{char}b"}}']


def test_a_multi_byte_character_split_across_reads_is_whole() -> None:
    body = "data: 日本🙂\n\n".encode()
    for cut in range(1, len(body)):
        assert datas(body[:cut], body[cut:]) == ["日本🙂"], cut


def test_every_byte_in_its_own_read_gives_the_same_events() -> None:
    body = "\ufeffevent: e\r\ndata: é\r\n: c\r\n\r\ndata: 2\r\r".encode()
    assert decode_all(*(body[i : i + 1] for i in range(len(body)))) == decode_all(body)


def test_invalid_utf8_becomes_the_replacement_character() -> None:
    assert datas(b"data: a\xffb\xe6\x97\n\n") == ["a\ufffdb\ufffd"]


def test_an_unfinished_event_at_the_end_of_the_body_is_discarded() -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b"data: 1\n\ndata: [DONE]\n") == [ServerSentEvent("1")]
    assert decoder.pending
    assert decoder.flush() == []
    assert not decoder.pending


def test_an_unfinished_line_is_pending() -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b'data: {"cho') == []
    assert decoder.pending


def test_an_empty_read_changes_nothing() -> None:
    assert datas(b"", b"data: x\n", b"", b"\n") == ["x"]


def test_an_event_larger_than_the_limit_fails_the_stream() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(UpstreamError) as info:
        for _ in range(20):
            decoder.decode(b"data: " + b"x" * 10 + b"\n")
    assert (info.value.code, info.value.retryable) == ("upstream_bad_data", True)


def test_a_line_larger_than_the_limit_fails_the_stream_before_it_ends() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    decoder.decode(b"data: " + b"x" * 50)
    with pytest.raises(UpstreamError):
        decoder.decode(b"x" * 60)


# --- property: where the bytes were split does not matter ----------------------

_line_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    max_size=12,
) | st.sampled_from(["{}", '{"a": "\u2028\u2029"}', " lead", "日本語", "🙂", "\u0085"])

_events = st.lists(
    st.tuples(
        st.lists(_line_text, min_size=1, max_size=3),  # data lines
        st.none() | st.sampled_from(["update", "error", "ü"]),  # event name
        st.none() | st.text(alphabet="abc123é", max_size=4),  # id
        st.booleans(),  # a comment before it
    ),
    max_size=6,
)


def _body(events: list[tuple[list[str], str | None, str | None, bool]], eol: str) -> str:
    out = []
    for lines, name, eid, comment in events:
        if comment:
            out.append(": keep-alive" + eol)
        if name is not None:
            out.append(f"event: {name}{eol}")
        if eid is not None:
            out.append(f"id: {eid}{eol}")
        out.extend(f"data: {line}{eol}" for line in lines)
        out.append(eol)
    return "".join(out)


def _expected(
    events: list[tuple[list[str], str | None, str | None, bool]],
) -> list[ServerSentEvent]:
    out = []
    last_id = ""
    for lines, name, eid, _ in events:
        if eid is not None:
            last_id = eid
        out.append(ServerSentEvent("\n".join(lines), name or "message", last_id, None))
    return out


@settings(FIXED, max_examples=50)
@given(
    events=_events,
    eol=st.sampled_from(["\n", "\r", "\r\n"]),
    bom=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_the_events_decoded_do_not_depend_on_where_the_bytes_were_split(
    events: list[tuple[list[str], str | None, str | None, bool]],
    eol: str,
    bom: bool,
    cuts: list[int],
) -> None:
    body = ("\ufeff" if bom else "").encode() + _body(events, eol).encode()
    points = sorted({c % (len(body) + 1) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    assert decode_all(*chunks) == _expected(events)
