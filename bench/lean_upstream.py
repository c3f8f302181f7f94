"""A lean OpenAI-compatible upstream for ``ingest`` and ``ttft``: ``python -m bench.lean_upstream``.

The config is the first JSON line on stdin: ``port`` (0 for any; several
processes given the same port share it with ``SO_REUSEPORT``, the kernel
spreading connections over them). It prints ``{"url": ..., "pid": ...}`` once
listening.

Why not ``streamfan mock-upstream``: it builds every chunk as it comes due
(JSON encoding, fault plans, a watcher task per response), which at 1,000
streams cost 0.37 cores of the 2 and the run measured the mock as much as the
worker. This server does per chunk only what a socket write needs: every SSE
chunk is encoded once per process (bytes with their HTTP chunked framing, as an
OpenAI upstream sends them), and one timer per process writes each stream's
due chunks, all that are due in one ``write``.

It reads the same ``"mock"`` field as the mock upstream, but only
``reply_tokens``, ``ttft_ms`` and ``tokens_per_s`` (0: as fast as the socket
takes them). Each content chunk is one token; a role chunk goes with the first,
then a ``finish_reason`` chunk, a ``usage`` chunk (when asked for with
``stream_options.include_usage``) and ``[DONE]`` with the last. HTTP/1.1 with
keep-alive; no authentication, no faults.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import time
from typing import Any

import orjson

from bench.loadgen import command, emit, stdin_reader
from bench.machine import raise_nofile

WORDS = ["Lorem", " café", " 中文", " ipsum", " dolor", " naïve", " sit", " amet", "!\n", " 🙂"]
BASE = {
    "id": "chatcmpl-lean-0",
    "object": "chat.completion.chunk",
    "created": 1_796_000_000,
    "model": "mock",
    "system_fingerprint": "fp_lean",
}
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
)
MAX_REQUEST = 1 << 20


def _frame(payload: bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    event = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _frame(orjson.dumps({**BASE, "choices": [choice]}))


ROLE = _chunk({"role": "assistant", "content": "", "refusal": None})
TOKENS = [_chunk({"content": w}) for w in WORDS]
FINISH = _chunk({}, "stop")
DONE = _frame(b"[DONE]") + b"0\r\n\r\n"


def _tail(tokens: int, usage: bool) -> bytes:
    out = FINISH
    if usage:
        u = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": tokens + 8}
        out += _frame(orjson.dumps({**BASE, "choices": [], "usage": u}))
    return out + DONE


class Reply:
    """One response being written: which token is next and when the first was due."""

    __slots__ = ("conn", "rate", "sent", "t_first", "tail", "tokens")

    def __init__(self, conn: Conn, tokens: int, t_first: float, rate: float, tail: bytes):
        self.conn, self.tokens, self.sent = conn, tokens, 0
        self.t_first, self.rate, self.tail = t_first, rate, tail

    def due(self, now: float) -> int:
        """How many tokens should have been sent by ``now``."""
        if self.rate <= 0:
            return self.tokens
        return min(self.tokens, int((now - self.t_first) * self.rate) + 1)

    def next_at(self) -> float:
        return self.t_first + self.sent / self.rate if self.rate > 0 else self.t_first


class Pacer:
    """One timer for every reply of the process: a heap of (due time, n, reply)."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Reply]] = []
        self.count = itertools.count()
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = float("inf")

    def add(self, reply: Reply) -> None:
        at = reply.next_at()
        heapq.heappush(self.heap, (at, next(self.count), reply))
        if at < self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = at
            self.timer = self.loop.call_at(max(at, self.loop.time()), self.tick)

    def tick(self) -> None:
        self.timer, self.timer_at = None, float("inf")
        heap, now = self.heap, self.loop.time()
        while heap and heap[0][0] <= now:
            _, _, reply = heapq.heappop(heap)
            if reply.conn.closed:
                continue
            upto = reply.due(now)
            start = reply.sent
            parts = [ROLE] if start == 0 else []
            parts += [TOKENS[i % len(TOKENS)] for i in range(start, upto)]
            reply.sent = upto
            if upto >= reply.tokens:
                parts.append(reply.tail)
                reply.conn.transport.write(b"".join(parts))
                reply.conn.busy = False
                continue
            reply.conn.transport.write(b"".join(parts) if len(parts) > 1 else parts[0])
            heapq.heappush(heap, (reply.next_at(), next(self.count), reply))
        if heap:
            self.timer_at = heap[0][0]
            self.timer = self.loop.call_at(self.timer_at, self.tick)


class Conn(asyncio.Protocol):
    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.buf = b""
        self.closed = False
        self.busy = False
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            length = 0
            for line in self.buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                break
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self.respond(body)
        if len(self.buf) > MAX_REQUEST:
            self.transport.close()

    def respond(self, body: bytes) -> None:
        try:
            req = orjson.loads(body)
            mock = req.get("mock") or {}
            tokens = max(int(mock.get("reply_tokens", 16)), 1)
            ttft = float(mock.get("ttft_ms", 0)) / 1000
            rate = float(mock.get("tokens_per_s", 0))
            usage = bool((req.get("stream_options") or {}).get("include_usage"))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        self.busy = True
        self.transport.write(HEAD)
        t_first = self.pacer.loop.time() + ttft
        self.pacer.add(Reply(self, tokens, t_first, rate, _tail(tokens, usage)))


async def main() -> None:
    reader = await stdin_reader()
    config = await command(reader)
    raise_nofile()
    pacer = Pacer()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Conn(pacer),
        "127.0.0.1",
        int(config.get("port", 0)),
        reuse_port=True,
        backlog=4096,
    )
    port = server.sockets[0].getsockname()[1]
    emit({"url": f"http://127.0.0.1:{port}/v1", "pid": os.getpid(), "t": time.time()})
    async with server:
        while (await command(reader)).get("cmd") not in ("eof", "stop"):
            pass


if __name__ == "__main__":
    asyncio.run(main())
