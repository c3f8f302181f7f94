"""Keeping secrets out of events and logs: one redaction function, and a log filter on it.

Two kinds of secret pass through streamfan's processes:

* **Secrets it holds** — the upstream API key, the JWT secret (and the HTTP
  door's API keys). An upstream or a proxy in front of it may echo the key back
  in an error message or a header, whole or cut short ("Incorrect API key
  provided: sk-proj-abcd…"). :func:`redact` masks every run of
  :data:`MIN_FRAGMENT` or more characters that occurs inside one of them, so
  neither an echo that was already truncated nor a length limit applied later
  can leave a usable piece behind. The rule for callers: **redact first, cut
  after** — a cut made before redaction can split the key so that neither half
  matches it whole (the bug this module replaced).
* **Secrets it only passes along** — clients' tokens, which it cannot list.
  They travel in ``?token=…``, ``Authorization:`` headers and cookies, and a JWT
  has a recognisable shape; :func:`mask_credentials` masks those shapes.

:class:`RedactingFilter` applies both to the final text of every log record
(message, traceback and stack), whatever its level: websockets logs each
handshake's request line and headers at DEBUG, and httpcore logs the upstream's
response headers at DEBUG. Pure: no I/O.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Final

REDACTED: Final = "[redacted]"
#: Runs of this many characters of a secret are masked wherever they appear:
#: shorter runs say too little about a random key to be worth mangling text over.
MIN_FRAGMENT: Final = 8

_JWT: Final = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
#: ``token=`` (or ``access_token=``, ``api_key=``…) in a query string or a form.
_QUERY: Final = re.compile(
    r"(?i)((?:[?&;]|\b)(?:access_)?(?:token|api[_-]?key|key|secret|password)=)[^&\s#\"'<>]+"
)
#: Header lines and ``Bearer`` credentials, as websockets and httpx log them.
_HEADER: Final = re.compile(
    r"(?im)^([<>]?\s*(?:proxy-)?(?:authorization|cookie|set-cookie|x-api-key|api-key)\s*:\s*).*$"
)
#: The same headers as httpcore logs them: ``(b'cookie', b'…')``.
_HEADER_TUPLE: Final = re.compile(
    r"(?i)(b?['\"](?:proxy-)?(?:authorization|cookie|set-cookie|x-api-key|api-key)['\"],\s*b?['\"])"
    r"[^'\"]*"
)
#: (Not a challenge's ``Bearer realm="…"``: that names no credential.)
_BEARER: Final = re.compile(r"(?i)\b(bearer\s+)(?![a-z]+=\")[^\s,;\"'<>]+")
#: A password in a URL (``redis://:pw@host``).
_USERINFO: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@")


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each secret, and every run of 8+ characters of one, masked.

    A secret shorter than :data:`MIN_FRAGMENT` is masked where it appears whole.
    Overlapping and adjacent matches become one ``[redacted]``.
    """
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        if not secret:
            continue
        if len(secret) < MIN_FRAGMENT:
            pieces = {secret}
        else:
            pieces = {secret[i : i + MIN_FRAGMENT] for i in range(len(secret) - MIN_FRAGMENT + 1)}
        # str.find per piece, not a Python loop per character: an 8 MB error
        # event with a key in it takes ~0.1 s instead of ~1 s.
        for piece in pieces:
            start = text.find(piece)
            while start >= 0:
                spans.append((start, start + len(piece)))
                start = text.find(piece, start + 1)
    if not spans:
        return text
    spans.sort()
    out: list[str] = []
    pos = 0
    start, end = spans[0]
    for s, e in spans[1:]:
        if s <= end:
            end = max(end, e)
            continue
        out.extend((text[pos:start], REDACTED))
        pos, start, end = end, s, e
    out.extend((text[pos:start], REDACTED, text[end:]))
    return "".join(out)


def mask_credentials(text: str) -> str:
    """``text`` with tokens in query strings, credential headers, bearers, URL
    passwords and JWTs masked."""
    if "=" in text:
        text = _QUERY.sub(r"\1" + REDACTED, text)
    if ":" in text:
        text = _HEADER.sub(r"\1" + REDACTED, text)
        if "@" in text:
            text = _USERINFO.sub(r"\1" + REDACTED + "@", text)
    if "," in text:
        text = _HEADER_TUPLE.sub(r"\1" + REDACTED, text)
    text = _BEARER.sub(r"\1" + REDACTED, text)
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    return text


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """:func:`redact` and :func:`mask_credentials`: what may go into a log line."""
    return mask_credentials(redact(text, secrets))


class RedactingFilter(logging.Filter):
    """Rewrites each record's text through :func:`scrub`; never drops a record.

    On a handler it covers every logger that propagates to it; on a logger, the
    records made by that logger (websockets' connection logger, say, when the
    gateway is embedded in an application that configures its own handlers).
    ``secrets`` may be replaced once the settings are known.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A broken log call (arguments that do not fit the format): said
            # so without its arguments (they may hold a secret), instead of
            # raising into the code that logged.
            record.msg, record.args = (
                f"unformattable log call at {record.pathname}:{record.lineno}",
                None,
            )
            return True
        cleaned = scrub(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # Formatted here (once: formatters reuse exc_text) so that what an
            # exception says — an upstream's bytes, a URL — is scrubbed too.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info, self.secrets)
        return True


def guard(target: logging.Filterer, secrets: Iterable[str] = ()) -> RedactingFilter:
    """Make sure ``target`` (a logger or a handler) has a :class:`RedactingFilter`
    that knows ``secrets`` too; return it."""
    extra = tuple(s for s in secrets if s)
    for existing in target.filters:
        if isinstance(existing, RedactingFilter):
            existing.secrets = tuple(dict.fromkeys((*existing.secrets, *extra)))
            return existing
    added = RedactingFilter(extra)
    target.addFilter(added)
    return added


def install(secrets: Iterable[str] = ()) -> None:
    """:func:`guard` every handler of the root logger: what a process configured
    (``streamfan``'s own command, arq's, an application's) is scrubbed."""
    wanted = tuple(secrets)
    for handler in logging.getLogger().handlers:
        guard(handler, wanted)
