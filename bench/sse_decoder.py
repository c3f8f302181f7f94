"""Time worker.sse.SSEDecoder against httpx-sse's decoder on the same body.

The body is what an OpenAI-compatible upstream sends: ``CHUNKS`` chunks of
``data: {json}\\n\\n`` (a word of content each, some non-ASCII), a usage chunk
and ``data: [DONE]``, cut into ``READ`` byte reads as a socket would deliver it.

httpx-sse is driven the way its ``aiter_sse`` drives it: an incremental UTF-8
text decoder (what ``httpx.Response.aiter_text`` does), ``SSELineDecoder`` to
split lines, ``line.rstrip("\\n")``, then ``SSEDecoder.decode`` per line.

Run: ``.venv/bin/python bench/sse_decoder.py``
"""

from __future__ import annotations

import codecs
import sys
import time
from collections.abc import Callable

import orjson
from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder
from httpx_sse._decoders import SSELineDecoder

from worker.sse import SSEDecoder

CHUNKS = 2000
READ = 1536
ROUNDS = 30
WORDS = ["Hello", " world", ",", " naïve", " café", " 日本語", " —", " ok", "!\n", " 🙂"]


def openai_body(chunks: int = CHUNKS) -> bytes:
    base = {
        "id": "chatcmpl-9xYzAbCdEfGhIjKlMnOpQrStUvW",
        "object": "chat.completion.chunk",
        "created": 1_718_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0123456789",
    }
    out = []
    for i in range(chunks):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": WORDS[i % 10]}
        chunk = {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
            "usage": None,
        }
        out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": chunks + 12}
    out.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def reads(body: bytes, size: int = READ) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def ours(parts: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    out: list[str] = []
    for part in parts:
        out.extend(sse.data for sse in decoder.decode(part))
    out.extend(sse.data for sse in decoder.flush())
    return out


def httpx_sse(parts: list[bytes]) -> list[str]:
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = SSELineDecoder()
    decoder = HttpxSSEDecoder()
    out: list[str] = []
    for part in parts:
        for line in lines.decode(text.decode(part)):
            sse = decoder.decode(line.rstrip("\n"))
            if sse is not None:
                out.append(sse.data)
    for line in lines.decode(text.decode(b"", final=True)) + lines.flush():
        sse = decoder.decode(line.rstrip("\n"))
        if sse is not None:
            out.append(sse.data)
    return out


def per_chunk_us(
    fns: list[Callable[[list[bytes]], list[str]]], parts: list[bytes], n: int
) -> list[float]:
    """Best of ``ROUNDS`` runs each, the decoders taking turns (fair under machine noise)."""
    best = [float("inf")] * len(fns)
    for _ in range(ROUNDS):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(parts)
            best[i] = min(best[i], time.perf_counter() - t0)
    return [b / n * 1e6 for b in best]


def main() -> None:
    body = openai_body()
    parts = reads(body)
    expected = ours(parts)
    assert expected == httpx_sse(parts), "the two decoders disagree on a plain body"
    n = len(expected)
    # A BOM in front: ours drops it, httpx-sse turns the first field into "\ufeffdata".
    bom_parts = reads(b"\xef\xbb\xbf" + body)
    ours_bom, theirs_bom = len(ours(bom_parts)), len(httpx_sse(bom_parts))

    a, b = per_chunk_us([ours, httpx_sse], parts, n)
    print(f"body: {len(body):,} bytes, {n:,} events, {len(parts):,} reads of {READ} bytes")
    print(f"worker.sse.SSEDecoder       {a:6.2f} µs per chunk")
    print(f"httpx-sse (aiter_sse path)  {b:6.2f} µs per chunk")
    print(f"ratio httpx-sse / ours      {b / a:6.2f}x")
    print(f"events decoded with a leading BOM: ours {ours_bom}, httpx-sse {theirs_bom} (of {n})")
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
