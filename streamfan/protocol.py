"""The gateway's WebSocket protocol: client frames in, server messages out (pure).

Client → gateway: one JSON object per text frame, with an ``op``::

    {"op": "subscribe", "stream": "abc", "from": "0"}     # "0", "$" or an entry id
    {"op": "unsubscribe", "stream": "abc"}
    {"op": "cancel", "stream": "abc"}
    {"op": "ping"}

Gateway → client: one or more messages per text frame as JSON Lines (compact
JSON, ``\\n`` between messages, none after the last)::

    {"op":"subscribed","stream":"abc","status":"running","last_id":"1700000000000-0"}
    {"op":"event","stream":"abc","id":"1700000000000-1","event":{...}}
    {"op":"end","stream":"abc","status":"done"}
    {"op":"cancelling","stream":"abc","status":"running"}
    {"op":"error","stream":"abc","code":"not_found","message":"...","reply_to":"subscribe"}
    {"op":"pong"}

Every client message gets at most one answer: ``subscribe`` → ``subscribed``,
``cancel`` → ``cancelling``, ``ping`` → ``pong``, or an ``error`` whose
``reply_to`` names the op it answers. An ``error`` with ``reply_to`` null
answers a frame whose op could not be read, or answers nothing: a subscription
that was confirmed has failed since.

:func:`parse_frame` never raises on bad input: it returns an :class:`Invalid`
carrying the error code to send back (the websockets way: bad input becomes a
value, not an exception). Error codes and close codes are defined here once;
``docs/protocol.md`` explains each.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import orjson

from streamfan.keys import is_valid_stream_id
from streamfan.positions import FROM_START, parse_position

# --- error codes (the ``code`` of an ``error`` message) --------------------------

BAD_REQUEST: Final = "bad_request"
NOT_FOUND: Final = "not_found"
FORBIDDEN: Final = "forbidden"
TOO_MANY_SUBSCRIPTIONS: Final = "too_many_subscriptions"
TOO_SLOW: Final = "too_slow"
UNAVAILABLE: Final = "unavailable"
GONE: Final = "gone"
ERROR_CODES: Final = frozenset(
    {BAD_REQUEST, NOT_FOUND, FORBIDDEN, TOO_MANY_SUBSCRIPTIONS, TOO_SLOW, UNAVAILABLE, GONE}
)


# --- close codes -------------------------------------------------------------------


class CloseCode(enum.IntEnum):
    """WebSocket close codes the gateway sends, grouped like Centrifugo's.

    Reconnect (a client should reconnect, resuming each stream from the last id
    it saw): 1001, 1011, 4000-4499. Terminal (reconnecting the same way would
    fail the same way; fix the client first): 1008, 1009, 4500-4999.
    """

    #: The gateway is shutting down or restarting: reconnect (to another replica).
    GOING_AWAY = 1001
    #: The client sent messages faster than ``STREAMFAN_MAX_MESSAGES_PER_S``.
    FLOOD = 1008
    #: A client frame exceeded ``STREAMFAN_MAX_FRAME_BYTES`` (sent by websockets).
    MESSAGE_TOO_BIG = 1009
    #: An unexpected error in the gateway: reconnect.
    INTERNAL_ERROR = 1011
    #: The client did not read fast enough (its unsent buffer outgrew the limit).
    TOO_SLOW = 4000
    #: The token's ``exp`` passed: reconnect with a fresh token.
    TOKEN_EXPIRED = 4001
    #: A bare ``/ws`` connection sent no message in time.
    IDLE = 4002

    @property
    def reconnect(self) -> bool:
        return should_reconnect(self.value)


#: The close reason sent with each code (at most 123 bytes by RFC 6455).
CLOSE_REASONS: Final[dict[CloseCode, str]] = {
    CloseCode.GOING_AWAY: "going away",
    CloseCode.FLOOD: "flood: too many messages",
    CloseCode.MESSAGE_TOO_BIG: "frame too big",
    CloseCode.INTERNAL_ERROR: "internal error",
    CloseCode.TOO_SLOW: TOO_SLOW,
    CloseCode.TOKEN_EXPIRED: "token expired",
    CloseCode.IDLE: "no message received in time",
}

#: Standard codes after which reconnecting the same way fails the same way:
#: protocol error, unsupported data, invalid payload, policy (our flood), frame
#: too big, missing extension. ``gateway/static/streamfan.js`` holds the same set
#: and ranges (tests/unit/test_js_protocol.py compares them).
TERMINAL_STANDARD_CLOSE_CODES: Final = frozenset({1002, 1003, 1007, 1008, 1009, 1010})
#: Our application codes: the first range reconnects, the second is terminal.
RECONNECT_CLOSE_RANGE: Final = (4000, 4499)
TERMINAL_CLOSE_RANGE: Final = (4500, 4999)


def should_reconnect(code: int) -> bool:
    """Whether a client closed with ``code`` should reconnect and resume.

    Every code not known to be terminal reconnects — 1001, 1006 (no close frame:
    the network dropped), 1011, 1012-1014, but also 1000 or a code a proxy in
    between made up: a reconnect that resumes from the last id loses nothing,
    while giving up on a code nobody meant as final loses the stream.
    """
    if RECONNECT_CLOSE_RANGE[0] <= code <= RECONNECT_CLOSE_RANGE[1]:
        return True
    if TERMINAL_CLOSE_RANGE[0] <= code <= TERMINAL_CLOSE_RANGE[1]:
        return False
    return code not in TERMINAL_STANDARD_CLOSE_CODES


# --- client operations -----------------------------------------------------------------

SUBSCRIBE: Final = "subscribe"
UNSUBSCRIBE: Final = "unsubscribe"
CANCEL: Final = "cancel"
PING: Final = "ping"
OPS: Final = (SUBSCRIBE, UNSUBSCRIBE, CANCEL, PING)


@dataclass(frozen=True, slots=True)
class Subscribe:
    op: ClassVar[str] = SUBSCRIBE
    stream: str
    #: ``"$"`` or a normalised entry id (``"0-0"`` for everything).
    position: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    op: ClassVar[str] = UNSUBSCRIBE
    stream: str


@dataclass(frozen=True, slots=True)
class Cancel:
    op: ClassVar[str] = CANCEL
    stream: str


@dataclass(frozen=True, slots=True)
class Ping:
    op: ClassVar[str] = PING


@dataclass(frozen=True, slots=True)
class Invalid:
    """A frame the gateway refuses: answer with an ``error`` message, keep the connection."""

    code: str
    message: str
    stream: str | None = None
    #: The op of the refused message; None when no known op could be read from it.
    reply_to: str | None = None


ClientOp = Subscribe | Unsubscribe | Cancel | Ping


def _stream_field(msg: dict[str, Any], op: str) -> str | Invalid:
    if "stream" not in msg:
        return Invalid(BAD_REQUEST, "missing field 'stream'", reply_to=op)
    stream = msg["stream"]
    if not isinstance(stream, str):
        return Invalid(BAD_REQUEST, "field 'stream' must be a string", reply_to=op)
    if not is_valid_stream_id(stream):
        return Invalid(
            BAD_REQUEST,
            "invalid stream id: must be 1-128 characters of A-Z a-z 0-9 . _ : -",
            reply_to=op,
        )
    return stream


def parse_frame(data: str | bytes) -> ClientOp | Invalid:
    """Turn one client frame into an operation, or into the error to answer it with."""
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError:
        return Invalid(BAD_REQUEST, "frame is not valid JSON")
    if not isinstance(msg, dict):
        return Invalid(BAD_REQUEST, "a message must be a JSON object")
    if "op" not in msg:
        return Invalid(BAD_REQUEST, "missing field 'op'")
    op = msg["op"]
    if not isinstance(op, str):
        return Invalid(BAD_REQUEST, "field 'op' must be a string")
    if op == PING:
        return Ping()
    if op not in OPS:
        shown = op if len(op) <= 40 else op[:37] + "..."
        return Invalid(BAD_REQUEST, f"unknown op {shown!r}: expected one of {', '.join(OPS)}")
    stream = _stream_field(msg, op)
    if isinstance(stream, Invalid):
        return stream
    if op == UNSUBSCRIBE:
        return Unsubscribe(stream)
    if op == CANCEL:
        return Cancel(stream)
    raw_from = msg.get("from", FROM_START)
    if not isinstance(raw_from, str):
        return Invalid(BAD_REQUEST, "field 'from' must be a string", stream, SUBSCRIBE)
    position = parse_position(raw_from)
    if position is None:
        return Invalid(
            BAD_REQUEST,
            'invalid \'from\': use "0", "$" or a stream entry id like "1700000000000-0"',
            stream,
            SUBSCRIBE,
        )
    return Subscribe(stream, position)


# --- server messages ----------------------------------------------------------------------

PONG: Final = b'{"op":"pong"}'
#: Messages in one frame are separated by this (JSON Lines).
LINE_SEPARATOR: Final = b"\n"


def subscribed(stream: str, status: str, last_id: str | None = None) -> bytes:
    """The answer to ``subscribe``: events follow, each with an id after ``last_id``.

    ``last_id`` is the entry id the subscription is positioned after (``"$"``
    resolved; ``"0-0"`` for the whole stream): a client that drops before its
    first event resumes with ``from`` = ``last_id``. The gateway always gives
    it; None (sent as null) is for stand-ins that know no position.
    """
    return orjson.dumps(
        {"op": "subscribed", "stream": stream, "status": status, "last_id": last_id}
    )


def end(stream: str, status: str) -> bytes:
    return orjson.dumps({"op": "end", "stream": stream, "status": status})


def cancelling(stream: str, status: str) -> bytes:
    """The answer to an accepted ``cancel``: ``status`` is the stream's status after it.

    ``running``: the worker was told to stop and writes ``cancelled`` shortly
    (unless it finishes first); ``cancelled``: it was queued and is now over, or
    was cancelled before; ``done`` or ``error``: it had already finished.
    """
    return orjson.dumps({"op": "cancelling", "stream": stream, "status": status})


def error(stream: str | None, code: str, message: str, *, reply_to: str | None) -> bytes:
    """An ``error``; ``reply_to``: the op it answers, None if it answers no readable op."""
    return orjson.dumps(
        {"op": "error", "stream": stream, "code": code, "message": message, "reply_to": reply_to}
    )


def event_prefix(stream: str) -> bytes:
    """The constant head of every ``event`` message of one stream (computed once per stream)."""
    if not is_valid_stream_id(stream):
        raise ValueError(f"invalid stream id {stream!r}")
    # Valid ids need no JSON escaping, so the bytes can be spliced as they are.
    return b'{"op":"event","stream":"' + stream.encode() + b'","id":"'


def event_line(prefix: bytes, entry_id: bytes, event_json: bytes) -> bytes:
    """One ``event`` message, splicing the stored event JSON in without re-encoding it.

    ``event_json`` is the entry's ``e`` field as the worker wrote it (compact JSON,
    never a raw newline). Should a foreign writer have stored one with a raw
    newline, it is re-encoded so the JSON Lines framing holds.
    """
    if LINE_SEPARATOR in event_json:
        event_json = orjson.dumps(orjson.loads(event_json))
    return b"".join((prefix, entry_id, b'","event":', event_json, b"}"))


def join_lines(lines: list[bytes]) -> bytes:
    return lines[0] if len(lines) == 1 else LINE_SEPARATOR.join(lines)


def split_frame(frame: str | bytes) -> list[dict[str, Any]]:
    """A client's view: the messages in one server frame."""
    data = frame.encode() if isinstance(frame, str) else frame
    return [orjson.loads(line) for line in data.split(LINE_SEPARATOR) if line]


_TYPE_HEAD: Final = b'{"type":"'


def event_type(event_json: bytes) -> str | None:
    """The ``type`` of a stored event, cheaply.

    The worker's encoder writes ``type`` first, so reading up to the closing
    quote is O(1); anything else falls back to a full parse.
    """
    if event_json.startswith(_TYPE_HEAD):
        close = event_json.find(b'"', len(_TYPE_HEAD))
        if close > 0 and b"\\" not in event_json[len(_TYPE_HEAD) : close]:
            return event_json[len(_TYPE_HEAD) : close].decode("utf-8", "replace")
    try:
        obj = orjson.loads(event_json)
    except orjson.JSONDecodeError:
        return None
    etype = obj.get("type") if isinstance(obj, dict) else None
    return etype if isinstance(etype, str) else None
