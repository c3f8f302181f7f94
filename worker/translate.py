"""Upstream chunks → streamfan events: the worker's decisions about a reply, no I/O.

:class:`Translator` takes what :class:`worker.sse.SSEDecoder` decodes (or the bare
``data`` strings) of one attempt and returns the events to append:

- a chunk with a non-empty ``choices`` → one ``delta`` whose ``choices`` is the
  upstream's array as sent (vendor fields untouched; chunk-level ``id``,
  ``model``, ``created``… dropped);
- a chunk with a ``usage`` object → a ``usage`` event, after the delta when the
  chunk has both;
- a chunk with neither (a content-filter notice, ``"choices": []``) → nothing;
- ``[DONE]`` → :attr:`Translator.finished`; later input is ignored.

Failures are raised, not returned, so that a caller appending the events of one
network read keeps those that came before the failing chunk (``batch.extend``
before the raise):

- a chunk with an ``error`` object, or an SSE event named ``error`` →
  :class:`~streamfan.errors.UpstreamStreamError` (``upstream_stream_error``, not
  retryable) carrying the upstream's message (and its code or type, in
  brackets) and nothing else of the object; at most 500 characters;
- a data payload that is not JSON, or not a JSON object (or whose ``choices`` is
  not a list) → :class:`~streamfan.errors.UpstreamBadData` with code
  ``upstream_bad_data``, retryable: a broken payload is a transport or proxy
  fault more often than a model's, and the next attempt may well be whole;
- :meth:`Translator.end_of_body` at the end of the body returns the ``done``
  event when the reply finished (``[DONE]`` seen, or every choice seen has a
  ``finish_reason``), else raises :class:`~streamfan.errors.UpstreamTruncated`
  (retryable).

An empty data payload is a keep-alive (no event); events with a name other than
``message`` or ``error`` are not chat chunks and are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import orjson

from streamfan import events
from streamfan.errors import UpstreamBadData, UpstreamStreamError, UpstreamTruncated
from streamfan.events import Event
from streamfan.redact import redact
from worker.sse import ServerSentEvent

DONE_SENTINEL: Final = "[DONE]"
#: Longest upstream error message carried into an ``error`` event.
MESSAGE_LIMIT: Final = 500
CODE_LIMIT: Final = 64


class Translator:
    """One per attempt. ``feed`` each decoded event; ``end_of_body`` when the body ends.

    ``secrets`` are strings (the API key) masked by :func:`streamfan.redact.redact`
    in any error message taken from the upstream, in case it echoes them back.
    """

    def __init__(self, *, secrets: Iterable[str] = ()) -> None:
        self._secrets = tuple(s for s in secrets if s)
        #: True once ``[DONE]`` arrived: the reply is complete, stop reading.
        self.finished = False
        #: The last ``usage`` object the upstream sent, or None.
        self.usage: dict[str, Any] | None = None
        #: How many chunks were translated (with or without events).
        self.chunks = 0
        self._finish_reasons: dict[int, str] = {}
        self._seen: set[int] = set()

    @property
    def finish_reason(self) -> str | None:
        """The finish_reason of choice 0, once the upstream sent one."""
        return self._finish_reasons.get(0)

    @property
    def complete(self) -> bool:
        """Whether the reply may end here: ``[DONE]`` seen, or every choice finished."""
        if self.finished:
            return True
        return bool(self._seen) and self._seen <= self._finish_reasons.keys()

    def feed(self, sse: ServerSentEvent | str) -> list[Event]:
        """The events for one decoded SSE event (or one ``data`` string)."""
        if self.finished:
            return []
        if isinstance(sse, str):
            data, name = sse, "message"
        else:
            data, name = sse.data, sse.event
        if name == "error":
            raise self._error(_error_object(data))
        if name != "message":
            return []
        if not data.startswith("{"):
            stripped = data.strip()
            if not stripped:
                return []
            if stripped.startswith(DONE_SENTINEL):
                self.finished = True
                return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamBadData(
                f"the upstream sent a data line that is not JSON ({len(data)} characters)"
            ) from None
        if not isinstance(chunk, dict):
            raise UpstreamBadData(
                f"the upstream sent a JSON {type(chunk).__name__} where a chunk object belongs"
            )
        return self.feed_chunk(chunk)

    def feed_chunk(self, chunk: dict[str, Any]) -> list[Event]:
        """The events for one parsed ``chat.completion.chunk`` object."""
        self.chunks += 1
        err = chunk.get("error")
        if err:  # truthy, as the OpenAI SDK checks: some servers send "error": null
            raise self._error(err)
        out: list[Event] = []
        choices = chunk.get("choices")
        if choices:
            if not isinstance(choices, list):
                raise UpstreamBadData("the upstream sent a chunk whose choices is not a list")
            self._track(choices)
            out.append(events.delta(choices))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            out.append(events.usage(usage))
        return out

    def end_of_body(self) -> Event:
        """The ``done`` event if the reply finished, else raise :class:`UpstreamTruncated`."""
        if not self.complete:
            if self._seen:
                detail = "before [DONE] and before a finish_reason for every choice"
            else:
                detail = "before [DONE] and before any choice"
            raise UpstreamTruncated(f"the upstream's body ended {detail}")
        return events.done(self.finish_reason, self.usage)

    def _track(self, choices: list[Any]) -> None:
        for pos, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", pos)
            if not isinstance(index, int):
                index = pos
            self._seen.add(index)
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self._finish_reasons[index] = reason

    def _error(self, err: Any) -> UpstreamStreamError:
        message, code, status = _describe(err)
        message = redact(message, self._secrets)
        if code:
            message = f"[{redact(code, self._secrets)[:CODE_LIMIT]}] {message}"
        return UpstreamStreamError(message[:MESSAGE_LIMIT], upstream_status=status)


def _error_object(data: str) -> Any:
    """The error carried by an ``event: error``: its JSON, or the text itself."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data.strip() or None
    if isinstance(obj, dict) and obj.get("error") is not None:
        return obj["error"]
    return obj


def _describe(err: Any) -> tuple[str, str | None, int | None]:
    """(message, upstream code or type, HTTP-like status) from an error object.

    Only these three are taken: anything else in the object (``param``, request
    ids, echoed input, headers some proxies add) stays out of our events.
    """
    if isinstance(err, str) and err:
        return err, None, None
    if not isinstance(err, dict):
        return "the upstream reported an error", None, None
    message = err.get("message")
    if not isinstance(message, str) or not message:
        message = "the upstream reported an error"
    code = err.get("code")
    status: int | None = None
    if isinstance(code, int) and not isinstance(code, bool):
        status = code if 100 <= code <= 599 else None
        code = None if status is not None else str(code)
    if not isinstance(code, str) or not code:
        kind = err.get("type")
        code = kind if isinstance(kind, str) and kind else None
    if status is None:
        raw_status = err.get("status")
        if isinstance(raw_status, int) and 100 <= raw_status <= 599:
            status = raw_status
    return message, code, status
