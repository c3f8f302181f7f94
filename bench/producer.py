"""The producer process of the fan-out benchmark: the worker's write path, minus the worker.

``python -m bench.producer`` (config: the first JSON line on stdin): creates
each stream's meta, claims an attempt with :class:`worker.publisher.Publisher`
(as the worker does), writes a ``start`` event and prints ``{"ready": true}``.
On ``{"cmd": "go"}`` it writes
``events`` stamped deltas per stream, one write each through the worker's own
write path (``AttemptWriter.write``: XADD + PUBLISH in one Lua script, batched
across streams), at ``rate`` per stream per second (0: as fast as it can), then
``done``; prints what it wrote and exits.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from bench.events import pace, stamped_delta
from bench.loadgen import command, emit, stdin_reader
from streamfan import events
from streamfan.cluster import connect_events
from streamfan.settings import Settings
from streamfan.store import create_meta
from worker.publisher import AttemptWriter, Publisher


async def claim(pub: Publisher, settings: Settings, sid: str) -> AttemptWriter:
    await create_meta(pub.r, settings.keys, sid, model="bench", owner=None)
    c = await pub.begin(sid, uuid.uuid4().hex, "bench")
    if c.outcome != "run":
        raise RuntimeError(f"stream {sid}: claim {c.outcome}")
    writer = pub.writer(sid, c.attempt)
    await writer.write([events.start(sid, "bench", int(time.time()), c.attempt)])
    return writer


async def run_stream(writer: AttemptWriter, n: int, rate: float) -> None:
    t0 = time.monotonic()
    for i in range(n):
        await writer.write([stamped_delta()])
        await pace(t0, i, rate)
    await writer.finish(events.done("stop", None))


async def main() -> None:
    reader = await stdin_reader()
    config = await command(reader)
    settings = Settings.from_env(
        {}, redis_url=config["redis_url"], events_redis_url=config.get("events_url")
    )
    # The worker's own client: a RedisCluster when the events are on one.
    r = await connect_events(settings.events_url, max_connections=64)
    pub = Publisher(r, settings)
    writers = [await claim(pub, settings, sid) for sid in config["streams"]]
    emit({"ready": True})
    await command(reader)
    cpu0, t0 = time.process_time(), time.monotonic()
    n, rate = int(config["events"]), float(config.get("rate", 0))
    await asyncio.gather(*(run_stream(w, n, rate) for w in writers))
    elapsed = time.monotonic() - t0
    emit(
        {
            "written": n * len(writers),
            "elapsed_s": elapsed,
            "cpu_s": time.process_time() - cpu0,
            "rate_per_stream": n / elapsed if elapsed > 0 else 0.0,
        }
    )
    await r.aclose()


if __name__ == "__main__":
    asyncio.run(main())
