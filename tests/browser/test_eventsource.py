"""Real Chromium's own ``EventSource`` on ``GET /streams/{ID}/events``, no code of ours.

The gateway is restarted (SIGTERM, then on the same port) while the reply
streams: the browser reconnects by itself, sends ``Last-Event-ID``, and the
text it built is exactly the reply — nothing lost, nothing twice.
"""

from __future__ import annotations

import pytest
from playwright.async_api import Browser

from streamfan.client import Client
from streamfan.mock.server import MockUpstream
from streamfan.settings import Settings
from tests.integration.conftest import RunningWorker

from .conftest import GatewayProcess

pytestmark = pytest.mark.browser

PAGE_WAIT_MS = 60_000

#: Builds the text from the events with no library: what a page author would write.
READER = """([url]) => {
  window.sse = { text: "", ids: [], opens: 0, errors: 0, status: null, resets: 0 };
  const es = new EventSource(url);
  es.onopen = () => { window.sse.opens += 1; };
  es.onerror = () => { window.sse.errors += 1; };  // the browser reconnects by itself
  es.addEventListener("delta", (e) => {
    window.sse.ids.push(e.lastEventId);
    for (const c of JSON.parse(e.data).choices) {
      if (c.index === 0 && c.delta && c.delta.content) window.sse.text += c.delta.content;
    }
  });
  es.addEventListener("reset", () => { window.sse.text = ""; window.sse.resets += 1; });
  es.addEventListener("end", (e) => { window.sse.status = JSON.parse(e.data).status; es.close(); });
}"""


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
async def test_eventsource_keeps_the_exact_text_across_a_gateway_restart(
    settings: Settings, gateway_process: GatewayProcess, browser: Browser, stop: str
) -> None:
    """SIGTERM: the gateway ends the response (event: error). SIGKILL: the TCP
    connection just dies. Either way the browser reconnects by itself."""
    async with MockUpstream() as mock:
        s = settings.replace(upstream_base_url=mock.base_url)
        async with RunningWorker(s), Client(s) as sf:
            gw = await gateway_process.start()
            sub = await sf.submit(
                {
                    "model": "mock-gpt",
                    "messages": [{"role": "user", "content": "a long story"}],
                    "mock": {"reply_tokens": 300, "tokens_per_s": 60},
                }
            )
            page = await browser.new_page()
            page.set_default_timeout(PAGE_WAIT_MS)
            # Same origin as the door (no CORS involved): the gateway's demo page.
            await page.goto(f"{gw.http_url}/healthz")
            url = f"{gw.http_url}/streams/{sub.stream_id}/events?token={sub.token}"
            await page.evaluate(READER, [url])
            await page.wait_for_function("window.sse.text.length >= 40")
            before = await page.evaluate("window.sse.text.length")
            if stop == "sigterm":
                assert await gw.terminate() == 0, gw.log()
            else:
                await gw.kill()
            await page.wait_for_function("window.sse.errors >= 1")
            await gw.start()
            await page.wait_for_function("window.sse.status !== null")
            state = await page.evaluate("window.sse")
            result = await sf.result(sub.stream_id)
            assert state["status"] == "done"
            assert state["text"] == result.text
            assert len(result.text) > before, "the restart came after the reply had finished"
            assert state["opens"] >= 2, state  # it did reconnect, by itself
            assert len(state["ids"]) == len(set(state["ids"])), "an event came twice"
            await page.close()
            await gateway_process.kill()
