"""streamfan: stream one LLM reply to many readers, with replay and exact resume.

The public surface is ``__all__`` below: :class:`Client` and what it returns
(:class:`Submission`, :class:`Result`), :class:`Settings`, and the exception tree
of :mod:`streamfan.errors`. README.md ("From a backend service") holds the
example, run by the test suite as it stands (tests/integration/test_docs_samples.py).

``Client``, ``Submission`` and ``Result`` are imported on first use: the client
pulls in redis-py and arq (about 0.1 s), which the worker, the gateway and the
mock upstream import ``streamfan``'s pure modules without needing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamfan.errors import (
    ConfigError,
    HistoryGone,
    InvalidEvent,
    InvalidRequest,
    InvalidStreamId,
    RedisRefused,
    RedisUnavailable,
    StreamfanError,
    StreamNotFound,
    TokenError,
    UpstreamBadData,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamStalled,
    UpstreamStreamError,
    UpstreamTruncated,
)
from streamfan.settings import Settings

if TYPE_CHECKING:
    from streamfan.client import Client, Result, Submission

__all__ = [
    "Client",
    "ConfigError",
    "HistoryGone",
    "InvalidEvent",
    "InvalidRequest",
    "InvalidStreamId",
    "RedisRefused",
    "RedisUnavailable",
    "Result",
    "Settings",
    "StreamNotFound",
    "StreamfanError",
    "Submission",
    "TokenError",
    "UpstreamBadData",
    "UpstreamError",
    "UpstreamHTTPError",
    "UpstreamStalled",
    "UpstreamStreamError",
    "UpstreamTruncated",
]

_FROM_CLIENT = frozenset({"Client", "Result", "Submission"})


def __getattr__(name: str) -> Any:
    # PEP 562: only reached for names not set above, so this runs once per name.
    if name in _FROM_CLIENT:
        from streamfan import client

        value = getattr(client, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'streamfan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _FROM_CLIENT)
