"""The mock upstream's HTTP/1.1 on the wire: pipelining, HTTP/1.0, 100-continue, limits."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from streamfan.mock.server import MockUpstream

from .support import chat, raw_exchange, request_bytes

pytestmark = pytest.mark.timeout(30)


async def test_pipelined_requests_are_answered_in_order_on_one_connection(
    mock: MockUpstream,
) -> None:
    stream = orjson.dumps(chat({"reply": "one", "tokens_per_s": 100}))
    data = await raw_exchange(
        mock,
        request_bytes("POST", "/v1/chat/completions", stream)
        + request_bytes("GET", "/v1/models", close=True),
    )
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.index(b"[DONE]") < data.index(b'"object":"list"')


async def test_an_http_1_0_client_gets_a_raw_body_ended_by_close(mock: MockUpstream) -> None:
    body = orjson.dumps(chat({"reply": "old school"}))
    request = request_bytes("POST", "/v1/chat/completions", body).replace(b"HTTP/1.1", b"HTTP/1.0")
    head, _, data = (await raw_exchange(mock, request)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    record = await mock.wait_done(0)
    assert data == (record.script or pytest.fail()).sse_body()


async def test_expect_continue_gets_an_interim_response(mock: MockUpstream) -> None:
    body = orjson.dumps(chat(stream=False))
    head = request_bytes("POST", "/v1/chat/completions", close=True).removesuffix(b"\r\n")
    head += f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", mock.port)
    try:
        writer.write(head)
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        assert (await reader.read(-1)).startswith(b"HTTP/1.1 200 OK")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_oversized_headers_and_bodies_are_refused() -> None:
    async with MockUpstream(max_header_bytes=1024, max_body_bytes=1000) as server:
        big_head = b"GET /v1/models HTTP/1.1\r\nX: " + b"a" * 2000 + b"\r\n\r\n"
        assert (await raw_exchange(server, big_head)).startswith(b"HTTP/1.1 431 ")
        big_body = request_bytes("POST", "/v1/chat/completions", b"x" * 5000)
        assert (await raw_exchange(server, big_body)).startswith(b"HTTP/1.1 413 ")


async def test_a_chunked_request_body_is_served(mock: MockUpstream) -> None:
    body = orjson.dumps(chat({"reply": "chunked"}, stream=False))
    head = request_bytes("POST", "/v1/chat/completions", close=True).removesuffix(b"\r\n")
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (body[:7], body[7:])) + b"0\r\n\r\n"
    data = await raw_exchange(mock, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    head_out, _, reply = data.partition(b"\r\n\r\n")
    assert head_out.startswith(b"HTTP/1.1 200 OK")
    assert orjson.loads(reply)["choices"][0]["message"]["content"] == "chunked"
