"""The mock upstream's HTTP/1.1 wire: requests parsed by h11, responses encoded (no sockets)."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfan.mock.http import (
    HTTPError,
    Request,
    RequestParser,
    chunk_frame,
    encode_response,
    openai_error,
)

BODY = b'{"model": "m", "messages": [], "stream": true}'
REQUEST = (
    b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Authorization: Bearer sk-test\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n" + BODY
)


def parse_all(data: bytes, **limits: int) -> list[Request]:
    parser = RequestParser(**limits)
    parser.feed(data)
    out = []
    while (request := parser.next_request()) is not None:
        out.append(request)
    return out


def test_a_request_is_parsed_into_method_path_headers_and_body() -> None:
    [request] = parse_all(REQUEST)
    assert (request.method, request.path, request.query) == ("POST", "/v1/chat/completions", "x=1")
    assert request.version == (1, 1)
    assert request.header("authorization") == "Bearer sk-test"
    assert request.header_dict()["content-type"] == "application/json"
    assert request.body == BODY
    assert request.keep_alive


@given(st.lists(st.integers(0, len(REQUEST) * 2), max_size=6))
def test_requests_do_not_depend_on_where_the_bytes_were_split(cuts: list[int]) -> None:
    data = REQUEST * 2
    parser = RequestParser()
    got = []
    bounds = sorted({0, len(data), *cuts})
    for start, end in itertools.pairwise(bounds):
        parser.feed(data[start:end])
        while (request := parser.next_request()) is not None:
            got.append(request)
    assert got == parse_all(REQUEST) * 2


def test_pipelined_requests_are_served_in_order() -> None:
    get = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    requests = parse_all(REQUEST + get + b"\r\n" + get)
    assert [r.method for r in requests] == ["POST", "GET", "GET"]


@pytest.mark.parametrize("blank", [b"\r\n", b"\r\n\r\n", b"\n"])
def test_empty_lines_before_a_request_line_are_ignored_even_when_split(blank: bytes) -> None:
    parser = RequestParser()
    for byte in blank:
        parser.feed(bytes([byte]))
        assert parser.next_request() is None
    parser.feed(REQUEST)
    assert parser.next_request() == parse_all(REQUEST)[0]


def test_a_chunked_body_is_read_whole() -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    [request] = parse_all(head + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert request.body == b"hello world"


def test_repeated_header_fields_are_joined() -> None:
    [request] = parse_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
    assert request.header("x-a") == "1, 2"
    assert request.header("missing") is None


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
    ],
)
def test_keep_alive_follows_the_version_and_connection_header(
    head: bytes, keep_alive: bool
) -> None:
    [request] = parse_all(head)
    assert request.keep_alive is keep_alive


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # RFC 9112 3.2: HTTP/1.1 needs a Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nNo-Colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n folded: x\r\nHost: x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n", 413),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n" + b"a" * 101,
            413,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: " + b"a" * 300 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 300, 431),  # no end of head in sight
    ],
)
def test_bad_requests_raise_the_status_to_answer(data: bytes, status: int) -> None:
    with pytest.raises(HTTPError) as info:
        parse_all(data, max_header_bytes=256, max_body_bytes=100)
    assert info.value.status == status


def test_more_than_a_hundred_header_fields_are_refused() -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: a\r\n" * 100 + b"\r\n"
    with pytest.raises(HTTPError) as info:
        parse_all(head)
    assert info.value.status == 431


@pytest.mark.parametrize("limit", [60, 61, 62])
def test_the_head_limit_counts_every_byte_up_to_the_blank_line(limit: int) -> None:
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 16 + b"\r\n\r\n"
    assert len(head) == 61
    if limit >= len(head):
        assert [r.path for r in parse_all(head, max_header_bytes=limit)] == ["/v1/models"]
    else:
        with pytest.raises(HTTPError) as info:
            parse_all(head, max_header_bytes=limit)
        assert info.value.status == 431


def test_expect_continue_is_reported_until_the_body_arrives() -> None:
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert parser.next_request() is None
    assert parser.expects_continue
    parser.feed(b"{}")
    request = parser.next_request()
    assert request is not None and request.body == b"{}"
    assert not parser.expects_continue


def test_responses_carry_length_and_connection() -> None:
    data = encode_response(429, b"{}", headers=[("Retry-After", "1")], keep_alive=False)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 429 Too Many Requests"
    assert b"Content-Length: 2" in head and b"Connection: close" in head
    assert b"Retry-After: 1" in head
    assert body == b"{}"


def test_chunk_frames_are_hex_length_data_crlf() -> None:
    assert chunk_frame(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"


def test_errors_have_openai_shape() -> None:
    assert orjson.loads(openai_error("no", "invalid_request_error", "c", "p")) == {
        "error": {"message": "no", "type": "invalid_request_error", "param": "p", "code": "c"}
    }
