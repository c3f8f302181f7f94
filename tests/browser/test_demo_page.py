"""The demo page in a real Chromium against the real stack: Valkey, the mock upstream,
an arq worker, and the gateway as a child process that is restarted mid-reply.

The page must end showing exactly the reply the worker wrote to Redis: nothing
lost while the gateway was down, nothing doubled when its client resumed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.async_api import Browser, Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from streamfan.client import Client
from streamfan.mock.server import MockUpstream
from streamfan.settings import Settings
from tests.integration.conftest import RunningWorker

from .conftest import GatewayProcess

pytestmark = pytest.mark.browser

#: Any single wait on the page (a restart, a whole reply) ends well within this.
PAGE_WAIT_MS = 60_000
FINISHED = "['done', 'error', 'cancelled'].includes(document.body.dataset.state)"


@dataclass
class Stack:
    client: Client
    gateway: GatewayProcess
    mock: MockUpstream


@pytest.fixture
async def stack(settings: Settings, gateway_process: GatewayProcess) -> AsyncIterator[Stack]:
    async with MockUpstream() as mock:
        s = settings.replace(upstream_base_url=mock.base_url)
        async with RunningWorker(s), Client(s) as client:
            await gateway_process.start()
            yield Stack(client, gateway_process, mock)
            await gateway_process.kill()


def chat(**mock: Any) -> dict[str, Any]:
    return {
        "model": "mock-gpt",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "mock": mock,
    }


async def open_page(browser: Browser, url: str) -> tuple[Page, list[str]]:
    page = await browser.new_page(viewport={"width": 900, "height": 640})
    page.set_default_timeout(PAGE_WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    return page, errors


DIAGNOSIS = """() => {
  const d = window.streamfanDemo || {};
  const sub = d.subscription;
  return {
    state: document.body.dataset.state,
    status: document.getElementById("status").textContent,
    shown: document.getElementById("reply").textContent.length,
    states: d.states,
    connection: d.connection,
    client: d.client && { state: d.client.state, stats: d.client.stats },
    subscription: sub && { state: sub.state, status: sub.status, lastId: sub.lastId,
                           events: sub.eventCount, error: sub.error && sub.error.message },
  };
}"""


async def until_finished(page: Page, stack: Stack, stream_id: str) -> None:
    """Wait for the page to finish; on a timeout, fail with what everything was doing."""
    try:
        await page.wait_for_function(FINISHED)
    except PlaywrightTimeout:
        page_view = await page.evaluate(DIAGNOSIS)
        meta = await stack.client.status(stream_id)
        raise AssertionError(
            f"the page did not finish\npage: {page_view}\nmeta: {meta}\n"
            f"gateway log:\n{stack.gateway.log()[-4000:]}"
        ) from None


async def page_text(page: Page, selector: str) -> str:
    text = await page.eval_on_selector(selector, "el => el.textContent")
    assert isinstance(text, str)
    return text


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
async def test_the_demo_page_shows_the_exact_reply_across_a_gateway_restart(
    stack: Stack, browser: Browser, output_dir: Path, stop: str
) -> None:
    """SIGTERM: the gateway says goodbye (1001). SIGKILL: the TCP connection just dies."""
    sf, gw = stack.client, stack.gateway
    sub = await sf.submit(chat(reply_tokens=400, tokens_per_s=60))
    query = urlencode({"stream": sub.stream_id, "token": sub.token})
    page, errors = await open_page(browser, f"{gw.http_url}/?{query}")

    await page.wait_for_function("document.getElementById('reply').textContent.length >= 60")
    assert await page.evaluate("document.body.dataset.state") == "streaming"
    shown_before = len(await page_text(page, "#reply"))
    shots = stop == "sigterm"
    if shots:
        await page.screenshot(path=output_dir / "demo-page-streaming.png")

    # Restart the gateway on the same port while the reply streams.
    if stop == "sigterm":
        assert await gw.terminate() == 0, gw.log()
    else:
        await gw.kill()
    await page.wait_for_function("streamfanDemo.states.includes('reconnecting')")
    if shots:
        await page.screenshot(path=output_dir / "demo-page-reconnecting.png")
    assert "reconnecting" in await page_text(page, "#status")
    # A gateway that stops says goodbye with 1001 "going away"; a killed one cannot.
    drops = await page.evaluate("streamfanDemo.connection.filter(c => c.state === 'reconnecting')")
    assert drops[0]["code"] == (1001 if stop == "sigterm" else 1006), drops
    await gw.start()

    await until_finished(page, stack, sub.stream_id)
    if shots:
        await page.screenshot(path=output_dir / "demo-page.png", full_page=True)
    result = await sf.result(sub.stream_id)
    shown = await page_text(page, "#reply")
    state = await page.evaluate("document.body.dataset.state")
    assert state == "done", await page_text(page, "#status")
    assert result.status == "done"
    assert shown == result.text
    assert len(shown) > shown_before, "the restart came after the reply had finished"
    stats = await page.evaluate("streamfanDemo.client.stats")
    assert stats["reconnects"] >= 1, stats
    # It resumed after its last id: the gateway replayed nothing it already had.
    assert stats["duplicates"] == 0, stats
    assert (await page_text(page, "#status")).startswith("done")
    assert result.usage is not None
    usage = await page_text(page, "#usage")
    assert f"{result.usage['completion_tokens']} completion tokens" in usage
    assert errors == []
    await page.close()


async def test_the_cancel_button_stops_the_job_and_the_page_says_so(
    stack: Stack, browser: Browser
) -> None:
    sf, gw = stack.client, stack.gateway
    sub = await sf.submit(chat(reply_tokens=2000, tokens_per_s=50))
    token = sf.token([sub.stream_id], cancel=True)
    query = urlencode({"stream": sub.stream_id, "token": token})
    page, errors = await open_page(browser, f"{gw.http_url}/?{query}")

    await page.wait_for_function("document.getElementById('reply').textContent.length > 0")
    await page.click("#cancel")
    await until_finished(page, stack, sub.stream_id)
    assert await page.evaluate("document.body.dataset.state") == "cancelled"
    result = await sf.result(sub.stream_id)
    assert result.status == "cancelled"
    assert await page_text(page, "#reply") == result.text
    assert await page.is_disabled("#cancel")
    assert errors == []
    await page.close()


async def test_the_page_without_a_stream_explains_how_to_open_it(
    stack: Stack, browser: Browser
) -> None:
    page, errors = await open_page(browser, stack.gateway.http_url + "/")
    await page.wait_for_function("document.body.dataset.state === 'error'")
    assert "no stream given" in await page_text(page, "#status")
    assert await page.is_visible("#help")
    assert errors == []
    await page.close()


async def test_a_refused_token_is_an_error_on_the_page_not_an_endless_reconnect(
    stack: Stack, browser: Browser
) -> None:
    sf, gw = stack.client, stack.gateway
    sub = await sf.submit(chat(reply_tokens=5))
    other = sf.token(["someone-else"])
    query = urlencode({"stream": sub.stream_id, "token": other})
    page, errors = await open_page(browser, f"{gw.http_url}/?{query}")
    await page.wait_for_function("document.body.dataset.state === 'error'")
    assert "forbidden" in await page_text(page, "#status")

    bad = urlencode({"stream": sub.stream_id, "token": "not-a-jwt"})
    await page.goto(f"{gw.http_url}/?{bad}")
    await page.wait_for_function("document.body.dataset.state === 'error'")
    status = await page_text(page, "#status")
    assert "refused" in status, status
    assert await page.evaluate("streamfanDemo.client.state") == "closed"
    assert errors == []
    await page.close()
