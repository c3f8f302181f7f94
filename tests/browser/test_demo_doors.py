"""The demo page's doors in a real Chromium: the prompt box (submitting through
``/v1/chat/completions`` with a ``submit`` token, as ``streamfan up`` prints it),
a second reader beside the first (the browser's own ``EventSource``), and a
dropped connection that resumes exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.async_api import Browser

from streamfan.client import Client
from streamfan.mock.options import Defaults
from streamfan.mock.server import MockUpstream
from streamfan.settings import Settings
from streamfan.tokens import mint_token
from tests.integration.conftest import RunningWorker

from .conftest import GatewayProcess

pytestmark = pytest.mark.browser

PAGE_WAIT_MS = 60_000


@pytest.fixture
async def stack(
    settings: Settings, gateway_process: GatewayProcess
) -> AsyncIterator[tuple[Client, GatewayProcess]]:
    # A reply slow enough to drop a connection in the middle of it.
    async with MockUpstream(defaults=Defaults(reply_tokens=240, tokens_per_s=60)) as mock:
        s = settings.replace(upstream_base_url=mock.base_url)
        async with RunningWorker(s), Client(s) as client:
            await gateway_process.start()
            yield client, gateway_process
            await gateway_process.kill()


async def test_prompt_second_reader_and_a_dropped_connection_all_show_the_exact_reply(
    stack: tuple[Client, GatewayProcess], browser: Browser, settings: Settings, output_dir: Path
) -> None:
    sf, gw = stack
    assert settings.jwt_secret is not None
    submit = mint_token(settings.jwt_secret, [], submit=True, ttl_s=600)
    page = await browser.new_page(viewport={"width": 1200, "height": 700})
    page.set_default_timeout(PAGE_WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{gw.http_url}/?submit={submit}")
    assert await page.is_visible("#ask")
    assert await page.evaluate("document.body.dataset.state") == "idle"

    await page.fill("#prompt", "Tell me about fan-out.")
    await page.click("#send")
    await page.wait_for_url("**/?stream=*")
    stream_id = parse_qs(urlsplit(page.url).query)["stream"][0]
    await page.wait_for_function("document.getElementById('reply').textContent.length >= 20")

    await page.click("#second")
    await page.wait_for_function(
        "window.streamfanDemo.second && window.streamfanDemo.second.opens >= 1"
    )
    assert await page.is_visible("#reader2")

    # Drop the first reader's connection mid-reply: it reconnects and resumes.
    shown_before = len(await page.eval_on_selector("#reply", "el => el.textContent"))
    await page.click("#drop")
    await page.wait_for_function("streamfanDemo.states.includes('reconnecting')")
    await page.wait_for_function("document.body.dataset.state === 'done'")
    await page.wait_for_function("window.streamfanDemo.second.status === 'done'")

    result = await sf.result(stream_id)
    assert result.status == "done"
    first = await page.eval_on_selector("#reply", "el => el.textContent")
    second = await page.eval_on_selector("#reply2", "el => el.textContent")
    assert first == result.text and second == result.text
    assert len(result.text) > shown_before, "the drop came after the reply had finished"
    stats = await page.evaluate("streamfanDemo.client.stats")
    assert stats["reconnects"] >= 1 and stats["duplicates"] == 0, stats
    ids = await page.evaluate("streamfanDemo.second.ids")
    assert len(ids) == len(set(ids))
    assert errors == []
    await page.screenshot(path=output_dir / "demo-page-doors.png", full_page=True)
    await page.close()


async def test_a_refused_submit_says_why_on_the_page(
    stack: tuple[Client, GatewayProcess], browser: Browser, settings: Settings
) -> None:
    _, gw = stack
    assert settings.jwt_secret is not None
    reader_only = mint_token(settings.jwt_secret, ["*"], ttl_s=600)  # no submit right
    page = await browser.new_page()
    page.set_default_timeout(PAGE_WAIT_MS)
    await page.goto(f"{gw.http_url}/?submit={reader_only}")
    await page.fill("#prompt", "hi")
    await page.click("#send")
    await page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('cannot submit')"
    )
    assert "submit" in await page.eval_on_selector("#status", "el => el.textContent")
    await page.close()
