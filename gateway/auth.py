"""Who may open a WebSocket, decided at the handshake (before any frame).

* ``Origin``: when ``STREAMFAN_ALLOWED_ORIGINS`` is set, a browser's ``Origin``
  must be in it (cross-site WebSocket hijacking: a page on another site opening
  a socket with the victim's token). Clients that are not browsers send no
  ``Origin`` and pass. Refused with HTTP 403.
* Token: ``?token=`` (browsers cannot set headers on a WebSocket) or
  ``Authorization: Bearer``; verified as HS256 with ``exp`` required
  (:func:`streamfan.tokens.verify_token`). Missing, malformed, expired or wrongly
  signed: HTTP 401 with the reason in the body.
* ``/streams/{ID}?from=…``: the id and position are checked here too (400), and
  the token must allow the stream (403).

No secret configured and ``--insecure-no-auth``: everyone gets
:data:`~streamfan.tokens.OPEN_GRANT`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, unquote

from streamfan.errors import TokenError
from streamfan.keys import is_valid_stream_id
from streamfan.positions import FROM_START, parse_position
from streamfan.settings import Settings
from streamfan.tokens import OPEN_GRANT, Grant, verify_token

WS_PATH = "/ws"
STREAMS_PATH = "/streams/"


@dataclass(frozen=True, slots=True)
class Admission:
    grant: Grant
    #: For ``/streams/{ID}``: subscribe to this stream on connect.
    stream: str | None = None
    position: str = FROM_START


@dataclass(frozen=True, slots=True)
class Refusal:
    status: HTTPStatus
    message: str


def is_websocket_path(path: str) -> bool:
    return path == WS_PATH or path.startswith(STREAMS_PATH)


def _token(query: dict[str, list[str]], header: Callable[[str], str | None]) -> str | None:
    values = query.get("token")
    if values and values[0]:
        return values[0]
    auth = header("Authorization")
    if auth:
        scheme, _, credentials = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


def split_target(target: str) -> tuple[str, str]:
    """(path, query) of an origin-form request target (``/streams/ID?from=0``).

    Not ``urllib.parse.urlsplit``: it keeps its last 128 results in an
    ``lru_cache``, and every handshake's target (stream id, token) is new, so the
    cache held 128 recent targets, their strings and ``SplitResult`` tuples,
    allocated among the connections' own objects. After a mass disconnect those
    few hundred survivors pinned pymalloc arenas of the departed connections
    (docs/benchmarks.md, memory).
    """
    path, _, query = target.partition("#")[0].partition("?")
    return path, query


def admit(
    settings: Settings, target: str, header: Callable[[str], str | None]
) -> Admission | Refusal:
    """Decide on a WebSocket handshake for ``target`` (path and query)."""
    origin = header("Origin")
    if settings.allowed_origins and origin is not None and origin not in settings.allowed_origins:
        return Refusal(HTTPStatus.FORBIDDEN, f"origin {origin!r} is not allowed")
    path, raw_query = split_target(target)
    query = parse_qs(raw_query)
    grant = _grant(settings, query, header)
    if isinstance(grant, Refusal):
        return grant
    if path == WS_PATH:
        return Admission(grant)
    stream = unquote(path[len(STREAMS_PATH) :])
    if not is_valid_stream_id(stream):
        return Refusal(HTTPStatus.BAD_REQUEST, "invalid stream id in the path")
    raw_from = query.get("from", [FROM_START])[0]
    position = parse_position(raw_from)
    if position is None:
        return Refusal(HTTPStatus.BAD_REQUEST, "invalid 'from': use 0, $ or a stream entry id")
    if not grant.can_read(stream):
        return Refusal(HTTPStatus.FORBIDDEN, f"token does not allow stream {stream!r}")
    return Admission(grant, stream, position)


def _grant(
    settings: Settings, query: dict[str, list[str]], header: Callable[[str], str | None]
) -> Grant | Refusal:
    if settings.jwt_secret is None:
        # Only reachable with insecure_no_auth: the gateway refuses to start otherwise.
        return OPEN_GRANT
    token = _token(query, header)
    if token is None:
        return Refusal(
            HTTPStatus.UNAUTHORIZED,
            "missing token: pass ?token=… or an 'Authorization: Bearer …' header",
        )
    try:
        return verify_token(settings.jwt_secret, token)
    except TokenError as exc:
        return Refusal(HTTPStatus.UNAUTHORIZED, str(exc))
