"""What one mock reply says, before it is cut into chunks: choices, usage, the expected message.

:func:`build_choices` turns the validated :class:`~streamfan.mock.options.Options`
into one :class:`Choice` per ``n``: the tokens of its reasoning, refusal, content
and tool-call arguments, and its finish reason. :func:`build_usage` counts them
the way the chunks will carry them, and :meth:`Choice.expected` is the message a
correct client assembles. :mod:`streamfan.mock.script` makes the chunks and bytes
from these. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streamfan.mock.options import Options
from streamfan.mock.text import generate_tokens, tokenize


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


@dataclass(frozen=True, slots=True)
class Choice:
    """One choice of the reply, as tokens (each one chunk's worth at ``chunk_tokens`` 1)."""

    index: int
    content: tuple[str, ...] | None  # None: the message has no content at all
    reasoning: tuple[str, ...]
    refusal: tuple[str, ...]
    tool_calls: tuple[tuple[str, str, tuple[str, ...]], ...]  # (id, name, argument pieces)
    finish_reason: str

    @property
    def tokens(self) -> int:
        """Completion tokens; a tool call's name counts as one, like its header chunk."""
        calls = sum(1 + len(pieces) for _, _, pieces in self.tool_calls)
        return len(self.content or ()) + len(self.reasoning) + len(self.refusal) + calls

    def expected(self) -> ExpectedMessage:
        """The message a client should assemble from this choice's chunks."""
        return ExpectedMessage(
            content=None if self.content is None else "".join(self.content),
            reasoning_content="".join(self.reasoning) if self.reasoning else None,
            refusal="".join(self.refusal) if self.refusal else None,
            tool_calls=tuple(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": "".join(pieces)},
                }
                for call_id, name, pieces in self.tool_calls
            ),
            finish_reason=self.finish_reason,
        )


def build_choices(options: Options) -> tuple[Choice, ...]:
    """One :class:`Choice` per ``options.n``; choice ``i`` of a generated reply uses seed + i."""
    return tuple(_build_choice(options, index) for index in range(options.n))


def _build_choice(o: Options, index: int) -> Choice:
    content: tuple[str, ...] | None = None
    if o.reply is not None:
        content = tuple(tokenize(o.reply[index]))
    elif o.reply_tokens is not None:
        content = generate_tokens(o.reply_tokens, o.seed + index)
    calls = tuple(
        (call.id or f"call_mock_{index}_{i}", call.name, tuple(tokenize(call.arguments)))
        for i, call in enumerate(o.tool_calls)
    )
    return Choice(
        index=index,
        content=content,
        reasoning=tuple(tokenize(o.reasoning[index])) if o.reasoning else (),
        refusal=tuple(tokenize(o.refusal[index])) if o.refusal else (),
        tool_calls=calls,
        finish_reason=o.finish_reason or ("tool_calls" if calls else "stop"),
    )


def build_usage(
    options: Options, prompt_tokens: int, choices: tuple[Choice, ...]
) -> dict[str, Any] | None:
    """The usage object the reply reports (None when ``mock.usage`` is false)."""
    if not options.send_usage:
        return None
    completion = sum(c.tokens for c in choices)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": sum(len(c.reasoning) for c in choices)},
    }
    if options.usage_overrides:
        usage.update(options.usage_overrides)
        if "total_tokens" not in options.usage_overrides:
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage
