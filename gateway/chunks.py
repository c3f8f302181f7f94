"""The OpenAI door's stream: events → ``chat.completion.chunk`` SSE, as the SDKs read it.

:class:`Chunks` is the wire format (a :class:`gateway.httpsink.HttpCodec`,
pure): one SSE message per event that shows in OpenAI's format, each with
``id:`` = the entry id (what ``Last-Event-ID`` and ``starting_after`` take):

* ``delta`` → ``{"id": <stream id>, "object": "chat.completion.chunk",
  "created", "model", "choices": <the upstream's choices array as sent>}`` —
  tool calls, refusal, logprobs and vendor fields of the choices untouched.
  ``created`` and ``model`` are the stream's (its meta: the request's model,
  the submit time), the same in every chunk and in the ``ChatCompletion`` that
  ``Client.result()`` and ``retrieve`` give;
* ``usage`` → the usage chunk, ``"choices": []`` (only when the request asked
  for it with ``stream_options.include_usage``);
* ``error`` and ``cancelled`` → an OpenAI error object, ``{"error": {"message",
  "type", "param", "code"}}``, which the SDKs raise as ``APIError``;
* ``reset`` → the error object with code ``stream_reset`` and the stream id
  (:class:`ChunkSink` decides whether a reader gets it);
* ``start`` and ``done`` show nothing; after ``done`` comes ``data: [DONE]``.

:class:`ChunkSink` is the per-reader part: a ``reset`` after this reader was
sent output of the abandoned attempt ends its response with ``stream_reset``
(never a silently wrong text); a reader that has not seen any of it reads on.
While a reader catches up on history nothing is written until it has caught up
(or the stream ended): a ``reset`` found in history drops the output held for
the abandoned attempt, so a re-attach from the start gives exactly the reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import orjson

from gateway import sse
from gateway.batch import Batch
from gateway.http import chunk
from gateway.httpsink import HttpSink
from streamfan import events, protocol
from streamfan.page import Entry

if TYPE_CHECKING:
    from gateway.streams import StreamState, Subscription

DONE_MESSAGE: Final = b"data: [DONE]\n\n"
STREAM_RESET: Final = "stream_reset"
CANCELLED: Final = "cancelled"


def error_object(
    code: str, message: str, kind: str = "server_error", **extra: Any
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code, **extra}}


def _data(entry_id: bytes | None, payload: bytes) -> bytes:
    head = b"id: %b\n" % entry_id if entry_id is not None else b""
    return b"%bdata: %b\n\n" % (head, payload)


class Chunks:
    """The format; one instance per ``include_usage`` choice (each is encoded once)."""

    content_type = sse.CONTENT_TYPE
    #: Every refusal is a status: the SDKs retry a 503 by themselves.
    in_band: frozenset[str] = frozenset()

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage

    def _head(self, state: StreamState) -> bytes:
        head = state.cache.get(Chunks)
        if head is None:
            meta = state.meta
            created = int((meta.created_at or 0) / 1000) if meta is not None else 0
            model = (meta.model or "") if meta is not None else ""
            obj = {"id": state.stream_id, "object": "chat.completion.chunk", "created": created}
            head = state.cache[Chunks] = orjson.dumps({**obj, "model": model})[:-1] + b',"choices":'
        return head

    def entry(self, state: StreamState, entry_id: bytes, event_json: bytes) -> bytes:
        etype = protocol.event_type(event_json)
        if etype not in _SHOWN:
            return b""
        try:
            event = orjson.loads(event_json)
        except orjson.JSONDecodeError:
            return b""
        if etype == events.DELTA:
            payload = self._head(state) + orjson.dumps(event.get("choices") or []) + b"}"
        elif etype == events.USAGE:
            if not self.include_usage:
                return b""
            payload = self._head(state) + b'[],"usage":' + orjson.dumps(event.get("usage")) + b"}"
        elif etype == events.ERROR:
            code = str(event.get("code") or "error")
            payload = orjson.dumps(error_object(code, str(event.get("message") or code)))
        elif etype == events.CANCELLED:
            reason = str(event.get("reason") or "cancelled")
            payload = orjson.dumps(error_object(CANCELLED, f"the reply was cancelled: {reason}"))
        else:
            payload = orjson.dumps(reset_error(state.stream_id, event.get("attempt")))
        return _data(entry_id, payload)

    def end(self, stream_id: str, status: str) -> bytes:
        return DONE_MESSAGE if status == events.STATUS_DONE else b""

    def join(self, messages: list[bytes]) -> bytes:
        return b"".join(messages)

    def frame(self, payload: bytes) -> bytes:
        return chunk(payload)

    def preamble(self) -> bytes:
        return b""

    def failure(self, code: str, message: str) -> bytes:
        return _data(None, orjson.dumps(error_object(code, message)))


_SHOWN: Final = frozenset(
    {events.DELTA, events.USAGE, events.ERROR, events.CANCELLED, events.RESET}
)
WITH_USAGE = Chunks(include_usage=True)
WITHOUT_USAGE = Chunks(include_usage=False)


def reset_error(stream_id: str, attempt: object) -> dict[str, Any]:
    return error_object(
        STREAM_RESET,
        f"stream {stream_id}: the upstream call was retried (attempt {attempt}) after part of "
        "the reply was sent; what this response carried is not the reply. Re-attach from "
        f"the start (GET /v1/chat/completions/{stream_id}/stream) for the exact reply.",
        stream_id=stream_id,
    )


def _types(entries: Sequence[Entry]) -> list[str | None]:
    return [protocol.event_type(ev) for _, ev in entries]


class ChunkSink(HttpSink):
    """An OpenAI-door reader: holds history until caught up, ends at a reset after output."""

    __slots__ = ("_held", "_held_output", "caught_up", "had_output")

    def __init__(self, *args: Any, had_output: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: This reader was sent (or, re-attaching after an id, had) output of the
        #: current attempt: a reset now would leave it with a wrong text.
        self.had_output = had_output
        self.caught_up = False
        self._held: list[bytes] = []
        self._held_output = False

    def replay(self, sub: Subscription, entries: Sequence[Entry], final_status: str | None) -> None:
        codec, st = self.codec, sub.state
        for (eid, ev), etype in zip(entries, _types(entries), strict=True):
            if etype == events.RESET:
                if self.had_output:
                    self._held.append(codec.entry(st, eid, ev))
                    self._release()
                    self.finish()
                    return
                # The reader never saw the abandoned attempt: it reads the next one.
                self._held.clear()
                self._held_output = False
                continue
            line = codec.entry(st, eid, ev)
            if line:
                self._held.append(line)
                self._held_output |= etype == events.DELTA
        if final_status is not None:
            self._held.append(codec.end(sub.stream_id, final_status))
            self._release()
            self.finish()

    def _release(self) -> None:
        held, self._held = self._held, []
        self.had_output |= self._held_output
        self._held_output = False
        if held:
            self.send(b"".join(held), bounded=False)

    def joined(self, sub: Subscription) -> None:
        self.caught_up = True
        self._release()

    def end(self, sub: Subscription, status: str) -> None:
        self._release()
        super().end(sub, status)

    def error(self, sub: Subscription, code: str, message: str, *, answered: bool) -> None:
        self._release()
        super().error(sub, code, message, answered=answered)

    def deliver(self, batch: Batch, first: int = 0) -> None:
        types = _types(batch.entries[first:])
        if events.RESET not in types:
            self.had_output |= events.DELTA in types
            super().deliver(batch, first)
            return
        # Rare: a retry started. Per reader: up to the reset, then decide.
        lines = batch.lines(self.codec)
        for i, etype in enumerate(types, start=first):
            if etype == events.RESET:
                if self.had_output:
                    self.send(lines[i], bounded=False)
                    self.finish()
                    return
                continue
            self.send(lines[i])
            self.had_output |= etype == events.DELTA
            if self.closing:
                return
        if batch.status is not None:
            self.send(lines[-1])
            self.finish()
