"""The HTTP doors' wire formats (pure): SSE messages and OpenAI chunks, read back by the
worker's own WHATWG decoder, however the bytes are split."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway import sse
from gateway.batch import Batch
from gateway.chunks import DONE_MESSAGE, WITH_USAGE, WITHOUT_USAGE
from gateway.streams import StreamState
from streamfan import events
from streamfan.store import StreamMeta
from worker.sse import SSEDecoder

STREAM = "s-1"


class _Done:
    def cancel(self) -> None:
        pass


def state(model: str = "gpt-x", created_ms: int = 1_700_000_000_123) -> StreamState:
    st = StreamState(STREAM, _Done())  # type: ignore[arg-type]
    st.meta = StreamMeta(
        stream_id=STREAM,
        status="running",
        created_at=created_ms,
        updated_at=created_ms,
        model=model,
        attempt=1,
        owner=None,
        usage=None,
        finish_reason=None,
        error=None,
        last_id=None,
    )
    return st


def decode(body: bytes, cuts: list[int]) -> list[Any]:
    """The SSE events in ``body`` fed to the decoder in pieces cut at ``cuts``."""
    dec, out, at = SSEDecoder(), [], 0
    for cut in [*sorted(c % (len(body) + 1) for c in cuts), len(body)]:
        out.extend(dec.decode(body[at:cut]))
        at = max(at, cut)
    out.extend(dec.flush())
    return out


texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
stream_events = st.lists(
    st.one_of(
        texts.map(lambda t: events.delta([{"index": 0, "delta": {"content": t}}])),
        st.integers(0, 9).map(lambda n: events.usage({"total_tokens": n})),
        st.just(events.reset(2)),
    ),
    min_size=1,
    max_size=8,
)


@given(stream_events, st.lists(st.integers(0, 10_000), max_size=6))
def test_sse_messages_decode_to_the_stored_events_with_their_ids_however_split(
    evs: list[dict[str, Any]], cuts: list[int]
) -> None:
    entries = [(f"17-{i}".encode(), events.encode_event(ev)) for i, ev in enumerate(evs)]
    batch = Batch(state(), entries, None)
    got = decode(batch.shared(sse.EVENT_STREAM).payload, cuts)
    assert [(e.id, e.event, orjson.loads(e.data)) for e in got] == [
        (eid.decode(), ev["type"], ev) for (eid, _), ev in zip(entries, evs, strict=True)
    ]


def test_the_end_and_error_messages_and_a_foreign_row_with_a_newline() -> None:
    st_ = state()
    foreign = b'{"type":"delta",\n"choices":[]}'
    body = sse.EVENT_STREAM.entry(st_, b"1-1", foreign) + sse.EVENT_STREAM.end(STREAM, "done")
    body += sse.error("gone", "history is gone") + sse.KEEPALIVE
    got = decode(body, [])
    assert [(e.event, e.id) for e in got] == [("delta", "1-1"), ("end", "1-1"), ("error", "1-1")]
    assert orjson.loads(got[0].data) == {"type": "delta", "choices": []}
    assert orjson.loads(got[1].data) == {"status": "done"}
    assert orjson.loads(got[2].data) == {"code": "gone", "message": "history is gone"}


def test_a_batch_is_encoded_once_per_format_and_shared() -> None:
    entries = [(b"1-1", events.encode_event(events.delta([{"index": 0, "delta": {}}])))]
    batch = Batch(state(), entries, None)
    assert batch.shared(sse.EVENT_STREAM) is batch.shared(sse.EVENT_STREAM)
    assert batch.shared(WITH_USAGE) is not batch.shared(WITHOUT_USAGE)
    shared = batch.shared(sse.EVENT_STREAM)
    assert shared.wire() is shared.wire()
    assert shared.wire() == b"%x\r\n%b\r\n" % (shared.size, shared.payload)


def chunks_of(evs: list[dict[str, Any]], codec: Any, status: str | None) -> list[Any]:
    entries = [(f"5-{i}".encode(), events.encode_event(ev)) for i, ev in enumerate(evs)]
    return decode(Batch(state(), entries, status).shared(codec).payload, [])


def test_openai_chunks_carry_the_choices_as_sent_and_end_with_done() -> None:
    choices = [
        {"index": 0, "delta": {"role": "assistant", "content": "Hi", "x_vendor": 1}},
        {"index": 1, "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {}}]}},
    ]
    evs = [
        events.start(STREAM, "gpt-x", 1, 1),
        events.delta(choices),
        events.usage({"total_tokens": 3}),
        events.done("stop", {"total_tokens": 3}),
    ]
    got = chunks_of(evs, WITH_USAGE, "done")
    assert [e.id for e in got] == ["5-1", "5-2", "5-2"]
    head = {"id": STREAM, "object": "chat.completion.chunk", "created": 1_700_000_000}
    assert orjson.loads(got[0].data) == {**head, "model": "gpt-x", "choices": choices}
    assert orjson.loads(got[1].data) == {
        **head,
        "model": "gpt-x",
        "choices": [],
        "usage": {"total_tokens": 3},
    }
    assert got[2].data == "[DONE]"
    without = chunks_of(evs, WITHOUT_USAGE, "done")
    assert [e.data for e in without][1:] == ["[DONE]"]  # no usage chunk when not asked


def test_failures_are_openai_error_objects_and_only_done_gets_done() -> None:
    evs = [events.reset(2), events.error("upstream_http_error", "boom", retryable=False)]
    got = chunks_of(evs, WITH_USAGE, "error")
    reset, failed = (orjson.loads(e.data)["error"] for e in got)
    assert reset["code"] == "stream_reset" and reset["stream_id"] == STREAM
    assert set(failed) == {"message", "type", "param", "code"}
    assert failed["code"] == "upstream_http_error" and failed["message"] == "boom"
    assert DONE_MESSAGE not in b"".join(e.data.encode() for e in got)
    cancelled = chunks_of([events.cancelled("by a test")], WITH_USAGE, "cancelled")
    assert orjson.loads(cancelled[0].data)["error"]["code"] == "cancelled"
