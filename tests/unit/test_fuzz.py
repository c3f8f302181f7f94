"""Fuzzing the pure parsers with hostile input: no crash, no hang, every refusal specific.

What an upstream may send reaches :class:`worker.sse.SSEDecoder` and
:class:`worker.translate.Translator`; what a client may send reaches
:func:`streamfan.protocol.parse_frame` and the session's checks. Each of them
must turn any input into values or into one of streamfan's own errors (the
code that the ``error`` event or message will carry), never into a
``KeyError``, ``TypeError`` or a loop. Bounded and derandomized: the same
examples every run, a few seconds in all (``tests/gateway/test_gateway_fuzz.py``
sends the same kind of frames to a live gateway).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.session import Session
from streamfan import events, protocol
from streamfan.errors import UpstreamBadData, UpstreamError, UpstreamStreamError, UpstreamTruncated
from streamfan.keys import is_valid_stream_id
from streamfan.positions import parse_position
from streamfan.protocol import Cancel, Invalid, Ping, Subscribe, Unsubscribe, parse_frame
from streamfan.tokens import Grant
from worker.sse import ServerSentEvent, SSEDecoder
from worker.translate import MESSAGE_LIMIT, Translator

FIXED = settings(deadline=None, derandomize=True, database=None)

# --- strategies ----------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
choice_like = st.fixed_dictionaries(
    {},
    optional={
        "index": json_values,
        "delta": json_values,
        "finish_reason": json_values,
        "logprobs": json_values,
    },
)
chunk_like = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(choice_like | json_values, max_size=3) | json_values,
        "usage": json_values,
        "error": json_values,
        "id": json_values,
        "object": st.just("chat.completion.chunk"),
    },
)


def dumps(value: Any) -> str:
    # The standard library's encoder: it writes integers beyond 64 bits too,
    # which an upstream may send and orjson reads as floats or refuses.
    return json.dumps(value, ensure_ascii=False)


#: What one SSE ``data`` payload may be: a chunk, any JSON, [DONE], or text.
payloads = (
    chunk_like.map(dumps)
    | json_values.map(dumps)
    | st.sampled_from(["[DONE]", " [DONE] ", "", " ", "{", "{}", '{"choices": [', "null"])
    | st.text(max_size=60)
)
names = st.sampled_from(["message", "error", "ping", "", "delta"]) | st.text(max_size=8)
sse_events = st.builds(ServerSentEvent, payloads, names)


def field_lines(draw: st.DrawFn) -> bytes:
    """A body of SSE lines, some well-formed, some not, with mixed line ends."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["data", "event", "id", "retry", "comment", "junk", "blank"]))
        eol = draw(st.sampled_from([b"\n", b"\r", b"\r\n"]))
        if kind == "blank":
            parts.append(eol)
        elif kind == "comment":
            parts.append(b":" + draw(st.binary(max_size=20)).replace(b"\n", b"") + eol)
        elif kind == "junk":
            parts.append(draw(st.binary(max_size=30)))
        else:
            value = draw(payloads).encode()
            parts.append(kind.encode() + draw(st.sampled_from([b":", b": ", b""])) + value + eol)
    return b"".join(parts)


sse_bodies = st.composite(field_lines)() | st.binary(max_size=400)


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


def decode_all(chunks: list[bytes], decoder: SSEDecoder) -> list[ServerSentEvent]:
    out: list[ServerSentEvent] = []
    for chunk in chunks:
        out.extend(decoder.decode(chunk))
    out.extend(decoder.flush())
    return out


# --- the SSE decoder ---------------------------------------------------------------------


@settings(FIXED, max_examples=200)
@given(sse_bodies, st.lists(st.integers(0, 10_000), max_size=10))
def test_the_decoder_takes_any_bytes_split_anywhere_and_gives_the_same_events(
    body: bytes, cuts: list[int]
) -> None:
    whole = decode_all([body], SSEDecoder())
    assert decode_all(split(body, cuts), SSEDecoder()) == whole
    for event in whole:
        assert isinstance(event.data, str) and isinstance(event.event, str) and event.event
        assert event.retry is None or event.retry >= 0


@settings(FIXED, max_examples=150)
@given(sse_bodies, st.lists(st.integers(0, 10_000), max_size=10), st.integers(1, 64))
def test_a_small_event_limit_only_ever_raises_bad_data_and_leaves_a_usable_decoder(
    body: bytes, cuts: list[int], limit: int
) -> None:
    decoder = SSEDecoder(max_event_bytes=limit)
    for chunk in split(body, cuts):
        try:
            for event in decoder.decode(chunk):
                # What is held between reads is bounded; one read is bounded by
                # the HTTP client's read size.
                assert len(event.data.encode("utf-8", "surrogatepass")) <= limit + len(chunk)
        except UpstreamBadData as exc:
            assert exc.code == "upstream_bad_data" and exc.retryable
            assert not decoder.pending  # reset: what follows is read afresh
    decoder.flush()
    if limit >= len("data: ok"):
        assert [e.data for e in decoder.decode(b"data: ok\n\n")] == ["ok"]


# --- the translator ----------------------------------------------------------------------


def run_translator(items: list[ServerSentEvent]) -> tuple[list[events.Event], Exception | None]:
    translator = Translator(secrets=["sk-fuzz-secret-key"])
    out: list[events.Event] = []
    try:
        for item in items:
            out.extend(translator.feed(item))
        out.append(translator.end_of_body())
    except UpstreamError as exc:
        return out, exc
    return out, None


@settings(FIXED, max_examples=150)
@given(st.lists(sse_events, max_size=8))
def test_the_translator_gives_valid_events_or_a_specific_upstream_error(
    items: list[ServerSentEvent],
) -> None:
    out, failure = run_translator(items)
    for event in out:
        # What the worker would append: valid, and the same once stored and read back.
        events.validate_event(event)
        assert events.decode_event(events.encode_event(event)) == event
    if failure is None:
        assert out and out[-1]["type"] == "done"
        return
    assert isinstance(failure, UpstreamBadData | UpstreamStreamError | UpstreamTruncated)
    assert failure.code in ("upstream_bad_data", "upstream_stream_error", "upstream_truncated")
    assert failure.retryable == (not isinstance(failure, UpstreamStreamError))
    assert isinstance(failure.message, str) and len(failure.message) <= MESSAGE_LIMIT
    assert "sk-fuzz-secret-key" not in failure.message
    error_event = events.error(failure.code, failure.message, retryable=failure.retryable)
    events.validate_event(error_event)


@settings(FIXED, max_examples=150)
@given(sse_bodies, st.lists(st.integers(0, 10_000), max_size=6))
def test_bytes_through_decoder_and_translator_end_in_events_or_a_streamfan_error(
    body: bytes, cuts: list[int]
) -> None:
    decoder, translator = SSEDecoder(max_event_bytes=256), Translator()
    try:
        for chunk in split(body, cuts):
            for sse in decoder.decode(chunk):
                for event in translator.feed(sse):
                    events.validate_event(event)
        translator.end_of_body()
    except UpstreamError as exc:
        assert exc.code.startswith("upstream_")


# --- the client-frame parser ---------------------------------------------------------------

ops = st.sampled_from([*protocol.OPS, "", "PING", "subscribe ", "pong", "event"]) | json_values
stream_ids = (
    st.sampled_from(["s1", "a.b:c-d_e", "x" * 128, "x" * 129, "", "a b", "é"]) | json_values
)
positions = (
    st.sampled_from(["0", "$", "0-0", "17-3", "1700000000000", "-1", "1-", "$0"]) | json_values
)
frames = (
    st.fixed_dictionaries(
        {}, optional={"op": ops, "stream": stream_ids, "from": positions, "extra": json_values}
    ).map(lambda d: dumps(d).encode())
    | st.binary(max_size=200)
    | st.text(max_size=200).map(str.encode)
    | json_values.map(lambda v: dumps(v).encode())
)


@settings(FIXED, max_examples=400)
@given(frames, st.booleans())
def test_any_frame_parses_to_an_operation_or_a_specific_error(frame: bytes, as_text: bool) -> None:
    data: str | bytes = frame
    if as_text:
        data = frame.decode("utf-8", "replace")
    op = parse_frame(data)
    if isinstance(op, Invalid):
        assert op.code in protocol.ERROR_CODES
        assert op.reply_to in (None, *protocol.OPS)
        assert op.stream is None or is_valid_stream_id(op.stream)
        assert len(op.message) <= 200  # an answer never echoes the frame back in full
        answer = protocol.error(op.stream, op.code, op.message, reply_to=op.reply_to)
        assert protocol.LINE_SEPARATOR not in answer  # one JSON line: the framing holds
        assert orjson.loads(answer)["code"] == op.code
        return
    assert isinstance(op, Subscribe | Unsubscribe | Cancel | Ping)
    if not isinstance(op, Ping):
        assert is_valid_stream_id(op.stream)
    if isinstance(op, Subscribe):
        assert op.position == "$" or parse_position(op.position) == op.position


@pytest.mark.parametrize("can_cancel", [False, True])
@settings(FIXED, max_examples=100)
@given(st.lists(frames, max_size=20))
def test_a_session_answers_any_run_of_frames_within_its_limits(
    can_cancel: bool, run: list[bytes]
) -> None:
    grant = Grant(frozenset({"s1", "x" * 128}), cancel=can_cancel, expires_at=float("inf"))
    session = Session(grant, max_subscriptions=2, max_messages_per_s=1.0, now=0.0)
    for frame in run:
        op: Any = parse_frame(frame)
        if not session.admit(0.0):
            break  # the gateway would cut the connection here
        if not isinstance(op, Invalid):
            refusal = session.authorize(op)
            if refusal is None and isinstance(op, Subscribe):
                session.add(op.stream)
            elif refusal is None and isinstance(op, Unsubscribe):
                session.discard(op.stream)
            elif refusal is not None:
                assert refusal.code in protocol.ERROR_CODES
        assert len(session.streams) <= 2
        assert session.streams <= grant.streams
