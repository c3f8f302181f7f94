"""Positions in a stream: entry ids, ``"0"`` and ``"$"`` — the one parser of them.

A Redis stream entry id is ``<ms>-<seq>``, two unsigned 64-bit integers. As a
*position* a reader gives one of:

* ``"0"`` (:data:`FROM_START`): everything; the same as the id ``0-0``;
* ``"$"`` (:data:`FROM_NOW`): only what comes next (resolved against the meta's
  ``last_id`` when the reader starts);
* an entry id: everything after it. ``"1700000000000"`` means ``1700000000000-0``,
  as Redis reads it.

Inside streamfan an id is an :data:`Id`, a comparable ``(ms, seq)`` pair;
:func:`format_id` gives the bytes Redis writes. Every id that crosses a
boundary (a client's ``from``, a ``Last-Event-ID``, a row Redis returned) goes
through :func:`parse_id` or :func:`parse_position`, so they cannot disagree on
what a valid id is.
"""

from __future__ import annotations

from typing import Final

from streamfan.errors import InvalidRequest

#: An entry id as a comparable ``(ms, seq)`` pair.
Id = tuple[int, int]

FROM_START: Final = "0"
FROM_NOW: Final = "$"
#: The id before every entry: ``"0"`` resolves to it.
ZERO: Final[Id] = (0, 0)
#: :data:`ZERO` as Redis spells it (the Lua scripts' "no entry yet").
ZERO_RAW: Final = b"0-0"

#: Redis stream ids are two unsigned 64-bit integers (at most 20 digits each).
_U64_MAX: Final = 2**64 - 1
_DIGITS_MAX: Final = 20


def _part(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > _DIGITS_MAX:
        raise ValueError
    value = int(text)
    if value > _U64_MAX:
        raise ValueError
    return value


def parse_id(entry_id: bytes | str) -> Id:
    """``"ms-seq"`` (or ``"ms"``) as an :data:`Id`; raises ValueError if invalid."""
    text = entry_id.decode("ascii", "replace") if isinstance(entry_id, bytes) else entry_id
    ms, sep, seq = text.partition("-")
    try:
        return _part(ms), _part(seq) if sep else 0
    except ValueError:
        raise ValueError(f"invalid stream entry id {text!r}") from None


def format_id(entry_id: Id) -> bytes:
    return b"%d-%d" % entry_id


def parse_position(value: object) -> str | None:
    """``"$"``, or an entry id normalised to ``ms-seq`` (``"0"`` → ``"0-0"``); None if invalid."""
    if not isinstance(value, str):
        return None
    if value == FROM_NOW:
        return value
    try:
        return format_id(parse_id(value)).decode()
    except ValueError:
        return None


def validate_position(position: str) -> str:
    """:func:`parse_position`, raising :class:`~streamfan.errors.InvalidRequest` if invalid."""
    normalised = parse_position(position)
    if normalised is None:
        raise InvalidRequest(
            f"invalid position {position!r}: use '0', '$' or a stream entry id like 1700000000000-0"
        )
    return normalised
