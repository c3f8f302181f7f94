"""Redis key names and stream-id validation: the one place they are spelled.

Every key of one stream carries the stream id in braces, a Redis Cluster hash
tag, so all of them live in one slot and one Lua script may touch them all.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Final

from streamfan.errors import InvalidStreamId

DEFAULT_PREFIX = "streamfan"

#: Valid ids match this (1-128 characters of A-Z a-z 0-9 . _ : -); anything else
#: never reaches Redis.
STREAM_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: The field of a stream entry that holds the event as compact JSON.
EVENT_FIELD: Final = "e"

#: What follows :meth:`Keys.base` in each key of a stream (the Lua scripts get
#: them from here too: :data:`streamfan.scripts.CONSTANTS`).
META_SUFFIX: Final = ":meta"
EVENTS_SUFFIX: Final = ":events"
LIVE_SUFFIX: Final = ":live"
LEASE_SUFFIX: Final = ":lease"

#: Name of the arq job function; the arq job id *is* the stream id.
JOB_FUNCTION = "chat_stream"


def validate_stream_id(stream_id: object) -> str:
    """Return ``stream_id`` if it is a valid id, else raise :class:`InvalidStreamId`."""
    if not isinstance(stream_id, str) or STREAM_ID_RE.fullmatch(stream_id) is None:
        raise InvalidStreamId(stream_id)
    return stream_id


def is_valid_stream_id(stream_id: object) -> bool:
    return isinstance(stream_id, str) and STREAM_ID_RE.fullmatch(stream_id) is not None


def new_stream_id() -> str:
    """A fresh id with 122 bits of randomness (uuid4, hex without dashes)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix. ``Keys("streamfan").events("abc")``."""

    prefix: str = DEFAULT_PREFIX

    def base(self, stream_id: str) -> str:
        """What every key of the stream starts with; a ``*_SUFFIX`` follows.

        ``scripts.APPEND_MANY`` builds the keys from it in Lua with the same suffixes.
        """
        return f"{self.prefix}:{{{stream_id}}}"

    def events(self, stream_id: str) -> str:
        """Stream: one entry per event, field ``e``."""
        return self.base(stream_id) + EVENTS_SUFFIX

    def meta(self, stream_id: str) -> str:
        """Hash: status, timestamps, model, attempt, owner, usage, finish_reason, error."""
        return self.base(stream_id) + META_SUFFIX

    def live(self, stream_id: str) -> str:
        """Pub/sub channel: wake-ups for gateways after each write."""
        return self.base(stream_id) + LIVE_SUFFIX

    def lease(self, stream_id: str) -> str:
        """String: the token of the worker attempt that currently owns the stream."""
        return self.base(stream_id) + LEASE_SUFFIX

    @property
    def durability(self) -> str:
        """String (with a TTL): written just before a WAITAOF, so it covers every earlier write."""
        return f"{self.prefix}:durability"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel: stream ids whose jobs were cancelled (workers listen)."""
        return f"{self.prefix}:cancel"

    @property
    def jobs_channel(self) -> str:
        """Pub/sub channel: a nudge after each enqueue, so idle workers poll at once."""
        return f"{self.prefix}:jobs"

    @property
    def open_streams(self) -> str:
        """Sorted set on the queue's Redis: stream ids not known to be finished, scored
        by when the orphan sweep last looked at them (ms). Not a per-stream key, so it
        lives beside arq's queue, never on an events Redis Cluster."""
        return f"{self.prefix}:open"

    def stream_id_from_live(self, channel: str) -> str | None:
        """Inverse of :meth:`live`, or None if ``channel`` is not one of ours."""
        head = f"{self.prefix}:{{"
        tail = "}" + LIVE_SUFFIX
        if channel.startswith(head) and channel.endswith(tail):
            sid = channel[len(head) : -len(tail)]
            return sid if is_valid_stream_id(sid) else None
        return None


#: Meta hash fields.
class Meta:
    STATUS = "status"
    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"
    MODEL = "model"
    ATTEMPT = "attempt"
    OWNER = "owner"
    USAGE = "usage"
    FINISH_REASON = "finish_reason"
    ERROR = "error"
    #: Set by a cancel request; the worker stops at once when it sees it.
    CANCEL = "cancel"
    #: Id of the newest entry written (used to prove a wake-up skipped nothing).
    LAST_ID = "last_id"
    #: How many events the current attempt has written (makes writes idempotent).
    SEQ = "seq"
    #: With STREAMFAN_DURABLE_FINISH: the terminal event an attempt decided on, and
    #: the status it leaves, written (and made durable) before the terminal entry.
    #: A next attempt that finds them writes that end instead of generating again.
    FINISHING = "finishing"
    FINISHING_STATUS = "finishing_status"
    #: Written by the gateway's OpenAI door at submit: the SHA-256 of the request
    #: (a second submit with its ``Idempotency-Key`` must match it, else 409)...
    REQUEST_DIGEST = "request_digest"
    #: ...and whether it asked for the usage chunk (``stream_options.include_usage``).
    INCLUDE_USAGE = "include_usage"
