"""streamfan: stream one LLM reply to many readers, with replay and exact resume."""

from __future__ import annotations

from streamfan.errors import (
    ConfigError,
    InvalidEvent,
    InvalidRequest,
    InvalidStreamId,
    RedisUnavailable,
    StreamfanError,
    StreamNotFound,
    TokenError,
    UpstreamError,
)
from streamfan.settings import Settings

__all__ = [
    "ConfigError",
    "InvalidEvent",
    "InvalidRequest",
    "InvalidStreamId",
    "RedisUnavailable",
    "Settings",
    "StreamNotFound",
    "StreamfanError",
    "TokenError",
    "UpstreamError",
]
