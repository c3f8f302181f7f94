"""Subscribe tokens: HS256 JWTs with a ``streams`` claim.

Claims: ``streams`` (list of stream ids, or ``"*"`` for all), optional
``cancel: true`` (may cancel those streams), optional ``submit: true`` (may
submit through the gateway's OpenAI-compatible door, and read and cancel what
it submitted there), ``exp`` (required). The algorithm
is pinned to HS256 on both sides, so a token signed with ``none`` or any other
algorithm is refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

from streamfan.errors import TokenError
from streamfan.keys import validate_stream_id

ALGORITHM = "HS256"
ALL_STREAMS = "*"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows."""

    streams: frozenset[str]
    cancel: bool
    expires_at: float
    submit: bool = False

    def can_read(self, stream_id: str) -> bool:
        return ALL_STREAMS in self.streams or stream_id in self.streams

    def can_cancel(self, stream_id: str) -> bool:
        return self.cancel and self.can_read(stream_id)


#: What an unauthenticated gateway (``--insecure-no-auth``) grants everyone.
OPEN_GRANT = Grant(
    streams=frozenset({ALL_STREAMS}), cancel=True, expires_at=float("inf"), submit=True
)


def mint_token(
    secret: str,
    streams: Iterable[str],
    *,
    ttl_s: float = 3600.0,
    cancel: bool = False,
    submit: bool = False,
    now: float | None = None,
) -> str:
    ids = list(streams)
    if not ids and not submit:
        raise TokenError("a token must name at least one stream (or '*')")
    for sid in ids:
        if sid != ALL_STREAMS:
            validate_stream_id(sid)
    if not secret:
        raise TokenError("no JWT secret configured (STREAMFAN_JWT_SECRET)")
    issued = time.time() if now is None else now
    claims: dict[str, object] = {
        "streams": ids,
        "iat": int(issued),
        "exp": int(issued + ttl_s),
    }
    if cancel:
        claims["cancel"] = True
    if submit:
        claims["submit"] = True
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str, *, leeway_s: float = 0.0) -> Grant:
    """Return the :class:`Grant` of a valid token; raise :class:`TokenError` otherwise."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp"]},
            leeway=leeway_s,
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"invalid token: {exc}") from exc
    streams = claims.get("streams")
    if isinstance(streams, str):
        streams = [streams]
    if not isinstance(streams, list) or not all(isinstance(s, str) for s in streams):
        raise TokenError("invalid token: claim 'streams' must be a list of stream ids")
    cancel = claims.get("cancel", False)
    if not isinstance(cancel, bool):
        raise TokenError("invalid token: claim 'cancel' must be a boolean")
    submit = claims.get("submit", False)
    if not isinstance(submit, bool):
        raise TokenError("invalid token: claim 'submit' must be a boolean")
    return Grant(
        streams=frozenset(streams),
        cancel=cancel,
        expires_at=float(claims["exp"]),
        submit=submit,
    )
