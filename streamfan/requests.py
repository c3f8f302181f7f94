"""Validation of a chat request body, shared by the client API and the worker.

The body is what the caller would send to ``/chat/completions``; any OpenAI
field passes through. ``stream`` and ``stream_options.include_usage`` belong to
the worker, which sets them on every call.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamfan.errors import InvalidRequest

#: A body larger than this is refused: it would sit in Redis twice (job + meta).
MAX_REQUEST_BYTES = 4 * 1024 * 1024


def validate_chat_request(body: object) -> dict[str, Any]:
    """Return ``body`` if it can be submitted; raise :class:`InvalidRequest` saying why."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"the request must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("the request needs a 'model' (a non-empty string)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("the request needs 'messages' (a non-empty list)")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a 'role'")
    if body.get("stream") is False:
        raise InvalidRequest("'stream' is set by the worker; leave it out")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object")
    try:
        encoded = orjson.dumps(body)
    except TypeError as exc:
        raise InvalidRequest(f"the request is not JSON-serialisable: {exc}") from exc
    if len(encoded) > MAX_REQUEST_BYTES:
        raise InvalidRequest(
            f"the request is {len(encoded)} bytes; the limit is {MAX_REQUEST_BYTES}"
        )
    return body


def streaming_body(body: dict[str, Any]) -> dict[str, Any]:
    """The body the worker sends: ``stream: true`` and usage asked for."""
    out = dict(body)
    out["stream"] = True
    options = dict(body.get("stream_options") or {})
    options["include_usage"] = True
    out["stream_options"] = options
    return out
