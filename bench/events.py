"""The events the fan-out benchmark sends: a one-token delta stamped with ``bench_t``.

``bench_t`` (µs since the epoch, taken just before the write) is a vendor field
in the event; streamfan passes unknown fields through, so the gateway delivers it
untouched and the load generator reads it without parsing JSON. It is the last
key, so the client finds its end at the next ``}``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

TOKEN = " token"


def stamped_delta() -> dict[str, Any]:
    return {
        "type": "delta",
        "choices": [{"index": 0, "delta": {"content": TOKEN}, "finish_reason": None}],
        "bench_t": time.time_ns() // 1000,
    }


def stamped_delta_json() -> bytes:
    return orjson.dumps(stamped_delta())


async def pace(t0: float, i: int, rate: float) -> None:
    """Sleep until event ``i`` is due at ``rate`` per second (rate 0: yield only)."""
    import asyncio

    if rate <= 0:
        await asyncio.sleep(0)
        return
    delay = t0 + (i + 1) / rate - time.monotonic()
    await asyncio.sleep(max(0.0, delay))
