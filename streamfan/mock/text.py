"""Tokens for the mock upstream: splitting text, generating lorem-style replies (pure).

These are stand-ins for a real tokenizer, chosen to be deterministic and to
exercise clients: generated text carries 2-, 3- and 4-byte UTF-8 characters and a
ZWJ emoji sequence, and a token never splits a character (the mock's
``split_bytes`` option does that on purpose, at the byte level).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

# A token is a run of word characters or one other character, with the whitespace
# before it: "Hello, wörld 🙂" -> "Hello" "," " wörld" " 🙂". Every character
# matches one branch, so joining the tokens gives back the text exactly.
_TOKEN_RE = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")

# Generated replies mix ASCII with 2-, 3- and 4-byte UTF-8 (and a ZWJ sequence)
# so that decoders which split bytes carelessly are caught.
_VOCAB = (
    "lorem", "ipsum", "dolor", "sit", "amet", "café", "naïve", "crème", "brûlée",
    "中文", "数据流", "🙂", "🚀", "über", "straße", "señor", "日本語", "résumé",
    "stream", "token", "delta", "fan", "Ωmega", "👩‍💻",
)  # fmt: skip
_FIRST = ("Lorem", "Ipsum", "Dolor", "Amet", "Stream", "Token", "Delta", "Fan", "Sit")
_OPENING = (" café", " 中文", " 🙂")


def tokenize(text: str) -> list[str]:
    """Split ``text`` into word-like tokens; ``"".join(tokenize(t)) == t``."""
    return _TOKEN_RE.findall(text)


# Benchmarks ask for the same reply again and again: keep a few.
@functools.lru_cache(maxsize=64)
def generate_tokens(count: int, seed: int = 0) -> tuple[str, ...]:
    """``count`` lorem-style tokens, the same for the same ``(count, seed)``.

    The first word is picked by the seed (so the choices of one reply, seeded
    apart, differ from their first token); the next three hold é, 中 and 🙂, so any
    reply of four tokens or more carries multi-byte characters. Sentences end every
    nine tokens, paragraphs every 36.
    """
    state = (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64
    tokens: list[str] = []
    capital = False
    for i in range(count):
        if i == 0:
            tokens.append(_FIRST[seed % len(_FIRST)])
            continue
        if i <= len(_OPENING):
            tokens.append(_OPENING[i - 1])
            continue
        if i % 9 == 8:
            tokens.append(".")
            capital = True
            continue
        # A 64-bit LCG (Knuth's MMIX constants): cheap, and identical on every
        # Python version, unlike the random module's choice().
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        word = _VOCAB[(state >> 33) % len(_VOCAB)]
        if capital:
            word = word[:1].upper() + word[1:]
            capital = False
        if i % 36 == 0:
            tokens.append("\n\n" + word)
        else:
            tokens.append(" " + word)
    return tuple(tokens)


def count_prompt_tokens(messages: object) -> int:
    """A deterministic stand-in for the prompt's token count (OpenAI's 3-per-message rule)."""
    if not isinstance(messages, list):
        return 0
    total = 3
    for message in messages:
        total += 3
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        if isinstance(content, str):
            total += len(tokenize(content))
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    total += len(tokenize(part["text"]))
        if isinstance(message.get("name"), str):
            total += 1
    return total
