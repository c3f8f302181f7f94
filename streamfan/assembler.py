"""Events → the reply: an assistant message per choice, or an OpenAI ``ChatCompletion``.

:class:`Assembler` is fed a stream's events in order (pure, no I/O) and keeps,
per choice index, what the deltas built:

- ``role`` (the last one sent), ``content``, ``refusal``, ``reasoning_content``
  and ``reasoning`` (strings concatenated; None until one was sent);
- ``tool_calls`` merged by ``index``: ``id``, ``type`` and ``function.name`` are
  set by the first piece that has them, ``function.arguments`` concatenated.
  Upstreams that omit ``index`` are coped with: the ``id`` finds (or starts) the
  call, and a piece with neither continues the last call. A piece whose
  ``index`` is taken by a call with a different ``id`` starts a new call (some
  providers number every parallel call 0);
- the legacy ``function_call`` the same way; ``finish_reason``; the
  ``logprobs`` ``content`` and ``refusal`` lists concatenated.

``reset`` drops everything built so far (a new attempt starts over). ``usage``
comes from ``usage`` events and ``done``; the terminal event sets
:attr:`Assembler.status` and, for ``error``, :attr:`Assembler.error`.
Fields of a delta not listed above are not part of the message.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamfan import events
from streamfan.events import Event

_TEXT_FIELDS = ("content", "refusal", "reasoning_content", "reasoning")


class _Call:
    __slots__ = ("args", "id", "index", "name", "type")

    def __init__(self, index: int | None, call_id: str | None) -> None:
        self.index = index
        self.id = call_id
        self.type: str | None = None
        self.name: str | None = None
        self.args: list[str] = []

    def merge(self, piece: dict[str, Any]) -> None:
        if self.id is None and isinstance(piece.get("id"), str):
            self.id = piece["id"]
        if self.type is None and isinstance(piece.get("type"), str):
            self.type = piece["type"]
        function = piece.get("function")
        if isinstance(function, dict):
            self.merge_function(function)

    def merge_function(self, function: dict[str, Any]) -> None:
        name = function.get("name")
        if self.name is None and isinstance(name, str) and name:
            self.name = name
        args = function.get("arguments")
        if isinstance(args, str):
            self.args.append(args)
        elif args is not None:
            # Some servers send the arguments as an object; OpenAI's shape is a string.
            self.args.append(orjson.dumps(args).decode())

    def function(self) -> dict[str, Any]:
        return {"name": self.name or "", "arguments": "".join(self.args)}

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type or "function", "function": self.function()}


class _Choice:
    __slots__ = (
        "by_id",
        "by_index",
        "calls",
        "finish_reason",
        "function_call",
        "logprobs",
        "role",
        "text",
    )

    def __init__(self) -> None:
        self.role: str | None = None
        self.text: dict[str, list[str]] = {}
        self.calls: list[_Call] = []
        self.by_index: dict[int, _Call] = {}
        self.by_id: dict[str, _Call] = {}
        self.function_call: _Call | None = None
        self.finish_reason: str | None = None
        self.logprobs: dict[str, list[Any] | None] | None = None

    def feed(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict) and delta:
            role = delta.get("role")
            if isinstance(role, str) and role:
                self.role = role
            for name in _TEXT_FIELDS:
                piece = delta.get(name)
                if isinstance(piece, str):
                    parts = self.text.get(name)
                    if parts is None:
                        self.text[name] = [piece]
                    else:
                        parts.append(piece)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for piece in calls:
                    if isinstance(piece, dict):
                        self._call_for(piece).merge(piece)
            legacy = delta.get("function_call")
            if isinstance(legacy, dict):
                if self.function_call is None:
                    self.function_call = _Call(None, None)
                self.function_call.merge_function(legacy)
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            self.finish_reason = reason
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            self._merge_logprobs(logprobs)

    def _call_for(self, piece: dict[str, Any]) -> _Call:
        index = piece.get("index")
        call_id = piece.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = None
        if isinstance(index, int):
            call = self.by_index.get(index)
            if call is not None and (call_id is None or call.id in (None, call_id)):
                return call
        elif call_id is not None:
            call = self.by_id.get(call_id)
            if call is not None:
                return call
        elif self.calls:
            return self.calls[-1]
        call = _Call(index if isinstance(index, int) else None, call_id)
        self.calls.append(call)
        if call.index is not None:
            self.by_index[call.index] = call
        if call_id is not None:
            self.by_id[call_id] = call
        return call

    def _merge_logprobs(self, logprobs: dict[str, Any]) -> None:
        if self.logprobs is None:
            self.logprobs = {"content": None, "refusal": None}
        for name in ("content", "refusal"):
            items = logprobs.get(name)
            if isinstance(items, list):
                have = self.logprobs[name]
                if have is None:
                    self.logprobs[name] = list(items)
                else:
                    have.extend(items)

    def message(self) -> dict[str, Any]:
        text = self.text
        content = text.get("content")
        msg: dict[str, Any] = {
            "role": self.role or "assistant",
            "content": None if content is None else "".join(content),
        }
        for name in ("refusal", "reasoning_content", "reasoning"):
            parts = text.get(name)
            if parts is not None:
                msg[name] = "".join(parts)
        if self.calls:
            msg["tool_calls"] = [call.as_dict() for call in self.calls]
        if self.function_call is not None:
            msg["function_call"] = self.function_call.function()
        return msg


class Assembler:
    """Feed a stream's events in order; read the reply at any point."""

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        #: The last ``usage`` object seen (``usage`` events, then ``done``'s).
        self.usage: dict[str, Any] | None = None
        #: ``done``, ``error`` or ``cancelled`` once the terminal event arrived, else None.
        self.status: str | None = None
        #: The terminal event itself, once it arrived.
        self.terminal: Event | None = None
        #: The ``error`` event's fields (code, message, retryable, upstream_status).
        self.error: dict[str, Any] | None = None
        #: The attempt the events belong to (from ``start`` and ``reset``).
        self.attempt = 0
        #: The reply's model, from ``start``.
        self.model: str | None = None
        self._done_reason: str | None = None

    def feed(self, event: Event) -> None:
        etype = event.get("type")
        if etype == events.DELTA:
            choices = self._choices
            for pos, choice in enumerate(event.get("choices") or ()):
                if not isinstance(choice, dict):
                    continue
                index = choice.get("index", pos)
                if not isinstance(index, int):
                    index = pos
                state = choices.get(index)
                if state is None:
                    state = choices[index] = _Choice()
                state.feed(choice)
        elif etype == events.USAGE:
            usage = event.get("usage")
            if isinstance(usage, dict):
                self.usage = usage
        elif etype == events.START:
            self.attempt = event.get("attempt", self.attempt)
            self.model = event.get("model", self.model)
        elif etype == events.RESET:
            self._choices = {}
            self.usage = None
            self.attempt = event.get("attempt", self.attempt)
        elif etype in events.TERMINAL_TYPES:
            self.terminal = event
            self.status = events.TERMINAL_STATUS[etype]
            if etype == events.DONE:
                self._done_reason = event.get("finish_reason")
                if isinstance(event.get("usage"), dict):
                    self.usage = event["usage"]
            elif etype == events.ERROR:
                self.error = {k: v for k, v in event.items() if k != "type"}

    @property
    def finished(self) -> bool:
        return self.terminal is not None

    @property
    def indexes(self) -> list[int]:
        """The choice indexes that received deltas, in order."""
        return sorted(self._choices)

    def message(self, choice: int = 0) -> dict[str, Any]:
        """The assistant message of ``choice`` (OpenAI's shape; empty if none arrived)."""
        state = self._choices.get(choice)
        if state is None:
            return {"role": "assistant", "content": None}
        return state.message()

    @property
    def text(self) -> str:
        """Choice 0's content, or "" when there is none."""
        state = self._choices.get(0)
        parts = state.text.get("content") if state is not None else None
        return "".join(parts) if parts else ""

    @property
    def finish_reason(self) -> str | None:
        """Choice 0's finish_reason (``done``'s when the stream finished)."""
        if self._done_reason is not None:
            return self._done_reason
        state = self._choices.get(0)
        return state.finish_reason if state is not None else None

    def choice_finish_reason(self, choice: int) -> str | None:
        state = self._choices.get(choice)
        return state.finish_reason if state is not None else None

    def logprobs(self, choice: int = 0) -> dict[str, Any] | None:
        state = self._choices.get(choice)
        if state is None or state.logprobs is None:
            return None
        return {k: None if v is None else v.copy() for k, v in state.logprobs.items()}

    def chat_completion(self, stream_id: str, model: str, created: int) -> dict[str, Any]:
        """The reply as an OpenAI ``ChatCompletion`` dict (choice 0 is always present)."""
        indexes = self.indexes or [0]
        if 0 not in indexes:
            indexes.insert(0, 0)
        return {
            "id": stream_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": self.message(i),
                    "finish_reason": self.finish_reason if i == 0 else self.choice_finish_reason(i),
                    "logprobs": self.logprobs(i),
                }
                for i in indexes
            ],
            "usage": self.usage,
        }
