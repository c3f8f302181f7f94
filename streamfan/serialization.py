"""The JSON job serializer shared by the client's arq pool and the worker.

arq pickles jobs by default; pickle lets anyone who can write to Redis run code
in a worker, so both sides use JSON. A job is then plain JSON that a service in
any language can write (docs/events.md#jobs says what to write).
"""

from __future__ import annotations

from typing import Any

import orjson


def job_serializer(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


def job_deserializer(data: bytes) -> dict[str, Any]:
    obj = orjson.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("an arq job must be a JSON object")
    return obj
