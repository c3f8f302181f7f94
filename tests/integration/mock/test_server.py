"""The mock upstream over real sockets: replies, auth, faults, the client going away."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import orjson
import pytest

from streamfan.mock.records import ABORTED, COMPLETE, DROPPED
from streamfan.mock.script import BOM, MALFORMED_DATA
from streamfan.mock.server import MockUpstream

from .support import AUTH, chat, read_all, read_until, sse_data

pytestmark = pytest.mark.timeout(30)


# --- replies --------------------------------------------------------------------------


async def test_a_stream_sends_the_scripted_bytes_with_sse_headers(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    response, data = await read_all(http, chat({"reply_tokens": 20}))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    record = await mock.wait_done(0)
    assert record.script is not None
    assert data == record.script.sse_body()
    assert record.outcome == COMPLETE
    assert record.chunks_sent == len(record.script.chunks()) == 22
    assert sse_data(data)[-1] == b"[DONE]"


async def test_the_record_keeps_the_body_and_headers_the_client_sent(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    await read_all(http, chat({"reply": "ok"}, stream_options={"include_usage": True}))
    record = await mock.wait_done(0)
    assert record.body["stream_options"] == {"include_usage": True}
    assert record.authorization == "Bearer sk-test"
    assert record.mock == {"reply": "ok"}
    usage = orjson.loads(sse_data((record.script or pytest.fail()).sse_body())[-2])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 1


async def test_a_non_streaming_request_gets_a_chat_completion(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    response = await http.post("/chat/completions", json=chat({"reply": "Hi 🙂"}, stream=False))
    assert response.status_code == 200
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "Hi 🙂"
    assert completion["usage"]["total_tokens"] > 0


async def test_models_are_listed(http: httpx.AsyncClient) -> None:
    response = await http.get("/models")
    assert response.status_code == 200
    assert "mock-gpt" in [m["id"] for m in response.json()["data"]]


async def test_tokens_are_paced_from_the_ttft(mock: MockUpstream, http: httpx.AsyncClient) -> None:
    await read_all(http, chat({"reply_tokens": 5, "tokens_per_s": 20, "ttft_ms": 100}))
    record = await mock.wait_done(0)
    assert record.first_chunk_at is not None and record.ended_at is not None
    assert record.first_chunk_at - record.started_at >= 0.1
    assert record.ended_at - record.started_at >= 0.1 + 4 / 20


async def test_keepalive_comments_fill_the_silence_before_the_first_token(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    _, data = await read_all(http, chat({"reply": "x", "ttft_ms": 300, "keepalive_ms": 50}))
    assert data.startswith(b": keep-alive\n\n")
    assert (await mock.wait_done(0)).keepalives_sent >= 1


async def test_split_bytes_writes_the_same_body_in_small_pieces(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    async with http.stream("POST", "/chat/completions", json=chat({"split_bytes": 7})) as response:
        parts = [part async for part in response.aiter_raw()]
    record = await mock.wait_done(0)
    assert b"".join(parts) == (record.script or pytest.fail()).sse_body()
    assert len(parts) > 1


async def test_crlf_and_bom_change_only_the_framing(http: httpx.AsyncClient) -> None:
    _, data = await read_all(http, chat({"reply": "a", "crlf": True, "bom": True}))
    assert data.startswith(BOM + b"data: ")
    assert b"\r\n\r\n" in data
    assert sse_data(data)[-1] == b"[DONE]"


# --- auth and bad requests ------------------------------------------------------------


async def test_requests_without_a_bearer_token_get_openais_401(mock: MockUpstream) -> None:
    async with httpx.AsyncClient(base_url=mock.base_url) as client:
        response = await client.post("/chat/completions", json=chat())
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert (await mock.wait_done(0)).status == 401


async def test_an_api_key_admits_that_key_only() -> None:
    async with (
        MockUpstream(api_key="sk-right") as server,
        httpx.AsyncClient(base_url=server.base_url) as client,
    ):
        wrong = await client.get("/models", headers={"Authorization": "Bearer sk-wrong"})
        right = await client.get("/models", headers={"Authorization": "Bearer sk-right"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert "sk-wrong" not in wrong.text
    assert right.status_code == 200


async def test_without_auth_no_header_is_needed() -> None:
    async with (
        MockUpstream(require_auth=False) as server,
        httpx.AsyncClient(base_url=server.base_url) as client,
    ):
        response = await client.post("/chat/completions", json=chat(stream=False))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b'{"model": "m"}', "messages"),
        (b'{"messages": [], "mock": {"reply_tokenz": 1}}', "mock"),
        (b'{"messages": [], "mock": {"fault": "explode"}}', "mock.fault"),
    ],
)
async def test_bad_bodies_get_openais_400(
    http: httpx.AsyncClient, content: bytes, param: str | None
) -> None:
    response = await http.post("/chat/completions", content=content)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_unknown_paths_and_methods_get_404_and_405(http: httpx.AsyncClient) -> None:
    assert (await http.get("/nope")).status_code == 404
    assert (await http.get("/chat/completions")).status_code == 405


# --- faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "retry_after"),
    [
        ("http_401", 401, None),
        ("http_429", 429, "1"),
        ("http_500", 500, None),
        ("http_503", 503, None),
    ],
)
async def test_http_faults_answer_with_openai_errors(
    http: httpx.AsyncClient, fault: str, status: int, retry_after: str | None
) -> None:
    response = await http.post("/chat/completions", json=chat({"fault": fault}))
    assert response.status_code == status
    assert response.headers.get("retry-after") == retry_after
    assert response.json()["error"]["message"]


async def test_retry_after_can_be_chosen(http: httpx.AsyncClient) -> None:
    body = chat({"fault": "http_429", "retry_after": 3})
    assert (await http.post("/chat/completions", json=body)).headers["retry-after"] == "3"


async def test_fault_times_fails_the_first_attempts_of_a_key_then_succeeds(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    body = chat({"fault": "http_500", "fault_times": 2, "fault_key": "job-1", "reply": "ok"})
    statuses = [(await http.post("/chat/completions", json=body)).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    other = chat({"fault": "http_500", "fault_times": 2, "fault_key": "job-2"})
    assert (await http.post("/chat/completions", json=other)).status_code == 500
    records = mock.requests_for("job-1")
    assert [(r.attempt, r.fault) for r in records] == [(1, "http_500"), (2, "http_500"), (3, None)]
    assert (await mock.wait_request("job-1", attempt=3)).status == 200


async def test_drop_closes_the_connection_mid_stream(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    got = b""
    async with http.stream(
        "POST", "/chat/completions", json=chat({"fault": "drop", "after": 3})
    ) as r:
        with pytest.raises(httpx.RemoteProtocolError):
            async for part in r.aiter_bytes():
                got += part
    assert len(sse_data(got)) == 3
    record = await mock.wait_done(0)
    assert (record.outcome, record.chunks_sent, record.fault) == (DROPPED, 3, "drop")


async def test_reset_breaks_the_connection_mid_stream(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    async with http.stream("POST", "/chat/completions", json=chat({"fault": "reset"})) as r:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            async for _ in r.aiter_bytes():
                pass
    assert (await mock.wait_done(0)).outcome == DROPPED


async def test_malformed_sends_a_non_json_line_and_carries_on(http: httpx.AsyncClient) -> None:
    _, data = await read_all(http, chat({"reply_tokens": 3, "fault": "malformed", "after": 1}))
    lines = sse_data(data)
    assert lines[1] == MALFORMED_DATA
    assert lines[-1] == b"[DONE]"


async def test_error_chunk_ends_the_body_after_an_error_object(http: httpx.AsyncClient) -> None:
    _, data = await read_all(http, chat({"fault": "error_chunk", "after": 2}))
    lines = sse_data(data)
    assert len(lines) == 3
    assert orjson.loads(lines[-1])["error"]["type"] == "server_error"


async def test_truncate_ends_the_body_cleanly_without_finish_or_done(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    _, data = await read_all(http, chat({"reply_tokens": 5, "fault": "truncate", "after": 4}))
    chunks = [orjson.loads(line) for line in sse_data(data)]
    assert len(chunks) == 4
    assert not any(c["choices"][0]["finish_reason"] for c in chunks)
    assert (await mock.wait_done(0)).outcome == COMPLETE


async def test_bom_fault_starts_the_body_with_a_bom(http: httpx.AsyncClient) -> None:
    _, data = await read_all(http, chat({"fault": "bom"}))
    assert data.startswith(BOM)


async def test_non_streaming_faults(mock: MockUpstream, http: httpx.AsyncClient) -> None:
    failed = await http.post("/chat/completions", json=chat({"fault": "http_503"}, stream=False))
    assert failed.status_code == 503
    malformed = await http.post(
        "/chat/completions", json=chat({"fault": "malformed"}, stream=False)
    )
    with pytest.raises(ValueError):
        malformed.json()
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post("/chat/completions", json=chat({"fault": "drop"}, stream=False))
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post("/chat/completions", json=chat({"fault": "truncate"}, stream=False))


# --- the client going away ------------------------------------------------------------


async def test_a_stall_holds_the_stream_until_the_client_leaves(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    body = chat({"fault": "stall", "after": 2})
    async with http.stream("POST", "/chat/completions", json=body) as response:
        await read_until(response, lambda got: len(sse_data(got)) == 2)
        assert (await mock.wait_chunks(0, 2)).outcome is None
    record = await mock.wait_disconnect(0)
    assert record.disconnected and record.chunks_sent == 2
    assert record.disconnect_event.is_set()


async def test_a_stall_can_send_keepalives_until_the_client_leaves(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    body = chat({"fault": "stall", "after": 1, "keepalive_ms": 20, "fault_key": "s"})
    async with http.stream("POST", "/chat/completions", json=body) as response:
        await read_until(response, lambda got: got.count(b": keep-alive") >= 3)
    record = await mock.wait_disconnect("s")
    assert record.keepalives_sent >= 3


async def test_a_client_leaving_between_slow_tokens_is_seen_at_once(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    loop = asyncio.get_running_loop()
    body = chat({"reply_tokens": 10, "tokens_per_s": 1, "fault_key": "slow"})
    async with http.stream("POST", "/chat/completions", json=body) as response:
        await read_until(response, lambda got: b'"content":"Lorem"' in got)
        left_at = loop.time()
    record = await mock.wait_disconnect("slow")
    assert record.disconnected_at is not None
    # The next token was a second away: the mock noticed without waiting to write it.
    assert record.disconnected_at - left_at < 0.5
    assert record.chunks_sent == 2


async def test_stopping_the_server_aborts_streams_in_flight() -> None:
    server = MockUpstream()
    await server.start()
    async with httpx.AsyncClient(base_url=server.base_url, headers=AUTH) as client:
        body = chat({"fault": "stall", "after": 1})
        async with (
            client.stream("POST", "/chat/completions", json=body) as response,
            contextlib.aclosing(response.aiter_raw()) as parts,
        ):
            assert b"data: " in await anext(parts)
            await server.stop()
            with pytest.raises(httpx.RemoteProtocolError):
                async for _ in parts:
                    pass
    assert server.requests[0].outcome == ABORTED


# --- what it saw -------------------------------------------------------------------


async def test_the_requests_endpoint_summarises_what_was_seen(
    mock: MockUpstream, http: httpx.AsyncClient
) -> None:
    await read_all(http, chat({"reply": "a", "fault_key": "k"}))
    await read_all(http, chat({"reply": "b"}))
    await mock.wait_done(1)
    summary = (await http.get(mock.url + "/_mock/requests", params={"fault_key": "k"})).json()
    assert [(s["fault_key"], s["outcome"], s["chunks_sent"]) for s in summary] == [
        ("k", COMPLETE, 3)
    ]
    assert summary[0]["headers"]["authorization"] == "Bearer [redacted]"
    assert (await http.post(mock.url + "/_mock/reset")).status_code == 200
    assert (await http.get(mock.url + "/_mock/requests")).json() == []
