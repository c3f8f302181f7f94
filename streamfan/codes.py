"""The codes of ``error`` events: the one table of them.

Every ``error`` event a worker writes carries one of these codes. The worker,
the exception tree (:mod:`streamfan.errors`) and the table in ``docs/events.md``
take them from here (``tests/unit/test_codes.py`` fails if the docs differ from
:func:`markdown_table` or a code is spelled anywhere else). A new code is a new
:class:`ErrorCode` below and a row in :data:`TABLE`. These are not the gateway's
protocol error codes (``not_found``, ``gone``...: :mod:`streamfan.protocol`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    #: When a worker writes it (Markdown: this is the docs' column).
    when: str
    #: The event's ``retryable``: the worker tried again first, and submitting
    #: again may work.
    retryable: bool
    #: Where it is raised or built.
    raised_in: tuple[str, ...]
    #: Set when ``retryable`` depends on the failure; ``retryable`` is then the default.
    retryable_when: str = ""


UPSTREAM_HTTP_ERROR: Final = ErrorCode(
    "upstream_http_error",
    "the upstream answered 4xx/5xx before streaming (`upstream_status` set; its own"
    " error message, never our headers)",
    False,
    ("worker/upstream.py",),
    retryable_when="yes for a status in `RETRYABLE_STATUSES` (worker/upstream.py: 408, 409,"
    " 425, 429 and the transient 5xx), else no",
)
UPSTREAM_UNREACHABLE: Final = ErrorCode(
    "upstream_unreachable",
    "connect error or connect timeout",
    True,
    ("worker/upstream.py",),
)
UPSTREAM_DISCONNECTED: Final = ErrorCode(
    "upstream_disconnected",
    "the connection dropped mid-reply",
    True,
    ("worker/upstream.py",),
)
UPSTREAM_REQUEST_FAILED: Final = ErrorCode(
    "upstream_request_failed",
    "any other failure of the HTTP request (httpx: a proxy error, a body that does not"
    " decode, an unsupported URL...)",
    True,
    ("worker/upstream.py",),
)
UPSTREAM_STALLED: Final = ErrorCode(
    "upstream_stalled",
    "no bytes for `STREAMFAN_UPSTREAM_READ_TIMEOUT_S`, or no content (keep-alive comments"
    " only) for `STREAMFAN_UPSTREAM_IDLE_TIMEOUT_S`",
    True,
    ("worker/upstream.py", "worker/job.py"),
)
UPSTREAM_TRUNCATED: Final = ErrorCode(
    "upstream_truncated",
    "the body ended with neither `[DONE]` nor a `finish_reason`",
    True,
    ("worker/translate.py",),
)
UPSTREAM_BAD_DATA: Final = ErrorCode(
    "upstream_bad_data",
    "a data line that is not a JSON object, or an event over the size limit",
    True,
    ("worker/translate.py", "worker/sse.py"),
)
UPSTREAM_STREAM_ERROR: Final = ErrorCode(
    "upstream_stream_error",
    "a chunk carried an `error` object (the deltas before it are kept)",
    False,
    ("worker/translate.py",),
)
INVALID_REQUEST: Final = ErrorCode(
    "invalid_request",
    "the job's body is not a valid chat request",
    False,
    ("worker/job.py",),
)
TIMEOUT: Final = ErrorCode(
    "timeout",
    "the reply ran longer than `STREAMFAN_JOB_TIMEOUT_S`",
    False,
    ("worker/job.py",),
)
ATTEMPTS_EXHAUSTED: Final = ErrorCode(
    "attempts_exhausted",
    "the job was started more than `STREAMFAN_MAX_ATTEMPTS` times (e.g. its workers kept dying)",
    False,
    ("worker/publisher.py",),
)
INVALID_JOB: Final = ErrorCode(
    "invalid_job",
    "arq could not decode or call the job (a pickled payload, broken JSON, another function,"
    " unknown or missing arguments); the message names what was wrong, never argument values",
    False,
    ("streamfan/serialization.py", "worker/job.py"),
)
ORPHANED: Final = ErrorCode(
    "orphaned",
    "the job vanished from the queue (a flushed queue, a lost AOF tail, a deleted key, a"
    " producer that died before enqueueing) while no worker held the stream: found by the"
    " orphan sweep (the body was in the lost job: submit it again)",
    True,
    ("worker/sweep.py",),
)

#: Every code, in the docs' order.
TABLE: Final[dict[str, ErrorCode]] = {
    c.code: c
    for c in (
        UPSTREAM_HTTP_ERROR,
        UPSTREAM_UNREACHABLE,
        UPSTREAM_DISCONNECTED,
        UPSTREAM_REQUEST_FAILED,
        UPSTREAM_STALLED,
        UPSTREAM_TRUNCATED,
        UPSTREAM_BAD_DATA,
        UPSTREAM_STREAM_ERROR,
        INVALID_REQUEST,
        TIMEOUT,
        ATTEMPTS_EXHAUSTED,
        INVALID_JOB,
        ORPHANED,
    )
}


def markdown_table() -> str:
    """The table ``docs/events.md`` holds between its ``error-codes`` markers."""
    rows = [
        "| code | when | `retryable` (retried first) | raised in |",
        "| --- | --- | --- | --- |",
    ]
    for c in TABLE.values():
        retryable = c.retryable_when or ("yes" if c.retryable else "no")
        where = ", ".join(f"`{path}`" for path in c.raised_in)
        rows.append(f"| `{c.code}` | {c.when} | {retryable} | {where} |")
    return "\n".join(rows)
