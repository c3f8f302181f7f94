"""The ``ingest`` baseline: the worker's upstream reads and decoding, minus Redis.

``python -m bench.upstream_reader`` (config: the first JSON line on stdin:
``upstream``, ``streams``, ``rate``, ``tokens``, ``warmup``, ``window``,
``decode``) opens ``streams`` replies from the mock upstream through the
worker's own :class:`worker.upstream.Upstream` (same httpx client, same
settings) and only reads them — with ``decode``, also through the SSE decoder
and translator. It prints what one process spends per network read and per
chunk over the window: the floor under the worker's own cost per chunk.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.loadgen import command, emit, stdin_reader
from bench.ttft import body
from streamfan.requests import streaming_body, validate_chat_request
from streamfan.settings import Settings
from worker.sse import SSEDecoder
from worker.translate import Translator
from worker.upstream import Upstream


class Counts:
    reads = 0
    chunks = 0


async def read_one(up: Upstream, request: dict[str, Any], decode: bool, counts: Counts) -> None:
    decoder, translator = SSEDecoder(), Translator(secrets=[])
    async with up.stream(request) as reads:
        async for data in reads:
            counts.reads += 1
            if decode:
                for sse in decoder.decode(data):
                    counts.chunks += len(translator.feed(sse))
            else:
                counts.chunks += data.count(b"\ndata: ") + data.startswith(b"data: ")


async def main() -> None:
    reader = await stdin_reader()
    config = await command(reader)
    settings = Settings.from_env(
        {}, upstream_base_url=config["upstream"], upstream_api_key="sk-bench"
    )
    up = Upstream(settings)
    request = streaming_body(
        validate_chat_request(body(int(config["tokens"]), 0, float(config["rate"])))
    )
    counts = Counts()
    tasks = [
        asyncio.create_task(read_one(up, request, bool(config["decode"]), counts))
        for _ in range(int(config["streams"]))
    ]
    await asyncio.sleep(float(config["warmup"]))
    reads0, chunks0 = counts.reads, counts.chunks
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(float(config["window"]))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    reads, chunks = counts.reads - reads0, counts.chunks - chunks0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await up.aclose()
    emit(
        {
            "streams": int(config["streams"]),
            "decode": bool(config["decode"]),
            "seconds": wall,
            "reads": reads,
            "chunks": chunks,
            "cpu_cores": cpu / wall,
            "cpu_us_per_read": cpu * 1e6 / max(reads, 1),
            "cpu_us_per_chunk": cpu * 1e6 / max(chunks, 1),
        }
    )


if __name__ == "__main__":
    asyncio.run(main())
