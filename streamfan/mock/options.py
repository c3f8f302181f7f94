"""The mock upstream's options: server-wide :class:`Defaults` and the per-request ``mock`` field.

:func:`parse_options` validates everything a request body may say to the mock and
returns one frozen :class:`Options`; a bad value raises :class:`MockOptionError`
naming the option (the server answers 400). Unknown ``mock`` keys are errors too,
so a typo in a test fails loudly instead of silently testing the default.
Pure: no I/O.

The ``mock`` field (``extra_body={"mock": {...}}`` with the OpenAI SDK)::

    reply           text of the reply; or a list, one text per choice
    reply_tokens    a generated lorem-style reply of N tokens (with é, 中, 🙂)
    seed            varies the generated text (choice i uses seed + i)
    reasoning       streamed as reasoning_content before the content (str or list)
    refusal         streamed as refusal; no content unless reply is given (str or list)
    tool_calls      [{name, arguments (str or object), id?}]; arguments split over
                    chunks; finish_reason "tool_calls"; no content unless reply is given
    finish_reason   overrides "stop" / "tool_calls"
    usage           false: never send usage; {...}: override fields (total recomputed)
    n, model        override the body's n and the echoed model name
    tokens_per_s    token rate per choice (0: as fast as possible)
    ttft_ms         delay of the first token (headers are sent at once)
    chunk_tokens    tokens per chunk
    headers_delay_ms  delay before the response headers
    keepalive_ms    ": keep-alive" comments after this much silence, also while stalled
    fault           http_4xx/http_5xx (http_429 has Retry-After), drop (FIN mid-body),
                    reset (RST), stall, malformed, error_chunk, truncate, bom
    after           chunks sent before a mid-stream fault (default 2)
    retry_after     Retry-After of an HTTP fault (seconds or an HTTP date)
    error           {message, type, code} of an error_chunk or HTTP fault body
    fault_key       names the job: counts its attempts; requests are found by it
    fault_times     apply the fault to attempts 1..K of fault_key only
    split_bytes     write the body in N-byte pieces; split_delay_ms between them
    crlf, bom       CRLF line endings; a UTF-8 BOM before the body
    omit_done       no "data: [DONE]" at the end
    omit_tool_call_index  tool-call deltas without "index" (a provider quirk)
    usage_in_last_choice_chunk  usage on the finish chunk, no separate usage chunk
    prompt_filter_chunk  an Azure-style first chunk with empty choices
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from streamfan.errors import StreamfanError

DEFAULT_MODEL = "mock-gpt"
DEFAULT_REPLY_TOKENS = 64
#: Chunks sent before a mid-stream fault, unless ``after`` says otherwise: the role
#: chunk and one token, so the fault hits a stream that has visibly begun.
DEFAULT_FAULT_AFTER = 2
DEFAULT_RETRY_AFTER = "1"
MAX_N = 128
#: Tokens across all choices: the whole reply is encoded up front, so bound it.
MAX_TOTAL_TOKENS = 1_000_000
DEFAULT_STREAM_ERROR: Mapping[str, Any] = {
    "message": "The server had an error while processing your request. Sorry about that!",
    "type": "server_error",
    "code": "mock_stream_error",
}

STREAM_FAULTS = frozenset({"drop", "reset", "stall", "malformed", "error_chunk", "truncate"})
FAULTS = STREAM_FAULTS | {"bom"}
_HTTP_FAULT = re.compile(r"http_([45]\d\d)")

KNOWN_OPTIONS = frozenset({
    "reply", "reply_tokens", "seed", "reasoning", "refusal", "tool_calls", "finish_reason",
    "usage", "n", "model", "tokens_per_s", "ttft_ms", "chunk_tokens", "headers_delay_ms",
    "keepalive_ms", "fault", "after", "retry_after", "fault_times", "fault_key", "error",
    "split_bytes", "split_delay_ms", "crlf", "bom", "omit_done", "omit_tool_call_index",
    "usage_in_last_choice_chunk", "prompt_filter_chunk",
})  # fmt: skip


class MockOptionError(StreamfanError, ValueError):
    """A ``mock`` option (or an OpenAI field the mock reads) has a bad value."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        super().__init__(f"{option}: {message}")


@dataclass(frozen=True, slots=True)
class Defaults:
    """Server-wide defaults (the CLI flags); a request's ``mock`` field overrides them."""

    reply: str | None = None
    reply_tokens: int = DEFAULT_REPLY_TOKENS
    tokens_per_s: float = 0.0
    ttft_ms: float = 0.0
    chunk_tokens: int = 1
    keepalive_ms: float = 0.0
    model: str = DEFAULT_MODEL


@dataclass(frozen=True, slots=True)
class ToolCallSpec:
    name: str
    arguments: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    """What goes wrong, and for how many attempts of its ``fault_key``."""

    kind: str  # "http" or one of FAULTS
    after: int = DEFAULT_FAULT_AFTER
    status: int | None = None  # kind "http"
    retry_after: str | None = None  # the Retry-After header of an HTTP fault
    times: int | None = None  # apply to attempts 1..times only (None: always)
    # The error object of an error_chunk fault, or of an HTTP fault's body, if given.
    error: Mapping[str, Any] | None = None

    @property
    def name(self) -> str:
        """As written in ``mock.fault``: ``http_503``, ``drop``, ..."""
        return f"http_{self.status}" if self.kind == "http" else self.kind

    def applies(self, attempt: int) -> bool:
        """Whether the fault hits the ``attempt``-th request (1-based) of its key."""
        return self.times is None or attempt <= self.times


@dataclass(frozen=True, slots=True)
class Options:
    model: str
    stream: bool
    include_usage: bool
    n: int
    reply: tuple[str, ...] | None  # one text per choice
    reply_tokens: int | None
    seed: int
    reasoning: tuple[str, ...] | None
    refusal: tuple[str, ...] | None
    tool_calls: tuple[ToolCallSpec, ...]
    finish_reason: str | None
    send_usage: bool
    usage_overrides: Mapping[str, Any]
    tokens_per_s: float
    ttft_s: float
    chunk_tokens: int
    headers_delay_s: float
    keepalive_s: float
    fault: Fault | None
    fault_key: str | None
    split_bytes: int
    split_delay_s: float
    crlf: bool
    bom: bool
    omit_done: bool
    omit_tool_call_index: bool
    usage_in_last_choice_chunk: bool
    prompt_filter_chunk: bool


def _int(value: object, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MockOptionError(name, f"expected an integer {lo}..{hi}, got {value!r}")
    return value


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MockOptionError(name, f"expected a number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise MockOptionError(name, f"expected a number >= 0, got {value!r}")
    return float(value)


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise MockOptionError(name, f"expected true or false, got {value!r}")
    return value


def _str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise MockOptionError(name, f"expected a string, got {value!r}")
    return value


def _per_choice(value: object, name: str, n: int) -> tuple[str, ...] | None:
    """A string for every choice, or a list of one string per choice."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,) * n
    if isinstance(value, list) and len(value) == n and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise MockOptionError(name, f"expected a string or a list of {n} strings (one per choice)")


def _tool_calls(value: object) -> tuple[ToolCallSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MockOptionError("mock.tool_calls", "expected a list of {name, arguments}")
    calls = []
    for i, call in enumerate(value):
        where = f"mock.tool_calls[{i}]"
        if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
            raise MockOptionError(where, "expected an object with a string 'name'")
        arguments = call.get("arguments", "{}")
        if not isinstance(arguments, str):
            # An object is sent as its JSON text, as a model would write it.
            arguments = orjson.dumps(arguments).decode()
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise MockOptionError(where + ".id", "expected a string")
        calls.append(ToolCallSpec(call["name"], arguments, call_id))
    return tuple(calls)


def _fault(mock: Mapping[str, Any]) -> Fault | None:
    raw = mock.get("fault")
    if raw is None:
        for name in ("after", "retry_after", "fault_times", "error"):
            if name in mock:
                raise MockOptionError("mock." + name, "needs mock.fault")
        return None
    name = _str(raw, "mock.fault")
    match = _HTTP_FAULT.fullmatch(name)
    if match is None and name not in FAULTS:
        raise MockOptionError(
            "mock.fault", f"unknown fault {name!r}: expected http_4xx/http_5xx or one of "
            + ", ".join(sorted(FAULTS))
        )  # fmt: skip
    times = None
    if "fault_times" in mock:
        times = _int(mock["fault_times"], "mock.fault_times", 0, 1_000_000)
        if not isinstance(mock.get("fault_key"), str):
            raise MockOptionError("mock.fault_times", "needs mock.fault_key to count attempts")
    retry_after = mock.get("retry_after")
    if retry_after is not None:
        if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
            retry_after = f"{_number(retry_after, 'mock.retry_after'):g}"
        else:
            retry_after = _str(retry_after, "mock.retry_after")  # e.g. an HTTP date
    elif name == "http_429":
        retry_after = DEFAULT_RETRY_AFTER
    error = mock.get("error")
    if error is not None and not isinstance(error, Mapping):
        raise MockOptionError("mock.error", "expected an object {message, type, code}")
    return Fault(
        kind="http" if match else name,
        after=_int(mock.get("after", DEFAULT_FAULT_AFTER), "mock.after", 0, 10**9),
        status=int(match.group(1)) if match else None,
        retry_after=retry_after,
        times=times,
        error=dict(error) if error else None,
    )


def parse_options(body: Mapping[str, Any], defaults: Defaults) -> Options:
    """Validate ``body`` (a chat request) and its ``mock`` field against ``defaults``."""
    mock = body.get("mock")
    if mock is None:
        mock = {}
    if not isinstance(mock, Mapping):
        raise MockOptionError("mock", "expected an object")
    unknown = sorted(set(mock) - KNOWN_OPTIONS)
    if unknown:
        raise MockOptionError("mock", f"unknown option(s) {', '.join(map(repr, unknown))}")

    def get(name: str, default: Any = None) -> Any:
        return mock.get(name, default)

    model = _str(get("model", body.get("model", defaults.model)), "model")
    n = _int(get("n", body.get("n", 1)), "n", 1, MAX_N)
    stream = _bool(body.get("stream", False), "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, Mapping):
        raise MockOptionError("stream_options", "expected an object")
    include_usage = _bool(stream_options.get("include_usage", False), "include_usage")

    tool_calls = _tool_calls(get("tool_calls"))
    refusal = _per_choice(get("refusal"), "mock.refusal", n)
    reply = _per_choice(get("reply"), "mock.reply", n)
    reply_tokens = None
    if "reply_tokens" in mock:
        reply_tokens = _int(mock["reply_tokens"], "mock.reply_tokens", 0, MAX_TOTAL_TOKENS)
    elif reply is None and not tool_calls and refusal is None:
        # No say in the request: the server's default reply (text, else generated).
        if defaults.reply is not None:
            reply = (defaults.reply,) * n
        else:
            reply_tokens = defaults.reply_tokens
    if reply_tokens is not None and reply_tokens * n > MAX_TOTAL_TOKENS:
        raise MockOptionError("mock.reply_tokens", f"n * reply_tokens exceeds {MAX_TOTAL_TOKENS}")

    usage = get("usage")
    if usage is not None and not isinstance(usage, bool | Mapping):
        raise MockOptionError("mock.usage", "expected false or an object of overrides")
    if isinstance(usage, Mapping):
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            if name in usage:
                _int(usage[name], "mock.usage." + name, 0, 2**53)
    finish_reason = get("finish_reason")
    fault_key = get("fault_key")
    flags = {
        name: _bool(get(name, False), "mock." + name)
        for name in ("crlf", "bom", "omit_done", "omit_tool_call_index",
                     "usage_in_last_choice_chunk", "prompt_filter_chunk")
    }  # fmt: skip
    return Options(
        model=model,
        stream=stream,
        include_usage=include_usage,
        n=n,
        reply=reply,
        reply_tokens=reply_tokens,
        seed=_int(get("seed", 0), "mock.seed", 0, 2**32),
        reasoning=_per_choice(get("reasoning"), "mock.reasoning", n),
        refusal=refusal,
        tool_calls=tool_calls,
        finish_reason=None if finish_reason is None else _str(finish_reason, "mock.finish_reason"),
        send_usage=usage is not False,
        usage_overrides=usage if isinstance(usage, Mapping) else {},
        tokens_per_s=_number(get("tokens_per_s", defaults.tokens_per_s), "mock.tokens_per_s"),
        ttft_s=_number(get("ttft_ms", defaults.ttft_ms), "mock.ttft_ms") / 1000,
        chunk_tokens=_int(
            get("chunk_tokens", defaults.chunk_tokens), "mock.chunk_tokens", 1, 10**4
        ),
        headers_delay_s=_number(get("headers_delay_ms", 0), "mock.headers_delay_ms") / 1000,
        keepalive_s=_number(get("keepalive_ms", defaults.keepalive_ms), "mock.keepalive_ms") / 1000,
        fault=_fault(mock),
        fault_key=None if fault_key is None else _str(fault_key, "mock.fault_key"),
        split_bytes=_int(get("split_bytes", 0), "mock.split_bytes", 0, 2**30),
        split_delay_s=_number(get("split_delay_ms", 0), "mock.split_delay_ms") / 1000,
        **flags,
    )
