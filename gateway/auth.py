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

A bearer equal to one of ``STREAMFAN_API_KEYS`` (compared in constant time,
never logged) is a backend's key: it may read, cancel and submit everything
(:data:`API_KEY_GRANT`). The HTTP doors (:mod:`gateway.doors`) take the same
credentials through :func:`credentials`.

No secret configured and ``--insecure-no-auth``: everyone gets
:data:`~streamfan.tokens.OPEN_GRANT`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

from streamfan.errors import ConfigError, TokenError
from streamfan.keys import is_valid_stream_id
from streamfan.positions import FROM_START, parse_position
from streamfan.settings import Settings
from streamfan.tokens import ALL_STREAMS, OPEN_GRANT, Grant, verify_token

log = logging.getLogger("gateway.server")

WS_PATH = "/ws"
STREAMS_PATH = "/streams/"

#: What a key of ``STREAMFAN_API_KEYS`` allows.
API_KEY_GRANT = Grant(
    streams=frozenset({ALL_STREAMS}), cancel=True, expires_at=float("inf"), submit=True
)


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


def admit(
    settings: Settings, target: str, header: Callable[[str], str | None]
) -> Admission | Refusal:
    """Decide on a WebSocket handshake for ``target`` (path and query)."""
    origin = header("Origin")
    if settings.allowed_origins and origin is not None and origin not in settings.allowed_origins:
        return Refusal(HTTPStatus.FORBIDDEN, f"origin {origin!r} is not allowed")
    url = urlsplit(target)
    query = parse_qs(url.query)
    grant = _grant(settings, query, header)
    if isinstance(grant, Refusal):
        return grant
    if url.path == WS_PATH:
        return Admission(grant)
    stream = unquote(url.path[len(STREAMS_PATH) :])
    if not is_valid_stream_id(stream):
        return Refusal(HTTPStatus.BAD_REQUEST, "invalid stream id in the path")
    raw_from = query.get("from", [FROM_START])[0]
    position = parse_position(raw_from)
    if position is None:
        return Refusal(HTTPStatus.BAD_REQUEST, "invalid 'from': use 0, $ or a stream entry id")
    if not grant.can_read(stream):
        return Refusal(HTTPStatus.FORBIDDEN, f"token does not allow stream {stream!r}")
    return Admission(grant, stream, position)


def is_api_key(settings: Settings, token: str) -> bool:
    presented = token.encode()
    # Every key is compared, each in constant time: neither the match nor its
    # position shows in the timing.
    found = False
    for key in settings.api_keys:
        found |= hmac.compare_digest(presented, key.encode())
    return found


def credentials(
    settings: Settings, query: dict[str, list[str]], header: Callable[[str], str | None]
) -> Grant | Refusal:
    """What the request's credential allows (``?token=`` or ``Authorization: Bearer``)."""
    return _grant(settings, query, header)


def _grant(
    settings: Settings, query: dict[str, list[str]], header: Callable[[str], str | None]
) -> Grant | Refusal:
    token = _token(query, header)
    if token is not None and settings.api_keys and is_api_key(settings, token):
        return API_KEY_GRANT
    if settings.jwt_secret is None:
        # Only reachable with insecure_no_auth: the gateway refuses to start otherwise.
        return OPEN_GRANT
    if token is None:
        return Refusal(
            HTTPStatus.UNAUTHORIZED,
            "missing token: pass ?token=… or an 'Authorization: Bearer …' header",
        )
    try:
        return verify_token(settings.jwt_secret, token)
    except TokenError as exc:
        return Refusal(HTTPStatus.UNAUTHORIZED, str(exc))


def require_a_secret(settings: Settings) -> None:
    """Refuse to serve without a JWT secret, unless told to (and then say so loudly)."""
    if settings.jwt_secret is not None:
        return
    if not settings.insecure_no_auth:
        raise ConfigError(
            "STREAMFAN_JWT_SECRET",
            "the gateway needs a secret to verify tokens; set it, or run with "
            "--insecure-no-auth (STREAMFAN_INSECURE_NO_AUTH=1) to let anyone read "
            "and cancel every stream",
        )
    log.warning(
        "INSECURE: no STREAMFAN_JWT_SECRET and --insecure-no-auth: ANYONE who can "
        "reach this gateway may read and cancel EVERY stream"
    )
