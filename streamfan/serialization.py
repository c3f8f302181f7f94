"""The JSON job serializer shared by the client's arq pool and the worker.

arq pickles jobs by default; pickle lets anyone who can write to Redis run code
in a worker, so both sides use JSON. A job is then plain JSON that a service in
any language can write (docs/events.md#jobs says what to write)::

    {"f": "chat_stream", "a": [BODY], "k": {}, "t": 1, "et": ENQUEUED_AT_MS}

A job that is not that (a pickled payload, broken JSON, another function, the
wrong fields) is never run, but it is not dropped silently either: arq would
log it and leave its stream ``queued`` until it expires. The deserializer turns
it into a call of ``chat_stream`` with the single keyword argument
:data:`INVALID_JOB_KWARG` saying what was wrong, and the worker ends the stream
with an ``error`` (``codes.INVALID_JOB``; ``worker.job.chat_stream``).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from streamfan.keys import JOB_FUNCTION

#: The keyword a job that could not be decoded is called with (its value: why).
INVALID_JOB_KWARG = "__streamfan_invalid_job__"


def job_serializer(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


def job_deserializer(data: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        head = "a pickled payload" if data[:1] == b"\x80" else "not JSON"
        return _invalid(f"the job is {head}; jobs must be JSON")
    if not isinstance(obj, dict):
        return _invalid("the job must be a JSON object")
    if "r" in obj and "f" in obj and "s" in obj:
        return obj  # an arq result record, not a job: arq reads those as they are
    problem = _shape_problem(obj)
    if problem is not None:
        return _invalid(problem, enqueued_ms=obj.get("et"))
    return obj


def job_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, str | None]:
    """(body, None) for a well-formed job's arguments, else (None, what is wrong)."""
    undecodable = kwargs.get(INVALID_JOB_KWARG)
    if undecodable is not None:
        return None, str(undecodable)
    if len(args) == 1 and not kwargs:
        return args[0], None
    if not args and set(kwargs) == {"body"}:
        return kwargs["body"], None
    # Names only, never values: the arguments may hold anything.
    names = ", ".join(sorted(repr(k)[:40] for k in kwargs if k != "body")[:5])
    return None, (
        f"chat_stream takes one argument, the request body; got {len(args)} positional"
        + (f" and unknown keyword arguments {names}" if names else "")
    )


def _shape_problem(obj: dict[str, Any]) -> str | None:
    if obj.get("f") != JOB_FUNCTION:
        return f"the job calls {str(obj.get('f'))[:40]!r}, not {JOB_FUNCTION!r}"
    if not isinstance(obj.get("a"), list) or not isinstance(obj.get("k"), dict):
        return "the job's 'a' must be a list and 'k' an object"
    if not _is_int(obj.get("et")) or not (obj.get("t") is None or _is_int(obj.get("t"))):
        return "the job's 'et' (and 't', if given) must be integers"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(problem: str, *, enqueued_ms: object = None) -> dict[str, Any]:
    et = enqueued_ms if _is_int(enqueued_ms) else int(time.time() * 1000)
    return {"f": JOB_FUNCTION, "a": [], "k": {INVALID_JOB_KWARG: problem}, "t": None, "et": et}
