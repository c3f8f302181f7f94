"""The control plane in Redis, shared by the client API, the CLI and the gateway.

Creating a stream's meta, reading it, and cancelling. Redis errors are raised
again as :class:`RedisUnavailable` (:mod:`streamfan.redis_edge`). The worker's
writes live in ``worker.publisher``; the scripts both use are in
:mod:`streamfan.scripts`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from streamfan import events, scripts
from streamfan.cluster import EventsRedis, register
from streamfan.keys import Keys, Meta
from streamfan.redis_edge import redis_errors

#: A queued stream whose job never runs expires after this long (arq drops jobs
#: that waited longer than its own default expiry, one day).
QUEUED_TTL_S = 86400.0 * 2


def now_ms() -> int:
    return int(time.time() * 1000)


def stream_keys(keys: Keys, stream_id: str) -> list[str]:
    """The four keys every script takes, in the order :mod:`streamfan.scripts` expects."""
    return [
        keys.meta(stream_id),
        keys.events(stream_id),
        keys.live(stream_id),
        keys.lease(stream_id),
    ]


@dataclass(frozen=True, slots=True)
class StreamMeta:
    """A stream's meta hash, decoded."""

    stream_id: str
    status: str
    created_at: int | None
    updated_at: int | None
    model: str | None
    attempt: int
    owner: str | None
    usage: dict[str, Any] | None
    finish_reason: str | None
    error: dict[str, Any] | None
    last_id: str | None

    @property
    def finished(self) -> bool:
        return self.status in events.FINISHED_STATUSES

    def as_dict(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "model": self.model,
            "attempt": self.attempt,
            "owner": self.owner,
            "usage": self.usage,
            "finish_reason": self.finish_reason,
            "error": self.error,
            "last_id": self.last_id,
        }


def _text(raw: dict[bytes, bytes], field: str) -> str | None:
    value = raw.get(field.encode())
    return None if value is None else value.decode("utf-8", "replace")


def _int(raw: dict[bytes, bytes], field: str) -> int | None:
    value = raw.get(field.encode())
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _json(raw: dict[bytes, bytes], field: str) -> Any:
    value = raw.get(field.encode())
    if not value:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None


def decode_meta(stream_id: str, raw: dict[bytes, bytes]) -> StreamMeta | None:
    if not raw or Meta.STATUS.encode() not in raw:
        return None
    return StreamMeta(
        stream_id=stream_id,
        status=_text(raw, Meta.STATUS) or "",
        created_at=_int(raw, Meta.CREATED_AT),
        updated_at=_int(raw, Meta.UPDATED_AT),
        model=_text(raw, Meta.MODEL) or None,
        attempt=_int(raw, Meta.ATTEMPT) or 0,
        owner=_text(raw, Meta.OWNER) or None,
        usage=_json(raw, Meta.USAGE),
        finish_reason=_text(raw, Meta.FINISH_REASON) or None,
        error=_json(raw, Meta.ERROR),
        last_id=_text(raw, Meta.LAST_ID),
    )


async def read_meta(r: EventsRedis, keys: Keys, stream_id: str) -> StreamMeta | None:
    async with redis_errors():
        raw: dict[bytes, bytes] = await r.hgetall(keys.meta(stream_id))  # type: ignore[misc]
    return decode_meta(stream_id, raw)


async def create_meta(
    r: EventsRedis,
    keys: Keys,
    stream_id: str,
    *,
    model: str,
    owner: str | None,
    fields: Mapping[str, str] | None = None,
) -> bool:
    """Write a queued stream's meta unless it exists; True if this call created it.

    ``fields``: more meta fields written in the same step (names from :class:`Meta`)."""
    extra = [part for item in (fields or {}).items() for part in item]
    async with redis_errors():
        created = await register(r, scripts.CREATE)(
            stream_keys(keys, stream_id),
            [now_ms(), model, owner or "", int(QUEUED_TTL_S * 1000), *extra],
        )
    return bool(created)


async def request_cancel(
    r: EventsRedis,
    keys: Keys,
    stream_id: str,
    *,
    reason: str,
    retention_s: float,
    maxlen: int,
) -> str:
    """Cancel a stream. Returns 'not_found', 'cancelled', 'cancelling' or its finished status.

    A queued stream ends here and then; a running one is flagged and its worker
    is told on the cancel channel (and sees the flag on its next write or lease
    renewal if that message is lost), and writes ``cancelled`` itself.
    """
    async with redis_errors():
        result = await register(r, scripts.CANCEL)(
            stream_keys(keys, stream_id),
            [
                now_ms(),
                reason,
                events.encode_event(events.cancelled(reason)),
                int(retention_s * 1000),
                maxlen,
                keys.cancel_channel,
                stream_id,
            ],
        )
    return result.decode() if isinstance(result, bytes) else str(result)
