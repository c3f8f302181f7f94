"""Clients' tokens never reach a log line, at any level; a short JWT secret never starts a gateway.

websockets logs each handshake's request line (``GET /ws?token=…``) and headers
(``Authorization: Bearer …``) at DEBUG. Both the gateway in-process (a logger
filter on the connection logger) and ``streamfan gateway`` (a filter on every
handler) must mask them; the DEBUG lines themselves must still be there.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
from conftest import WAIT_S, GatewayProcess, WsClient, settings_env, token

from gateway import Gateway
from streamfan.settings import Settings


def secret_parts(tokens: list[str]) -> list[str]:
    """Each token, and its signature alone (the part a log line must never show)."""
    return [*tokens, *(t.rsplit(".", 1)[-1] for t in tokens)]


async def handshakes(url: str, settings: Settings) -> list[str]:
    """Open connections every way a token travels; return the tokens used."""
    by_query, by_header, refused = token(settings), token(settings, ("s1",)), token(settings)
    for client in (
        await WsClient.open(url + "/ws", tok=by_query),
        await WsClient.open(url + "/streams/s1?from=0", bearer=by_header),
    ):
        await client.close()
    http = "http" + url.removeprefix("ws")
    async with httpx.AsyncClient() as session:
        await session.get(http + "/healthz", params={"token": refused})
        # A tampered token is refused: the refusal is logged, the token is not.
        await session.get(http + "/ws", params={"token": refused[:-4] + "AAAA"})
    return [by_query, by_header, refused, refused[:-4] + "AAAA"]


async def test_tokens_are_masked_in_the_gateways_debug_logs(
    gateway: Gateway, gw_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    used = await handshakes(gateway.url, gw_settings)
    # The gateway's lines (the test's own HTTP client logs its URLs as it likes).
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("gateway"))
    assert "< GET /ws?token=[redacted]" in text
    assert "< Authorization: [redacted]" in text
    assert [p for p in secret_parts(used) if p in text] == []


async def test_the_gateway_command_at_debug_logs_no_token(
    gateway_process: Callable[..., GatewayProcess], gw_settings: Settings
) -> None:
    proc = gateway_process(gw_settings, env={"STREAMFAN_LOG_LEVEL": "DEBUG"})
    used = await handshakes(proc.url, gw_settings)
    proc.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.proc.wait, WAIT_S) == 0
    err = proc.stderr()
    assert "< GET /ws?token=[redacted]" in err
    assert [p for p in secret_parts(used) if p in err] == []
    assert gw_settings.jwt_secret is not None and gw_settings.jwt_secret not in err


@pytest.mark.parametrize("secret", ["hunter2", "0123456789abcdef0123456789abcde"])
def test_the_gateway_command_refuses_a_jwt_secret_under_32_bytes(
    gw_settings: Settings, secret: str
) -> None:
    env = settings_env(gw_settings)
    env["STREAMFAN_JWT_SECRET"] = secret
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "gateway", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert proc.returncode == 2
    assert "STREAMFAN_JWT_SECRET" in proc.stderr and "too short" in proc.stderr
    assert secret not in proc.stderr and proc.stdout == ""
