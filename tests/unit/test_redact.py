"""streamfan.redact, and every place upstream text is cut: no piece of a secret survives.

The property behind each test: put the key at every offset of a long message (or
header block), run it through the code path that carries it to an event or a
log line, and no run of 8 or more of the key's characters is left.
"""

from __future__ import annotations

import logging
import sys

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfan.errors import UpstreamStreamError
from streamfan.redact import MIN_FRAGMENT, REDACTED, RedactingFilter, mask_credentials, redact
from worker.sse import ServerSentEvent
from worker.translate import CODE_LIMIT, MESSAGE_LIMIT, Translator
from worker.upstream import error_message

FIXED = settings(deadline=None, derandomize=True, database=None)
KEY = "sk-proj-Zq8Xv3Lm0Pa7Rt5Wn2Yc9Hd4Kb6Gf1Js"
#: Text around the key: letters and punctuation, none of which make up a key run.
filler = st.text(alphabet="abcdefghij .,:;!?-_/", max_size=40)


def leaked(text: str, key: str = KEY) -> list[str]:
    """Every run of MIN_FRAGMENT characters of ``key`` that occurs in ``text``."""
    return [
        key[i : i + MIN_FRAGMENT]
        for i in range(len(key) - MIN_FRAGMENT + 1)
        if key[i : i + MIN_FRAGMENT] in text
    ]


def placed(offset: int, size: int, pad: str) -> str:
    """A message of about ``size`` characters with the key at ``offset``."""
    body = (pad * (size // max(len(pad), 1) + 1))[:size] if pad else "x" * size
    return body[:offset] + KEY + body[offset:]


# --- the function ----------------------------------------------------------------------


def test_the_whole_key_becomes_one_marker() -> None:
    assert redact(f"bad key {KEY}!", [KEY]) == f"bad key {REDACTED}!"


def test_a_piece_of_the_key_an_upstream_echoed_is_masked_too() -> None:
    assert redact(f"Incorrect API key provided: {KEY[:14]}****", [KEY]) == (
        f"Incorrect API key provided: {REDACTED}****"
    )


def test_a_run_shorter_than_eight_characters_is_left() -> None:
    assert redact("prefix sk-proj plus", [KEY]) == "prefix sk-proj plus"


def test_a_short_secret_is_masked_where_it_appears_whole() -> None:
    assert redact("key sk-mock**** and sk-mo", ["sk-mock"]) == f"key {REDACTED}**** and sk-mo"


def test_overlapping_and_repeated_secrets_leave_no_trace() -> None:
    text = KEY + KEY[5:] + " " + KEY
    assert redact(text, [KEY, KEY[3:20]]) == f"{REDACTED} {REDACTED}"


def test_empty_secrets_change_nothing() -> None:
    assert redact("abc", ["", ""]) == "abc"


@FIXED
@given(st.integers(0, 1200), filler, st.integers(MIN_FRAGMENT, len(KEY)))
def test_redacting_first_and_cutting_after_leaves_no_run_of_the_key(
    offset: int, pad: str, length: int
) -> None:
    # A prefix of the key stands for keys of every length.
    key = KEY[:length]
    text = placed(offset, 1200, pad).replace(KEY, key)
    for limit in (MESSAGE_LIMIT, offset, offset + length // 2, offset + length - 1):
        assert leaked(redact(text, [key])[:limit], key) == []


# --- every cut in the worker ------------------------------------------------------------


@FIXED
@given(st.integers(0, MESSAGE_LIMIT + 60), filler)
def test_an_http_error_message_never_carries_a_run_of_the_key(offset: int, pad: str) -> None:
    message = placed(offset, MESSAGE_LIMIT + 100, pad)
    for body in (
        {"error": {"message": message, "type": "invalid_request_error"}},
        {"error": message},
        {"message": message},
    ):
        got = error_message(orjson.dumps(body), 400, (KEY,))
        assert len(got) <= MESSAGE_LIMIT
        assert leaked(got) == []


def test_at_every_offset_around_the_limits_no_run_of_the_key_survives() -> None:
    # Exhaustive where it matters: every offset from the start to past each cut.
    for offset in range(MESSAGE_LIMIT + len(KEY) + 2):
        message = placed(offset, MESSAGE_LIMIT + 50, "ab ")
        got = error_message(orjson.dumps({"error": {"message": message}}), 400, (KEY,))
        assert leaked(got) == [], offset
        err = {"message": message, "code": placed(offset % (CODE_LIMIT + 10), CODE_LIMIT, "c")}
        with pytest.raises(UpstreamStreamError) as info:
            Translator(secrets=[KEY]).feed(orjson.dumps({"error": err}).decode())
        assert leaked(info.value.message) == [], offset


def test_a_key_that_straddles_the_message_limit_is_not_cut_in_half() -> None:
    # The finding: cut to 500 first, the key's first half no longer matched it whole.
    message = "x" * (MESSAGE_LIMIT - 10) + KEY + " is not valid"
    assert leaked(error_message(orjson.dumps({"error": {"message": message}}), 401, (KEY,))) == []


@FIXED
@given(st.integers(0, MESSAGE_LIMIT + 60), st.integers(0, CODE_LIMIT + 10), filler)
def test_a_mid_stream_error_never_carries_a_run_of_the_key(
    message_at: int, code_at: int, pad: str
) -> None:
    err = {
        "message": placed(message_at, MESSAGE_LIMIT + 100, pad),
        "code": placed(code_at, CODE_LIMIT + 20, pad),
    }
    for sse in (
        ServerSentEvent(orjson.dumps({"error": err}).decode()),
        ServerSentEvent(orjson.dumps(err).decode(), event="error"),
        ServerSentEvent(err["message"], event="error"),
    ):
        with pytest.raises(UpstreamStreamError) as info:
            Translator(secrets=[KEY]).feed(sse)
        assert len(info.value.message) <= MESSAGE_LIMIT
        assert leaked(info.value.message) == []


def test_a_key_that_straddles_the_code_limit_is_not_cut_in_half() -> None:
    err = {"message": "m", "code": "c" * (CODE_LIMIT - 8) + KEY}
    with pytest.raises(UpstreamStreamError) as info:
        Translator(secrets=[KEY]).feed(orjson.dumps({"error": err}).decode())
    assert leaked(info.value.message) == []


# --- logs ------------------------------------------------------------------------------


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(f"upstream said {KEY}")
        except RuntimeError:
            exc_info = sys.exc_info()
    return logging.LogRecord("t", logging.DEBUG, __file__, 1, msg, args or None, exc_info)


def formatted(rec: logging.LogRecord, secrets: tuple[str, ...] = (KEY,)) -> str:
    assert RedactingFilter(secrets).filter(rec)
    return logging.Formatter("%(message)s").format(rec)


@FIXED
@given(st.integers(0, 2000), st.integers(1, 40), filler)
def test_response_headers_logged_at_debug_never_carry_a_run_of_the_key(
    offset: int, count: int, pad: str
) -> None:
    # httpcore logs the upstream's response headers at DEBUG as a list of tuples.
    headers = [(b"x-h%d" % i, (pad * 3).encode() or b"v") for i in range(count)]
    text = placed(min(offset, 30 * count), 30 * count, str(headers))
    rec = record("receive_response_headers.complete return_value=%s", text)
    assert leaked(formatted(rec)) == []


def test_a_traceback_is_scrubbed_as_well_as_the_message() -> None:
    text = formatted(record("attempt failed: %s", KEY, exc=True))
    assert "RuntimeError" in text
    assert leaked(text) == []


@pytest.mark.parametrize(
    "line",
    [
        "< GET /ws?token=eyJhbGciOiJIUzI1NiJ9.eyJzdHJlYW1zIjpbIioiXX0.c2ln HTTP/1.1",
        "< GET /streams/s1?from=0&token=opaque-client-token&x=1 HTTP/1.1",
        "< Authorization: Bearer opaque-client-token",
        "< authorization: Basic b3BhcXVlLWNsaWVudC10b2tlbg==",
        "< Cookie: session=opaque-client-token",
        "POST http://h/v1 headers=[(b'authorization', b'Bearer opaque-client-token')]",
        "connecting to redis://:opaque-client-token@10.0.0.1:6379/0",
        "token eyJhbGciOiJIUzI1NiJ9.eyJzdHJlYW1zIjpbIioiXX0.c2ln expired",
    ],
)
def test_credentials_streamfan_cannot_list_are_masked_by_their_shape(line: str) -> None:
    masked = mask_credentials(line)
    assert REDACTED in masked
    assert "opaque-client-token" not in masked and "eyJzdHJl" not in masked
    assert "b3BhcXVl" not in masked


def test_ordinary_lines_pass_unchanged() -> None:
    line = "stream 01HX: attempt 2 failed (upstream_http_error: rate limited); retrying in 1.2s"
    assert formatted(record(line)) == line


def test_a_log_call_whose_arguments_do_not_fit_is_reported_without_them() -> None:
    rec = record("%d items", KEY)
    text = formatted(rec)
    assert "unformattable log call" in text and leaked(text) == []
