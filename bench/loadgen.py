"""A load-generator process: many :class:`~bench.wsclient.WSClient` connections
(or :class:`~bench.sseclient.SSEClient` ones, for ``http://`` URLs: the SSE door).

``python -m bench.loadgen``; its config is the first JSON line on stdin, then JSON lines:

1. connects every URL in ``urls`` (each subscribes on connect: ``/streams/ID``),
   prints ``{"ready": n, "failed": k}`` once each got its ``subscribed`` message;
2. ``mode == "count"``: on ``{"cmd": "go"}`` it counts events until every client
   got ``end`` (or closed), ``deadline_s`` passed, or nothing arrived for
   ``idle_s``; prints the counts and a latency sample, exits.
   ``mode == "idle"``: holds the connections until ``{"cmd": "close"}``, closes
   them, prints ``{"closed": n}``, exits.

Latency is the receive time minus the ``bench_t`` (µs since the epoch) that the
producer put in each event; every event of a frame shares the frame's receive time.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from array import array
from typing import Any

from bench.machine import raise_nofile
from bench.sseclient import SSEClient
from bench.wsclient import WSClient

MARK = b'"bench_t":'
#: bench_t is µs since the epoch: 16 digits until the year 2286.
STAMP_DIGITS = 16
CONNECT_BATCH = 200


class Stats:
    def __init__(self, stride: int) -> None:
        self.stride = stride
        self.events = 0
        self.frames = 0
        self.first_rx = 0.0
        self.last_rx = 0.0
        self.lat_ms = array("d")
        self.lat_max = 0.0
        self.errors: dict[str, int] = {}
        self.done = 0
        self.all_done = asyncio.Event()
        self.total = 0


class Counting:
    """Counts events and samples latency per message (a frame, or an SSE chunk)."""

    #: What the first message of a subscription holds, and the end and error marks.
    SUBSCRIBED = b'"op":"subscribed"'
    ERROR = b'"op":"error"'

    def __init__(self, url: str, stats: Stats) -> None:
        super().__init__(url)  # type: ignore[call-arg]
        self.stats = stats
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.finished = False

    def ends(self, data: bytes) -> bool:
        return data.endswith(b'"}') and b'"op":"end"' in data[-200:]

    def on_message(self, data: bytes) -> None:
        now = time.time()
        st = self.stats
        st.frames += 1
        if not self.subscribed.done() and self.SUBSCRIBED in data:
            self.subscribed.set_result(None)
        parts = data.split(MARK)
        n = len(parts) - 1
        if n:
            if not st.first_rx:
                st.first_rx = now
            st.last_rx = now
            now_us = now * 1e6
            # The frame's first event is its oldest: it gives the maximum.
            oldest = (now_us - int(parts[1][:STAMP_DIGITS])) / 1000.0
            if oldest > st.lat_max:
                st.lat_max = oldest
            # Parse only every stride-th event (the sample); count the rest in C.
            stride, base = st.stride, st.events
            for k in range((-base) % stride, n, stride):
                st.lat_ms.append((now_us - int(parts[k + 1][:STAMP_DIGITS])) / 1000.0)
            st.events = base + n
        if self.ERROR in data:
            code = data.partition(b'"code":"')[2].partition(b'"')[0].decode()
            st.errors[code] = st.errors.get(code, 0) + 1
        if self.ends(data):
            self._finish()

    def on_closed(self) -> None:
        if not self.subscribed.done():
            code = getattr(self, "close_code", None)
            self.subscribed.set_exception(ConnectionError(f"closed ({code})"))
        self._finish()

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.stats.done += 1
            if self.stats.done >= self.stats.total:
                self.stats.all_done.set()


class CountingClient(Counting, WSClient):
    pass


class CountingSSEClient(Counting, SSEClient):
    #: The gateway's SSE door starts its body with this comment once subscribed.
    SUBSCRIBED = b": streamfan\n"
    ERROR = b"event: error\n"

    def ends(self, data: bytes) -> bool:
        return b"event: end\n" in data[-100:]


def counting_client(url: str, stats: Stats) -> CountingClient | CountingSSEClient:
    if url.startswith("http"):
        return CountingSSEClient(url, stats)
    return CountingClient(url, stats)


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def command(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = await reader.readline()
    if not line:
        return {"cmd": "eof"}
    value: dict[str, Any] = json.loads(line)
    return value


async def connect_all(
    clients: list[CountingClient | CountingSSEClient], wait_s: float
) -> list[str]:
    """Connect in batches; return the errors of those that failed."""
    errors: list[str] = []

    async def one(c: CountingClient | CountingSSEClient) -> None:
        try:
            async with asyncio.timeout(wait_s):
                await c.connect()
                await c.subscribed
        except (OSError, TimeoutError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    for i in range(0, len(clients), CONNECT_BATCH):
        await asyncio.gather(*(one(c) for c in clients[i : i + CONNECT_BATCH]))
    return errors


async def main() -> None:
    reader = await stdin_reader()
    config = await command(reader)
    raise_nofile()
    stats = Stats(int(config.get("stride", 1)))
    clients = [counting_client(url, stats) for url in config["urls"]]
    stats.total = len(clients)
    errors = await connect_all(clients, float(config.get("connect_timeout", 30)))
    emit({"ready": len(clients) - len(errors), "failed": len(errors), "errors": errors[:5]})
    cmd = await command(reader)
    if config.get("mode", "count") == "idle":
        if cmd.get("cmd") != "close":
            cmd = await command(reader)
        for c in clients:
            c.close()
        await asyncio.wait([c.closed for c in clients], timeout=15)
        for c in clients:
            if c.transport is not None:
                c.transport.abort()
        emit({"closed": len(clients)})
        return
    cpu0 = time.process_time()
    deadline = time.monotonic() + float(config.get("deadline_s", 60))
    idle_s = float(config.get("idle_s", 10))
    last_seen = (-1, time.monotonic())
    while not stats.all_done.is_set() and time.monotonic() < deadline:
        try:
            await asyncio.wait_for(stats.all_done.wait(), 0.25)
        except TimeoutError:
            now = time.monotonic()
            if stats.events != last_seen[0]:
                last_seen = (stats.events, now)
            elif now - last_seen[1] > idle_s:
                break
    closed_early = sum(1 for c in clients if c.close_code not in (None, 1000))
    codes: dict[str, int] = {}
    for c in clients:
        if c.close_code is not None:
            codes[str(c.close_code)] = codes.get(str(c.close_code), 0) + 1
        if c.transport is not None:
            c.transport.abort()
    emit(
        {
            "events": stats.events,
            "frames": stats.frames,
            "first_rx": stats.first_rx,
            "last_rx": stats.last_rx,
            "finished": stats.done,
            "clients": len(clients),
            "closed_early": closed_early,
            "close_codes": codes,
            "errors": stats.errors,
            "lat_max_ms": stats.lat_max,
            "cpu_s": time.process_time() - cpu0,
            "lat_ms": list(stats.lat_ms),
        }
    )


if __name__ == "__main__":
    asyncio.run(main())
