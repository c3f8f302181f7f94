"""Event types and their encoding: the records of a stream.

An event is a JSON object with a ``type``. In a stream they follow the grammar::

    attempt  = start (delta | usage)*
    stream   = attempt (reset attempt)* terminal
    terminal = done | error | cancelled

Events are plain dicts (what ``json`` gives a reader in any language); the
constructors below are the only place the worker builds them, and
:func:`decode_event` is the only place a reader validates them.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from streamfan.errors import InvalidEvent

Event = dict[str, Any]

START: Final = "start"
DELTA: Final = "delta"
USAGE: Final = "usage"
DONE: Final = "done"
ERROR: Final = "error"
CANCELLED: Final = "cancelled"
RESET: Final = "reset"

TERMINAL_TYPES: Final = frozenset({DONE, ERROR, CANCELLED})
EVENT_TYPES: Final = frozenset({START, DELTA, USAGE, DONE, ERROR, CANCELLED, RESET})

#: Fields every event of a type must carry (others may be present and pass through).
REQUIRED_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    START: ("stream_id", "model", "created", "attempt"),
    DELTA: ("choices",),
    USAGE: ("usage",),
    DONE: ("finish_reason", "usage"),
    ERROR: ("code", "message", "retryable"),
    CANCELLED: ("reason",),
    RESET: ("attempt",),
}

#: Stream status (meta ``status``) that each terminal event leaves behind.
STATUS_QUEUED: Final = "queued"
STATUS_RUNNING: Final = "running"
STATUS_DONE: Final = "done"
STATUS_ERROR: Final = "error"
STATUS_CANCELLED: Final = "cancelled"
FINISHED_STATUSES: Final = frozenset({STATUS_DONE, STATUS_ERROR, STATUS_CANCELLED})
STATUSES: Final = frozenset({STATUS_QUEUED, STATUS_RUNNING}) | FINISHED_STATUSES
TERMINAL_STATUS: Final[dict[str, str]] = {
    DONE: STATUS_DONE,
    ERROR: STATUS_ERROR,
    CANCELLED: STATUS_CANCELLED,
}


def start(stream_id: str, model: str, created: int, attempt: int) -> Event:
    return {
        "type": START,
        "stream_id": stream_id,
        "model": model,
        "created": created,
        "attempt": attempt,
    }


def delta(choices: list[Any]) -> Event:
    return {"type": DELTA, "choices": choices}


def usage(usage_obj: dict[str, Any]) -> Event:
    return {"type": USAGE, "usage": usage_obj}


def done(finish_reason: str | None, usage_obj: dict[str, Any] | None) -> Event:
    return {"type": DONE, "finish_reason": finish_reason, "usage": usage_obj}


def error(code: str, message: str, *, retryable: bool, upstream_status: int | None = None) -> Event:
    ev: Event = {"type": ERROR, "code": code, "message": message, "retryable": retryable}
    if upstream_status is not None:
        ev["upstream_status"] = upstream_status
    return ev


def cancelled(reason: str) -> Event:
    return {"type": CANCELLED, "reason": reason}


def reset(attempt: int) -> Event:
    return {"type": RESET, "attempt": attempt}


def is_terminal(event: Event) -> bool:
    return event.get("type") in TERMINAL_TYPES


def encode_event(event: Event) -> bytes:
    """Compact UTF-8 JSON; never contains a raw newline (JSON escapes them)."""
    return orjson.dumps(event)


def decode_event(data: bytes | str) -> Event:
    """Parse and validate one event; raise :class:`InvalidEvent` on anything else."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"event is not valid JSON: {exc}") from exc
    validate_event(obj)
    return obj  # type: ignore[no-any-return]


def validate_event(obj: object) -> None:
    if not isinstance(obj, dict):
        raise InvalidEvent(f"event must be a JSON object, got {type(obj).__name__}")
    etype = obj.get("type")
    if etype not in EVENT_TYPES:
        raise InvalidEvent(f"unknown event type {etype!r}")
    missing = [f for f in REQUIRED_FIELDS[etype] if f not in obj]
    if missing:
        raise InvalidEvent(f"{etype} event lacks {', '.join(missing)}")
    if etype == DELTA and not isinstance(obj["choices"], list):
        raise InvalidEvent("delta event's choices must be a list")
