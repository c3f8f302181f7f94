"""What the mock upstream says, chunk by chunk: a request body and server defaults become bytes.

:meth:`Script.from_request` reads the OpenAI fields that shape a reply (``model``,
``n``, ``stream``, ``stream_options.include_usage``) and the mock's own options from
the extra top-level field ``"mock"`` (what the OpenAI SDK sends with
``extra_body={"mock": {...}}``; see :mod:`streamfan.mock.options`). What each choice
says comes from :mod:`streamfan.mock.reply`; this module cuts it into
``chat.completion.chunk`` objects, times them, and encodes them. The result is
deterministic: the same body and defaults give the same chunks, byte for byte, and
:meth:`Script.expected_message` and :attr:`Script.expected_usage` say what a correct
client assembles from them.

:meth:`Script.plan` turns the chunks into timed SSE byte strings plus how the body
ends (a :class:`~streamfan.mock.plan.Plan`), with the requested fault applied.
Nothing here does I/O or reads a clock: the server (:mod:`streamfan.mock.respond`,
:mod:`streamfan.mock.pacer`) only executes the plan.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import orjson

from streamfan.mock.options import DEFAULT_STREAM_ERROR, Defaults, Fault, Options, parse_options
from streamfan.mock.plan import Ending, Plan, coalesce
from streamfan.mock.reply import Choice, ExpectedMessage, build_choices, build_usage
from streamfan.mock.text import count_prompt_tokens

SYSTEM_FINGERPRINT = "fp_mock"
#: The data of the ``malformed`` fault's event: JSON cut short, as a broken proxy might.
MALFORMED_DATA = b'{"id": "chatcmpl-mock", "choices": [{"delta": {"content": "oops'
BOM = b"\xef\xbb\xbf"


class _Item(NamedTuple):
    """One chunk: its due second, choice index (-1: empty choices; ``delta`` is then
    the whole chunk), delta, finish_reason, and whether it is the last with a choice."""

    at: float
    choice: int
    delta: dict[str, Any]
    finish: str | None
    last: bool


class Script:
    """One request's reply: chunks, timing, usage and fault. Build with :meth:`from_request`.

    Building one is cheap whatever the reply's length: chunks are made and encoded
    as they are needed, so a burst of a thousand requests does not delay the first
    token of each by the encoding of all the others.
    """

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
        self._choices = build_choices(options)
        self.usage: dict[str, Any] | None = build_usage(options, prompt_tokens, self._choices)
        # Every choice streams side by side; the reply lasts as long as the longest.
        longest = max((c.tokens for c in self._choices), default=0)
        rate = options.tokens_per_s
        self.duration_s = options.ttft_s + (max(longest - 1, 0) / rate if rate else 0.0)
        self._prefix = b"".join(
            (
                b'{"id":',
                orjson.dumps(completion_id),
                b',"object":"chat.completion.chunk","created":',
                orjson.dumps(created),
                b',"model":',
                orjson.dumps(self.model),
                b',"system_fingerprint":',
                orjson.dumps(SYSTEM_FINGERPRINT),
                b',"choices":[{"index":',
            )
        )
        self._suffix = b"}]" + (b',"usage":null}' if self._usage_nulls else b"}")

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

    def expected_message(self, index: int = 0) -> ExpectedMessage:
        """The message a client should assemble for choice ``index`` (fault or not)."""
        return self._choices[index].expected()

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

    @property
    def _usage_nulls(self) -> bool:
        # OpenAI sends an explicit "usage": null on every chunk before the usage one.
        return self.include_usage and self.usage is not None

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if self._usage_nulls:
            chunk["usage"] = None
        return chunk

    def _choice_steps(self, c: Choice) -> Iterator[tuple[float, dict[str, Any], str | None]]:
        """(due second, delta, finish_reason) of each chunk of one choice, in order."""
        o = self.options
        per, rate, ttft = o.chunk_tokens, o.tokens_per_s, o.ttft_s
        seen = 0

        def at() -> float:
            # Token k of a choice is generated at ttft + k/rate; a chunk leaves with its
            # last token. Choices are generated side by side, as n>1 does.
            return ttft + (max(seen - 1, 0) / rate if rate else 0.0)

        content = None if c.content is None else ""
        yield at(), {"role": "assistant", "content": content, "refusal": None}, None
        texts = ((c.reasoning, "reasoning_content"), (c.refusal, "refusal"))
        for tokens, key in (*texts, (c.content or (), "content")):
            for i in range(0, len(tokens), per):
                group = tokens[i : i + per]
                seen += len(group)
                yield at(), {key: "".join(group)}, None
        for n, (call_id, name, args) in enumerate(c.tool_calls):
            seen += 1  # the name
            head = {"index": n, "id": call_id, "type": "function"}
            head["function"] = {"name": name, "arguments": ""}
            yield at(), {"tool_calls": [self._call_index(head)]}, None
            for i in range(0, len(args), per):
                group = args[i : i + per]
                seen += len(group)
                part = {"index": n, "function": {"arguments": "".join(group)}}
                yield at(), {"tool_calls": [self._call_index(part)]}, None
        yield at(), {}, c.finish_reason

    def _call_index(self, call: dict[str, Any]) -> dict[str, Any]:
        if self.options.omit_tool_call_index:
            call.pop("index")
        return call

    def _items(self) -> Iterator[_Item]:
        """Every chunk, in order, made as it is asked for."""
        o = self.options
        if o.prompt_filter_chunk:
            yield _Item(0.0, -1, _prompt_filter_chunk(), None, False)
        # Interleaved: step 0 of every choice, then step 1, ...
        active = [(c.index, self._choice_steps(c)) for c in self._choices]
        last, previous = 0.0, None
        while active:
            still = []
            for index, steps in active:
                step = next(steps, None)
                if step is None:
                    continue
                still.append((index, steps))
                last = max(last, step[0])  # kept monotonic across interleaved choices
                if previous is not None:
                    yield previous
                previous = _Item(last, index, step[1], step[2], False)
            active = still
        if previous is not None:
            yield previous._replace(last=True)  # usage may ride on it (a quirk)
        if self._usage_nulls and not o.usage_in_last_choice_chunk:
            final = self._chunk([])
            final["usage"] = self.usage
            yield _Item(last, -1, final, None, False)

    def _chunk_of(self, item: _Item) -> dict[str, Any]:
        if item.choice < 0:
            return dict(item.delta)
        choice = {
            "index": item.choice,
            "delta": item.delta,
            "logprobs": None,
            "finish_reason": item.finish,
        }
        chunk = self._chunk([choice])
        if item.last and self.options.usage_in_last_choice_chunk and self.usage is not None:
            chunk["usage"] = self.usage
        return chunk

    def _encode(self, item: _Item) -> bytes:
        """The chunk's JSON, byte for byte ``orjson.dumps(self._chunk_of(item))``.

        Spliced from the reply's prefix and the delta rather than dumping a whole
        dict: the mock encodes tens of thousands of chunks a second in benchmarks.
        """
        if item.choice < 0 or item.last:
            return orjson.dumps(self._chunk_of(item))
        finish = b"null" if item.finish is None else orjson.dumps(item.finish)
        return b'%s%d,"delta":%s,"logprobs":null,"finish_reason":%s%s' % (
            self._prefix,
            item.choice,
            orjson.dumps(item.delta),
            finish,
            self._suffix,
        )

    def chunks(self) -> list[dict[str, Any]]:
        """The chunk objects of a fault-free stream, in order."""
        return [self._chunk_of(item) for item in self._items()]

    def timed_chunks(self) -> list[tuple[float, dict[str, Any]]]:
        """Each chunk with the second (after the response began) it is due."""
        return [(item.at, self._chunk_of(item)) for item in self._items()]

    # --- bytes --------------------------------------------------------------------

    def event(self, payload: bytes) -> bytes:
        """One SSE event: ``data: payload`` and a blank line."""
        return b"data: " + payload + (b"\r\n\r\n" if self.options.crlf else b"\n\n")

    @property
    def keepalive(self) -> bytes:
        return b": keep-alive" + (b"\r\n\r\n" if self.options.crlf else b"\n\n")

    def sse_body(self) -> bytes:
        """The whole fault-free streaming body."""
        return b"".join(send.data for send in self.plan(fault_active=False))

    def plan(self, *, fault_active: bool) -> Plan:
        """The timed writes of the streaming body, with the fault applied if active."""
        fault = self.fault if fault_active else None
        kind = fault.kind if fault is not None else ""
        ending = {"drop": Ending.DROP, "reset": Ending.RESET, "stall": Ending.STALL}
        return Plan(lambda: coalesce(self._events(fault)), ending.get(kind, Ending.END))

    def _events(self, fault: Fault | None) -> Iterator[tuple[float, bytes, int]]:
        """(due second, bytes, chunk objects in them) of the body, fault applied."""
        o = self.options
        end = b"\r\n\r\n" if o.crlf else b"\n\n"
        kind = fault.kind if fault is not None else None
        if o.bom or kind == "bom":
            yield 0.0, BOM, 0
        cut = fault is not None and kind not in ("bom", "http")
        after = fault.after if fault is not None and cut else -1
        items = self._items()
        at, sent, pending = o.ttft_s, 0, None
        for item in items:
            # The fault hits after `after` chunks; truncate also stops before the
            # first finish_reason, so the body ends "cleanly" but early.
            if sent == after or (kind == "truncate" and item.finish):
                pending = item
                break
            yield item.at, b"data: " + self._encode(item) + end, 1
            at, sent = item.at, sent + 1
        if kind == "malformed":
            yield at, self.event(MALFORMED_DATA), 0
            if pending is not None:
                for item in itertools.chain((pending,), items):
                    yield item.at, b"data: " + self._encode(item) + end, 1
                    at = item.at
        elif kind == "error_chunk":
            assert fault is not None
            error = {**DEFAULT_STREAM_ERROR, **(fault.error or {})}
            yield at, self.event(orjson.dumps({"error": error})), 0
        if (not cut or kind == "malformed") and not o.omit_done:
            yield at, self.event(b"[DONE]"), 0


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
