"""The baseline servers of the fan-out benchmark: ``python -m bench.servers``.

The config is the first JSON line on stdin (``kind``: ``ceiling`` or ``naive``).

Both speak the gateway's wire format for ``/streams/{ID}`` (a ``subscribed``
message, then ``event`` messages and ``end``) so the same load generator counts
and times them, and both print ``{"url": "ws://..."}`` once listening.

``ceiling``  a bare ``websockets`` server with no Redis: on ``{"cmd": "go"}`` it
             makes the stamped deltas itself and sends each, one frame per event,
             to every connection of its stream with ``websockets.broadcast``.
             What fan-out costs when nothing else does.
``naive``    every connection runs its own ``XREAD BLOCK`` loop on its own Redis
             connection and sends what each read returns as one frame (JSON
             Lines): the obvious design streamfan replaces. Events come from the
             same producer process as for streamfan.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, broadcast, serve

from bench.events import pace, stamped_delta_json
from bench.loadgen import command, emit, stdin_reader
from bench.machine import raise_nofile
from streamfan import events, protocol
from streamfan.keys import Keys

BLOCK_MS = 1000


def stream_of(ws: ServerConnection) -> str:
    assert ws.request is not None
    return ws.request.path.split("?", 1)[0].rsplit("/", 1)[-1]


class Ceiling:
    def __init__(self) -> None:
        self.conns: dict[str, set[ServerConnection]] = defaultdict(set)

    async def handler(self, ws: ServerConnection) -> None:
        sid = stream_of(ws)
        self.conns[sid].add(ws)
        try:
            await ws.send(protocol.subscribed(sid, "running").decode())
            await ws.wait_closed()
        finally:
            self.conns[sid].discard(ws)

    async def produce(self, sid: str, n: int, rate: float) -> None:
        prefix = protocol.event_prefix(sid)
        t0 = time.monotonic()
        for i in range(n):
            ms = int(time.time() * 1000)
            line = protocol.event_line(prefix, f"{ms}-{i}".encode(), stamped_delta_json())
            broadcast(self.conns[sid], line, text=True)
            await pace(t0, i, rate)
        broadcast(self.conns[sid], protocol.end(sid, "done"), text=True)

    async def commands(self, reader: asyncio.StreamReader) -> None:
        while (cmd := await command(reader)).get("cmd") == "go":
            t0 = time.monotonic()
            n, rate = int(cmd["events"]), float(cmd.get("rate", 0))
            await asyncio.gather(*(self.produce(s, n, rate) for s in cmd["streams"]))
            emit({"written": n * len(cmd["streams"]), "elapsed_s": time.monotonic() - t0})


class Naive:
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.keys = Keys()

    async def handler(self, ws: ServerConnection) -> None:
        sid = stream_of(ws)
        key = self.keys.events(sid)
        prefix = protocol.event_prefix(sid)
        r = aioredis.Redis.from_url(self.redis_url, single_connection_client=True)
        try:
            await ws.send(protocol.subscribed(sid, "running").decode())
            last: bytes | str = "0-0"
            while True:
                reply = await r.xread({key: last}, block=BLOCK_MS)
                if not reply:
                    continue
                entries = reply[0][1]
                lines = [protocol.event_line(prefix, eid, f[b"e"]) for eid, f in entries]
                last = entries[-1][0]
                etype = protocol.event_type(entries[-1][1][b"e"])
                status = events.TERMINAL_STATUS.get(etype or "")
                if status is not None:
                    lines.append(protocol.end(sid, status))
                await ws.send(protocol.join_lines(lines).decode())
                if status is not None:
                    await ws.wait_closed()
                    return
        finally:
            await r.aclose()

    async def commands(self, reader: asyncio.StreamReader) -> None:
        while (await command(reader)).get("cmd") not in ("eof", "stop"):
            pass


async def main() -> None:
    reader = await stdin_reader()
    config = await command(reader)
    raise_nofile()
    kind = config["kind"]
    impl: Ceiling | Naive = Ceiling() if kind == "ceiling" else Naive(config["redis_url"])
    async with serve(
        impl.handler, "127.0.0.1", 0, compression=None, max_size=16384, logger=None
    ) as server:
        port = server.sockets[0].getsockname()[1] if server.sockets else 0
        emit({"url": f"ws://127.0.0.1:{port}"})
        await impl.commands(reader)
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
