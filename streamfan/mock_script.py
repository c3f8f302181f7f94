"""What the mock upstream says: a request body and server defaults become exact chunks (pure).

:meth:`Script.from_request` reads the OpenAI fields that shape a reply (``model``,
``n``, ``stream``, ``stream_options.include_usage``) and the mock's own options from
the extra top-level field ``"mock"`` (what the OpenAI SDK sends with
``extra_body={"mock": {...}}``). The result is deterministic: the same body and
defaults give the same chunks, byte for byte, and :meth:`Script.expected_message`
and :attr:`Script.expected_usage` say what a correct client assembles from them.

:meth:`Script.plan` turns the chunks into timed SSE byte strings plus how the body
ends, with the requested fault applied. Nothing here does I/O or reads a clock:
``mock_upstream`` only executes the plan.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from streamfan.mock_options import (
    DEFAULT_MODEL,
    DEFAULT_STREAM_ERROR,
    Defaults,
    Fault,
    MockOptionError,
    Options,
    parse_options,
)
from streamfan.mock_text import count_prompt_tokens, generate_tokens, tokenize

__all__ = [
    "DEFAULT_MODEL",
    "Defaults",
    "Ending",
    "ExpectedMessage",
    "Fault",
    "MockOptionError",
    "Plan",
    "Script",
    "Send",
    "generate_tokens",
    "tokenize",
]

SYSTEM_FINGERPRINT = "fp_mock"
#: The data of the ``malformed`` fault's event: JSON cut short, as a broken proxy might.
MALFORMED_DATA = b'{"id": "chatcmpl-mock", "choices": [{"delta": {"content": "oops'
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class ExpectedMessage:
    """What a correct client assembles for one choice."""

    content: str | None
    reasoning_content: str | None
    refusal: str | None
    tool_calls: tuple[Mapping[str, Any], ...]
    finish_reason: str

    def as_message(self) -> dict[str, Any]:
        """The OpenAI ``message`` object (as in a non-streaming ``chat.completion``)."""
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.content,
            "refusal": self.refusal,
        }
        if self.reasoning_content is not None:
            message["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            message["tool_calls"] = [dict(call) for call in self.tool_calls]
        return message


class Ending(enum.Enum):
    """How the response body ends once every :class:`Send` was written."""

    END = "end"  # the terminating chunk: a clean end of the body
    DROP = "drop"  # close the connection without ending the body
    RESET = "reset"  # close with a TCP RST
    STALL = "stall"  # send nothing more (keep-alive comments aside) until the client leaves


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes to write ``at`` seconds after the response started; ``chunks`` chunk objects."""

    at: float
    data: bytes
    chunks: int


@dataclass(frozen=True, slots=True)
class Plan:
    sends: tuple[Send, ...]
    ending: Ending


#: (due second, choice index or -1, delta (or the whole chunk if -1), finish_reason)
_Timed = tuple[float, int, dict[str, Any], str | None]


@dataclass(frozen=True, slots=True)
class _Choice:
    index: int
    content: tuple[str, ...] | None
    reasoning: tuple[str, ...]
    refusal: tuple[str, ...]
    tool_calls: tuple[tuple[str, str, tuple[str, ...]], ...]  # (id, name, argument pieces)
    finish_reason: str


class Script:
    """One request's reply: chunks, timing, usage and fault. Build with :meth:`from_request`."""

    def __init__(
        self, options: Options, *, prompt_tokens: int, completion_id: str, created: int
    ) -> None:
        self.options = options
        self.completion_id = completion_id
        self.created = created
        self.model = options.model
        self.stream = options.stream
        self.include_usage = options.include_usage
        self.n = options.n
        self.fault: Fault | None = options.fault
        self._choices = tuple(self._build_choice(i) for i in range(options.n))
        completion = sum(self._choice_tokens(c) for c in self._choices)
        reasoning = sum(len(c.reasoning) for c in self._choices)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
        if options.usage_overrides:
            usage.update(options.usage_overrides)
            if "total_tokens" not in options.usage_overrides:
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        self.usage: dict[str, Any] | None = usage if options.send_usage else None
        self._timed = self._timed_chunks()
        self._last_choice_chunk = max(
            (i for i, item in enumerate(self._timed) if item[1] >= 0), default=-1
        )

    @classmethod
    def from_request(
        cls,
        body: Mapping[str, Any],
        defaults: Defaults | None = None,
        *,
        completion_id: str = "chatcmpl-mock",
        created: int = 0,
    ) -> Script:
        """Read ``body`` (raises :class:`MockOptionError` on a bad option)."""
        return cls(
            parse_options(body, defaults or Defaults()),
            prompt_tokens=count_prompt_tokens(body.get("messages")),
            completion_id=completion_id,
            created=created,
        )

    # --- the reply --------------------------------------------------------------

    def _build_choice(self, index: int) -> _Choice:
        o = self.options
        content: tuple[str, ...] | None = None
        if o.reply is not None:
            content = tuple(tokenize(o.reply[index]))
        elif o.reply_tokens is not None:
            content = tuple(generate_tokens(o.reply_tokens, o.seed + index))
        calls = tuple(
            (call.id or f"call_mock_{index}_{i}", call.name, tuple(tokenize(call.arguments)))
            for i, call in enumerate(o.tool_calls)
        )
        finish = o.finish_reason or ("tool_calls" if calls else "stop")
        return _Choice(
            index=index,
            content=content,
            reasoning=tuple(tokenize(o.reasoning[index])) if o.reasoning else (),
            refusal=tuple(tokenize(o.refusal[index])) if o.refusal else (),
            tool_calls=calls,
            finish_reason=finish,
        )

    @staticmethod
    def _choice_tokens(c: _Choice) -> int:
        # A tool call's name counts as one token, like its header chunk.
        calls = sum(1 + len(pieces) for _, _, pieces in c.tool_calls)
        return len(c.content or ()) + len(c.reasoning) + len(c.refusal) + calls

    def expected_message(self, index: int = 0) -> ExpectedMessage:
        """The message a client should assemble for choice ``index`` (fault or not)."""
        c = self._choices[index]
        return ExpectedMessage(
            content=None if c.content is None else "".join(c.content),
            reasoning_content="".join(c.reasoning) if c.reasoning else None,
            refusal="".join(c.refusal) if c.refusal else None,
            tool_calls=tuple(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": "".join(pieces)},
                }
                for call_id, name, pieces in c.tool_calls
            ),
            finish_reason=c.finish_reason,
        )

    @property
    def expected_usage(self) -> dict[str, Any] | None:
        """The usage object the stream reports, or None if it reports none."""
        if self.usage is None:
            return None
        if self.include_usage or self.options.usage_in_last_choice_chunk:
            return self.usage
        return None

    def completion(self) -> dict[str, Any]:
        """The non-streaming ``chat.completion`` object."""
        body: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {
                    "index": i,
                    "message": self.expected_message(i).as_message(),
                    "logprobs": None,
                    "finish_reason": self._choices[i].finish_reason,
                }
                for i in range(self.n)
            ],
        }
        if self.usage is not None:
            body["usage"] = self.usage
        return body

    # --- chunks -------------------------------------------------------------------

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if self.include_usage and self.usage is not None:
            chunk["usage"] = None  # OpenAI sends an explicit null until the last chunk
        return chunk

    def _choice_deltas(self, c: _Choice) -> list[tuple[int, dict[str, Any], str | None]]:
        """(tokens carried, delta, finish_reason) for each chunk of one choice, in order."""
        per = self.options.chunk_tokens
        out: list[tuple[int, dict[str, Any], str | None]] = []
        first: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if c.content is not None:
            first["content"] = ""
        out.append((0, first, None))

        def pieces(tokens: tuple[str, ...], key: str) -> None:
            for i in range(0, len(tokens), per):
                group = tokens[i : i + per]
                out.append((len(group), {key: "".join(group)}, None))

        pieces(c.reasoning, "reasoning_content")
        pieces(c.refusal, "refusal")
        pieces(c.content or (), "content")
        for n, (call_id, name, args) in enumerate(c.tool_calls):
            head = {
                "index": n,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            out.append((1, {"tool_calls": [self._call_index(head)]}, None))
            for i in range(0, len(args), per):
                group = args[i : i + per]
                part = {"index": n, "function": {"arguments": "".join(group)}}
                out.append((len(group), {"tool_calls": [self._call_index(part)]}, None))
        out.append((0, {}, c.finish_reason))
        return out

    def _call_index(self, call: dict[str, Any]) -> dict[str, Any]:
        if self.options.omit_tool_call_index:
            call.pop("index")
        return call

    def _timed_chunks(self) -> list[_Timed]:
        """Every chunk, as (due second, choice index, delta, finish_reason), in order.

        Index -1 marks a chunk with empty ``choices`` (the prompt-filter notice, or the
        usage chunk, whose delta slot holds the chunk itself).
        """
        o = self.options
        rate = o.tokens_per_s
        merged: list[tuple[int, int, float, dict[str, Any], str | None]] = []
        for c in self._choices:
            seen = 0
            for step, (tokens, delta, finish) in enumerate(self._choice_deltas(c)):
                seen += tokens
                # Token k of a choice is generated at ttft + k/rate; a chunk leaves with
                # its last token. Choices are generated side by side, as n>1 does.
                at = o.ttft_s + (max(seen - 1, 0) / rate if rate else 0.0)
                merged.append((step, c.index, at, delta, finish))
        if self.n > 1:
            # Interleave: step 0 of every choice, then step 1, ...
            merged.sort(key=lambda item: (item[0], item[1]))
        out: list[_Timed] = []
        if o.prompt_filter_chunk:
            out.append((0.0, -1, _prompt_filter_chunk(), None))
        last = 0.0
        for _step, index, at, delta, finish in merged:
            last = max(last, at)  # kept monotonic across interleaved choices
            out.append((last, index, delta, finish))
        if self.usage is not None and self.include_usage and not o.usage_in_last_choice_chunk:
            final = self._chunk([])
            final["usage"] = self.usage
            out.append((last, -1, final, None))
        return out

    def _chunk_of(self, i: int) -> dict[str, Any]:
        _at, index, delta, finish = self._timed[i]
        if index < 0:
            return dict(delta)
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        chunk = self._chunk([choice])
        if i == self._last_choice_chunk and self.options.usage_in_last_choice_chunk:
            chunk["usage"] = self.usage
        return chunk

    def _encode_chunks(self) -> list[bytes]:
        """The JSON of every chunk, byte for byte ``orjson.dumps(chunk)``.

        Spliced from a per-reply prefix and each delta rather than dumping whole
        dicts: the mock encodes thousands of chunks per second for benchmarks.
        """
        prefix = b"".join(
            (
                b'{"id":',
                orjson.dumps(self.completion_id),
                b',"object":"chat.completion.chunk","created":',
                orjson.dumps(self.created),
                b',"model":',
                orjson.dumps(self.model),
                b',"system_fingerprint":',
                orjson.dumps(SYSTEM_FINGERPRINT),
                b',"choices":[{"index":',
            )
        )
        tail = b"}]" + (b',"usage":null}' if self.include_usage and self.usage else b"}")
        out = []
        for i, (_at, index, delta, finish) in enumerate(self._timed):
            if index < 0 or i == self._last_choice_chunk:
                out.append(orjson.dumps(self._chunk_of(i)))
                continue
            finish_json = b"null" if finish is None else orjson.dumps(finish)
            out.append(
                b'%s%d,"delta":%s,"logprobs":null,"finish_reason":%s%s'
                % (prefix, index, orjson.dumps(delta), finish_json, tail)
            )
        return out

    def chunks(self) -> list[dict[str, Any]]:
        """The chunk objects of a fault-free stream, in order."""
        return [self._chunk_of(i) for i in range(len(self._timed))]

    def timed_chunks(self) -> list[tuple[float, dict[str, Any]]]:
        """Each chunk with the second (after the response began) it is due."""
        return [(self._timed[i][0], self._chunk_of(i)) for i in range(len(self._timed))]

    @property
    def duration_s(self) -> float:
        """When the last chunk is due (the whole reply's generation time)."""
        return self._timed[-1][0] if self._timed else self.options.ttft_s

    # --- bytes --------------------------------------------------------------------

    def event(self, payload: bytes) -> bytes:
        """One SSE event: ``data: payload`` and a blank line."""
        return b"data: " + payload + (b"\r\n\r\n" if self.options.crlf else b"\n\n")

    @property
    def keepalive(self) -> bytes:
        eol = b"\r\n" if self.options.crlf else b"\n"
        return b": keep-alive" + eol + eol

    def sse_body(self) -> bytes:
        """The whole fault-free streaming body."""
        return b"".join(send.data for send in self.plan(fault_active=False).sends)

    def plan(self, *, fault_active: bool) -> Plan:
        """The timed writes of the streaming body, with the fault applied if active."""
        o = self.options
        end = b"\r\n\r\n" if o.crlf else b"\n\n"
        events = [
            (item[0], b"data: " + data + end, 1)
            for item, data in zip(self._timed, self._encode_chunks(), strict=True)
        ]
        end_at = events[-1][0] if events else o.ttft_s
        tail: list[tuple[float, bytes, int]] = []
        if not o.omit_done:
            tail.append((end_at, self.event(b"[DONE]"), 0))
        ending = Ending.END
        fault = self.fault if fault_active else None
        kind = fault.kind if fault else None
        if fault is not None and kind not in ("bom", "http"):
            after = min(fault.after, len(events))
            at = events[after - 1][0] if after else o.ttft_s
            if kind == "truncate":
                # Cut before the first finish_reason: the body ends "cleanly" but early.
                first_finish = next(
                    (i for i, item in enumerate(self._timed) if item[3]), len(events)
                )
                events, tail = events[: min(after, first_finish)], []
            elif kind == "malformed":
                events.insert(after, (at, self.event(MALFORMED_DATA), 0))
            elif kind == "error_chunk":
                error = orjson.dumps({"error": {**DEFAULT_STREAM_ERROR, **(fault.error or {})}})
                events, tail = [*events[:after], (at, self.event(error), 0)], []
            else:  # drop, reset, stall
                events, tail = events[:after], []
                ending = {"drop": Ending.DROP, "reset": Ending.RESET}.get(kind or "", Ending.STALL)
        events.extend(tail)
        if o.bom or kind == "bom":
            events.insert(0, (0.0, BOM, 0))
        # Writes due at the same moment go out together (one join per group, not a
        # quadratic chain of concatenations: a 0 tokens/s reply is a single group).
        sends = []
        for at, same in itertools.groupby(events, key=lambda event: event[0]):
            group = list(same)
            sends.append(Send(at, b"".join(e[1] for e in group), sum(e[2] for e in group)))
        return Plan(tuple(sends), ending)


def _prompt_filter_chunk() -> dict[str, Any]:
    # What Azure OpenAI sends first: empty choices, no usage, its own fields.
    return {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": [
            {
                "prompt_index": 0,
                "content_filter_results": {
                    "hate": {"filtered": False, "severity": "safe"},
                    "self_harm": {"filtered": False, "severity": "safe"},
                },
            }
        ],
    }
