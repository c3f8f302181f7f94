"""Every refusal of the OpenAI door: its status, OpenAI's error shape, and the SDK's exception."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from gateway import Gateway
from streamfan.errors import ConfigError
from streamfan.settings import Settings
from streamfan.tokens import mint_token
from tests.gateway.conftest import WAIT_S, token

pytestmark = pytest.mark.timeout(60)

KEY = "sk-test-" + "e" * 40
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def gw(gw_settings: Settings, start_gateway: Any) -> Gateway:
    gateway: Gateway = await start_gateway(gw_settings.replace(api_keys=(KEY,)))
    return gateway


async def call(gw: Gateway, method: str, path: str, key: str | None = KEY, **kw: Any) -> Any:
    headers = dict(kw.pop("headers", {}))
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        return await http.request(method, gw.http_url + path, headers=headers, **kw)


def error_of(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["code"] == code and isinstance(err["message"], str) and err["message"]
    return err


@pytest.mark.parametrize(
    ("kwargs", "code", "param"),
    [
        ({"content": b"{not json"}, "bad_request", None),
        ({"json": [1, 2]}, "bad_request", None),
        ({"json": {"model": "m"}}, "bad_request", "messages"),
        ({"json": CHAT, "headers": {"Idempotency-Key": "bad key!"}}, "bad_request", None),
    ],
    ids=["not_json", "not_object", "no_messages", "bad_id"],
)
async def test_a_bad_body_is_400(gw: Gateway, kwargs: Any, code: str, param: str | None) -> None:
    err = error_of(await call(gw, "POST", "/v1/chat/completions", **kwargs), 400, code)
    assert err["type"] == "invalid_request_error" and err["param"] == param


async def test_a_bad_id_in_the_path_is_400(gw: Gateway) -> None:
    error_of(await call(gw, "GET", "/v1/chat/completions/a%20b"), 400, "bad_request")


async def test_no_or_a_wrong_credential_is_401_and_the_sdk_raises_authentication_error(
    gw: Gateway,
) -> None:
    err = error_of(
        await call(gw, "POST", "/v1/chat/completions", None, json=CHAT), 401, "unauthorized"
    )
    assert err["type"] == "authentication_error"
    sdk = openai.AsyncOpenAI(base_url=gw.http_url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    await sdk.close()


async def test_a_token_without_the_submit_right_is_403_and_one_with_it_submits(
    gw: Gateway, gw_settings: Settings
) -> None:
    reader = token(gw_settings)
    err = error_of(
        await call(gw, "POST", "/v1/chat/completions", reader, json=CHAT), 403, "forbidden"
    )
    assert err["type"] == "permission_error"
    assert gw_settings.jwt_secret is not None
    submitter = mint_token(gw_settings.jwt_secret, [], submit=True)
    sdk = openai.AsyncOpenAI(base_url=gw.http_url + "/v1", api_key=reader, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        await sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    await sdk.close()
    # stream: true answers at once (the job waits for a worker; none runs here).
    async with (
        httpx.AsyncClient(timeout=WAIT_S) as http,
        http.stream(
            "POST",
            gw.http_url + "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"Authorization": f"Bearer {submitter}"},
        ) as r,
    ):
        assert r.status_code == 200 and r.headers["x-accel-buffering"] == "no"
        sid = r.headers["x-streamfan-stream-id"]
        read_token = r.headers["x-streamfan-token"]
    # The token it gave reads (and cancels) that stream, and nothing else.
    r = await call(gw, "GET", f"/v1/chat/completions/{sid}", read_token)
    assert r.status_code == 200 and r.json()["status"] == "queued"
    r = await call(gw, "POST", f"/v1/chat/completions/{sid}/cancel", read_token)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    error_of(await call(gw, "GET", "/v1/chat/completions/other", read_token), 403, "forbidden")
    error_of(await call(gw, "POST", f"/v1/chat/completions/{sid}/cancel", reader), 403, "forbidden")


async def test_an_unknown_completion_is_404_and_the_sdk_raises_not_found(gw: Gateway) -> None:
    error_of(await call(gw, "GET", "/v1/chat/completions/no-such-id"), 404, "not_found")
    error_of(await call(gw, "GET", "/v1/models"), 404, "not_found")
    error_of(await call(gw, "POST", "/v1/chat/completions/no-such-id/cancel"), 404, "not_found")
    sdk = openai.AsyncOpenAI(base_url=gw.http_url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.retrieve("no-such-id")
    await sdk.close()


async def test_a_wrong_method_is_405_with_allow(gw: Gateway) -> None:
    r = await call(gw, "GET", "/v1/chat/completions")
    error_of(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    r = await call(gw, "DELETE", "/v1/chat/completions/some-id")
    error_of(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET"


async def test_the_same_idempotency_key_with_another_body_is_409_the_same_body_is_the_same_stream(
    gw: Gateway,
) -> None:
    key = {"Idempotency-Key": "order-1234"}
    body = {**CHAT, "stream": True}
    for _ in range(2):
        async with (
            httpx.AsyncClient(timeout=WAIT_S) as http,
            http.stream(
                "POST",
                gw.http_url + "/v1/chat/completions",
                json=body,
                headers={**key, "Authorization": f"Bearer {KEY}"},
            ) as r,
        ):
            assert r.status_code == 200 and r.headers["x-streamfan-stream-id"] == "order-1234"
    other = {**CHAT, "messages": [{"role": "user", "content": "something else"}]}
    r = await call(gw, "POST", "/v1/chat/completions", json=other, headers=key)
    error_of(r, 409, "idempotency_conflict")
    sdk = openai.AsyncOpenAI(base_url=gw.http_url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.ConflictError):
        await sdk.chat.completions.create(**other, extra_headers=key)  # type: ignore[call-overload]
    await sdk.close()


async def test_a_body_over_the_limit_is_413(gw: Gateway) -> None:
    from gateway.http import MAX_BODY_BYTES

    big = b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * MAX_BODY_BYTES + b'"}]}'
    error_of(await call(gw, "POST", "/v1/chat/completions", content=big), 413, "request_too_large")


async def test_submits_past_the_per_credential_rate_are_429_with_retry_after(
    gw_settings: Settings, start_gateway: Any
) -> None:
    gw = await start_gateway(gw_settings.replace(api_keys=(KEY,), submits_per_minute=3))
    statuses = []
    for _ in range(4):  # the fixture allows 3 a minute
        r = await call(gw, "POST", "/v1/chat/completions", json={"model": "m"})
        statuses.append(r.status_code)
    assert statuses == [400, 400, 400, 429]
    err = error_of(r, 429, "rate_limited")
    assert err["type"] == "rate_limit_error" and int(r.headers["retry-after"]) >= 1
    # Another credential has its own allowance.
    assert (await call(gw, "POST", "/v1/chat/completions", None, json={})).status_code == 401


def test_a_short_api_key_is_refused_at_start_up_without_showing_it() -> None:
    short = "sk-short-secret"
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"STREAMFAN_API_KEYS": f"{'a' * 32},{short}"})
    assert "STREAMFAN_API_KEYS" in str(raised.value) and short not in str(raised.value)
    assert "key 2" in str(raised.value)
    settings = Settings.from_env({"STREAMFAN_API_KEYS": "a" * 32})
    assert "a" * 32 not in repr(settings)
