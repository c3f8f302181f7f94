"""streamfan.js on its own: a blank page, a fake WebSocket, frames written by the test.

Each test drives the client step by step (open, frames, drops) and waits on the
page's state, never on a timer; reconnect delays are set to a few milliseconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.async_api import Browser, Page

from streamfan import protocol

pytestmark = pytest.mark.browser

CLIENT_JS = Path(__file__).resolve().parents[2] / "gateway" / "static" / "streamfan.js"

#: A WebSocket the test drives: sockets[i].open(), .receive(...messages), .drop(code).
HARNESS = """
window.sockets = [];
window.log = {
  texts: [], ends: [], errors: [], states: [], events: [], iterated: [], clientErrors: [],
};
window.fetchCalls = [];
window.fetchStatus = 503;
class FakeSocket {
  constructor(url) { this.url = url; this.sent = []; this.closedWith = null; sockets.push(this); }
  send(data) { this.sent.push(JSON.parse(data)); }
  close(code, reason) { this.closedWith = { code, reason }; }
  open() { this.onopen({}); }
  receive(...messages) {
    this.onmessage({ data: messages.map((m) => JSON.stringify(m)).join("\\n") });
  }
  drop(code, reason = "") { this.onclose({ code, reason, wasClean: false }); }
}
window.tokens = 0;
window.makeClient = (options = {}) => new Streamfan.Client({
  url: "ws://gw.test/ws",
  token: () => "T" + ++tokens,
  WebSocket: FakeSocket,
  fetch: async (url) => {
    fetchCalls.push(url);
    return { status: fetchStatus, text: async () => "token expired\\n" };
  },
  minDelay: 1,
  maxDelay: 4,
  onState: (state, info) => log.states.push([state, info.code ?? null]),
  onError: (err) => log.clientErrors.push(err.code),
  ...options,
});
window.follow = (client, stream, options = {}) => {
  const sub = client.subscribe(stream, {
    onText: (text) => log.texts.push(text),
    onEnd: (result) => log.ends.push(result),
    onError: (err) =>
      log.errors.push({ code: err.code, message: err.message, closeCode: err.closeCode }),
    onEvent: ({ id }) => log.events.push(id),
    ...options,
  });
  (async () => {
    try {
      for await (const { id } of sub) log.iterated.push(id);
      log.iterated.push("<end>");
    } catch (err) {
      log.iterated.push("<error " + err.code + ">");
    }
  })();
  return sub;
};
"""


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    page = await browser.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.set_content("<!doctype html><title>streamfan.js</title>")
    await page.add_script_tag(path=str(CLIENT_JS))
    await page.add_script_tag(content=HARNESS)
    yield page
    await page.close()
    assert errors == []


def delta(text: str) -> dict[str, Any]:
    return {"type": "delta", "choices": [{"index": 0, "delta": {"content": text}}]}


def ev(stream: str, entry_id: str, event: dict[str, Any]) -> dict[str, Any]:
    return {"op": "event", "stream": stream, "id": entry_id, "event": event}


def error(stream: str | None, code: str, reply_to: str | None, message: str) -> dict[str, Any]:
    return {"op": "error", "stream": stream, "code": code, "message": message, "reply_to": reply_to}


class Driver:
    def __init__(self, page: Page) -> None:
        self.page = page

    async def js(self, expr: str) -> Any:
        """The value of a JS expression."""
        return await self.page.evaluate(expr)

    async def run(self, statements: str) -> None:
        """Run JS statements (their value, perhaps a pending promise, is not awaited)."""
        await self.page.evaluate(f"() => {{ {statements}; }}")

    async def receive(self, socket: int, *messages: dict[str, Any]) -> None:
        await self.page.evaluate(
            f"(ms) => sockets[{socket}].receive(...ms)", orjson.loads(orjson.dumps(messages))
        )

    async def sockets(self, n: int) -> None:
        await self.page.wait_for_function(f"sockets.length === {n}")

    async def sent(self, socket: int) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = await self.js(f"sockets[{socket}].sent")
        return sent


async def test_frames_of_json_lines_build_the_text_and_a_reset_starts_it_over(page: Page) -> None:
    d = Driver(page)
    await d.run("window.sub = follow(window.client = makeClient(), 's1')")
    assert await d.js("sockets[0].url") == "ws://gw.test/ws?token=T1"
    await d.run("sockets[0].open()")
    assert await d.sent(0) == [{"op": "subscribe", "stream": "s1", "from": "0"}]
    await d.receive(
        0,
        {"op": "subscribed", "stream": "s1", "status": "running"},
        ev(
            "s1",
            "1-0",
            {"type": "start", "stream_id": "s1", "model": "m", "created": 1, "attempt": 1},
        ),
        ev("s1", "2-0", delta("Hel")),
        ev("s1", "2-1", delta("lo")),
    )
    # One frame, one onText call.
    assert await d.js("log.texts") == ["Hello"]
    await d.receive(
        0,
        ev("s1", "3-0", {"type": "reset", "attempt": 2}),
        ev(
            "s1",
            "4-0",
            {"type": "start", "stream_id": "s1", "model": "m", "created": 1, "attempt": 2},
        ),
        ev("s1", "5-0", delta("Hi")),
    )
    assert await d.js("sub.text") == "Hi"
    await d.receive(
        0,
        ev("s1", "6-0", delta("!")),
        ev("s1", "7-0", {"type": "usage", "usage": {"total_tokens": 3}}),
        ev("s1", "8-0", {"type": "done", "finish_reason": "stop", "usage": {"total_tokens": 3}}),
        {"op": "end", "stream": "s1", "status": "done"},
    )
    (end,) = await d.js("log.ends")
    assert (end["status"], end["text"], end["finishReason"], end["usage"]) == (
        "done",
        "Hi!",
        "stop",
        {"total_tokens": 3},
    )
    await page.wait_for_function("log.iterated.includes('<end>')")
    ids = ["1-0", "2-0", "2-1", "3-0", "4-0", "5-0", "6-0", "7-0", "8-0"]
    assert await d.js("log.iterated") == [*ids, "<end>"]
    assert await d.js("sub.state") == "ended"
    # The stream is over: a drop now reconnects nothing.
    await d.run("sockets[0].drop(1006)")
    assert await d.js("client.state") == "idle"
    assert await d.js("sockets.length") == 1


async def test_a_drop_before_the_first_event_resumes_from_the_last_id_subscribed_gave(
    page: Page,
) -> None:
    d = Driver(page)
    await d.run("window.sub = follow(window.client = makeClient(), 's1', {from: '$'})")
    await d.run("sockets[0].open()")
    assert await d.sent(0) == [{"op": "subscribe", "stream": "s1", "from": "$"}]
    await d.receive(
        0, {"op": "subscribed", "stream": "s1", "status": "running", "last_id": "1700000000000-5"}
    )
    assert await d.js("sub.lastId") == "1700000000000-5"
    await d.run("sockets[0].drop(1006)")  # before any event
    await d.sockets(2)
    await d.run("sockets[1].open()")
    # Not "$" again, which would skip what was written while it was away.
    assert await d.sent(1) == [{"op": "subscribe", "stream": "s1", "from": "1700000000000-5"}]
    await d.receive(
        1,
        {"op": "subscribed", "stream": "s1", "status": "running", "last_id": "1700000000000-5"},
        ev("s1", "1700000000000-5", delta("X")),  # at the position: dropped
        ev("s1", "1700000000000-6", delta("a")),
    )
    assert await d.js("[sub.text, log.events]") == ["a", ["1700000000000-6"]]


async def test_after_a_drop_it_resumes_from_the_last_id_and_skips_what_it_had(page: Page) -> None:
    d = Driver(page)
    await d.run("window.sub = follow(window.client = makeClient(), 's1', {from: '$'})")
    await d.run("sockets[0].open()")
    assert await d.sent(0) == [{"op": "subscribe", "stream": "s1", "from": "$"}]
    await d.receive(
        0,
        {"op": "subscribed", "stream": "s1", "status": "running"},
        ev("s1", "1700000000000-5", delta("a")),
        ev("s1", "1700000000001-0", delta("b")),
    )
    await d.run("sockets[0].drop(1001, 'going away')")
    await d.sockets(2)
    assert await d.js("sockets[1].url") == "ws://gw.test/ws?token=T2"  # a fresh token
    await d.run("sockets[1].open()")
    assert await d.sent(1) == [{"op": "subscribe", "stream": "s1", "from": "1700000000001-0"}]
    await d.receive(
        1,
        {"op": "subscribed", "stream": "s1", "status": "running"},
        ev("s1", "1700000000000-5", delta("X")),  # older: dropped
        ev("s1", "1700000000001-0", delta("X")),  # the same: dropped
        ev("s1", "1700000000001-1", delta("c")),
    )
    assert await d.js("sub.text") == "abc"
    stats = await d.js("client.stats")
    assert (stats["duplicates"], stats["connects"], stats["reconnects"]) == (2, 2, 1)
    assert await d.js("log.states.map(s => s[0])") == [
        "connecting",
        "open",
        "reconnecting",
        "connecting",
        "open",
    ]
    assert await d.js("log.states[2]") == ["reconnecting", 1001]


#: Close code -> whether the client reconnects (streamfan/protocol.py's groups).
CLOSE_CODES = {
    1000: True,
    1001: True,
    1006: True,
    1011: True,
    1012: True,
    1013: True,
    4000: True,
    4001: True,
    4499: True,
    1002: False,
    1008: False,
    1009: False,
    4500: False,
    4999: False,
}


async def test_the_reconnect_decision_is_protocol_py_s_for_every_close_code(page: Page) -> None:
    # Executes the JS (tests/unit/test_js_protocol.py compares its constants).
    got = await Driver(page).js(
        "Array.from({length: 5000}, (_, c) => Streamfan.shouldReconnect(c))"
    )
    assert got == [protocol.should_reconnect(code) for code in range(5000)]


async def test_close_codes_split_into_reconnect_and_terminal(page: Page) -> None:
    d = Driver(page)
    for code, reconnects in CLOSE_CODES.items():
        assert await d.js(f"Streamfan.shouldReconnect({code})") is reconnects, code
        await d.run(
            "sockets.length = 0; log.errors = []; log.iterated = [];"
            "window.sub = follow(window.client = makeClient(), 's1')"
        )
        await d.run("sockets[0].open()")
        await d.receive(0, {"op": "subscribed", "stream": "s1", "status": "running"})
        await d.run(f"sockets[0].drop({code}, 'bye')")
        if reconnects:
            await d.sockets(2)
            assert await d.js("sub.state") == "subscribing"
            await d.run("client.close()")
        else:
            assert await d.js("client.state") == "failed", code
            assert await d.js("log.errors") == [
                {
                    "code": "closed",
                    "message": f"the gateway closed the connection: {code} bye",
                    "closeCode": code,
                }
            ]
            await page.wait_for_function("log.iterated.includes('<error closed>')")
            assert await d.js("client._timer") is None


async def test_a_refused_handshake_stops_and_an_unreachable_gateway_is_retried(
    page: Page,
) -> None:
    d = Driver(page)
    await d.run("window.sub = follow(window.client = makeClient(), 's1')")
    await d.run("sockets[0].drop(1006)")  # never opened; the probe answers 503
    await d.sockets(2)
    assert await d.js("fetchCalls") == ["http://gw.test/ws?token=T1"]
    await d.run("window.fetchStatus = 401; sockets[1].drop(1006)")
    await page.wait_for_function("client.state === 'failed'")
    assert await d.js("log.errors") == [
        {"code": "refused", "message": "token expired", "closeCode": None}
    ]
    assert await d.js("sockets.length") == 2


async def test_gateway_errors_end_retry_or_reconnect_as_the_protocol_says(page: Page) -> None:
    d = Driver(page)
    await d.run(
        "window.client = makeClient();"
        "window.a = follow(client, 'a'); window.b = follow(client, 'b');"
        "window.c = follow(client, 'c');"
    )
    await d.run("sockets[0].open()")
    assert [m["stream"] for m in await d.sent(0)] == ["a", "b", "c"]
    await d.receive(
        0,
        {"op": "subscribed", "stream": "a", "status": "running", "last_id": "0-0"},
        {"op": "subscribed", "stream": "b", "status": "running", "last_id": "0-0"},
        ev("a", "5-0", delta("x")),
        ev("b", "7-0", delta("y")),
        error("c", "not_found", "subscribe", "stream 'c' not found"),
        error("b", "gone", None, "history is gone"),
    )
    assert await d.js("log.errors.map(e => e.code)") == ["not_found", "gone"]
    assert await d.js("[a.state, b.state, c.state]") == ["live", "failed", "failed"]
    # unavailable: resubscribed from the last id (unsubscribe first: idempotent).
    await d.receive(0, error("a", "unavailable", None, "later"))
    await page.wait_for_function("sockets[0].sent.length === 5")
    assert (await d.sent(0))[3:] == [
        {"op": "unsubscribe", "stream": "a"},
        {"op": "subscribe", "stream": "a", "from": "5-0"},
    ]
    # too_slow: this connection is dropped and a new one resumes.
    await d.receive(0, error(None, "too_slow", None, "slow"))
    await d.sockets(2)
    assert await d.js("sockets[0].closedWith.code") == 4000
    await d.run("sockets[1].open()")
    assert await d.sent(1) == [{"op": "subscribe", "stream": "a", "from": "5-0"}]
    # A bad line in a frame is reported; the rest of the frame still counts.
    await d.run(
        'sockets[1].onmessage({data: \'{"op":"pong"}\\nnot json\\n\''
        " + JSON.stringify({op: 'event', stream: 'a', id: '6-0', event: "
        "{type: 'delta', choices: [{index: 0, delta: {content: 'z'}}]}})})"
    )
    assert await d.js("a.text") == "xz"
    assert await d.js("log.clientErrors") == ["bad_frame"]


async def test_cancel_is_sent_and_its_refusal_does_not_end_the_subscription(page: Page) -> None:
    d = Driver(page)
    await d.run("window.sub = follow(window.client = makeClient(), 's1')")
    await d.run("window.cancelled = client.cancel('s1').then(() => 'ok', (e) => e.code)")
    await d.run("sockets[0].open()")
    assert await d.sent(0) == [
        {"op": "subscribe", "stream": "s1", "from": "0"},
        {"op": "cancel", "stream": "s1"},
    ]
    await d.receive(
        0,
        {"op": "subscribed", "stream": "s1", "status": "running", "last_id": "0-0"},
        error("s1", "forbidden", "cancel", "no cancel"),
    )
    assert await d.js("cancelled") == "forbidden"
    assert await d.js("sub.state") == "live"
    # A cancel that works: accepted, then the stream ends with "cancelled" and the
    # promise resolves with the subscription's result.
    await d.run("window.cancelled = client.cancel('s1').then((r) => r.status, (e) => e.code)")
    await d.receive(0, {"op": "cancelling", "stream": "s1", "status": "running"})
    assert await d.js("client._cancels.size") == 1  # accepted: waits for the end
    await d.receive(
        0,
        ev("s1", "1-0", {"type": "cancelled", "reason": "by a subscriber"}),
        {"op": "end", "stream": "s1", "status": "cancelled"},
    )
    assert await d.js("cancelled") == "cancelled"
    assert await d.js("log.ends.map(e => e.status)") == ["cancelled"]


async def test_errors_are_routed_by_the_op_they_answer_not_guessed_from_the_state(
    page: Page,
) -> None:
    d = Driver(page)
    await d.run("window.sub = follow(window.client = makeClient(), 's1')")
    await d.run("window.cancelled = client.cancel('s1').then(() => 'ok', (e) => e.code)")
    await d.run("sockets[0].open()")
    # Refused before "subscribed" came: only the cancel fails (a guess from the
    # subscription's state would have ended the subscription too).
    await d.receive(0, error("s1", "forbidden", "cancel", "no cancel"))
    assert await d.js("cancelled") == "forbidden"
    assert await d.js("[sub.state, log.errors.length]") == ["subscribing", 0]
    # "unavailable" for the cancel: the cancel fails, the subscription is not retried.
    await d.run("window.again = client.cancel('s1').then(() => 'ok', (e) => e.replyTo)")
    await d.receive(0, error("s1", "unavailable", "cancel", "later"))
    assert await d.js("again") == "cancel"
    assert [m["op"] for m in await d.sent(0)] == ["subscribe", "cancel", "cancel"]
    # "unavailable" for the subscription: it is retried; a pending cancel is left alone.
    await d.run("window.third = client.cancel('s1').then((r) => r.status, (e) => e.code)")
    await d.receive(0, error("s1", "unavailable", "subscribe", "Redis is unavailable"))
    await page.wait_for_function("sockets[0].sent.length === 6")
    assert (await d.sent(0))[4:] == [
        {"op": "unsubscribe", "stream": "s1"},
        {"op": "subscribe", "stream": "s1", "from": "0"},
    ]
    assert await d.js("client._cancels.size") == 1
    await d.receive(
        0,
        {"op": "subscribed", "stream": "s1", "status": "running", "last_id": "0-0"},
        {"op": "cancelling", "stream": "s1", "status": "running"},
        ev("s1", "1-0", {"type": "cancelled", "reason": "by a subscriber"}),
        {"op": "end", "stream": "s1", "status": "cancelled"},
    )
    assert await d.js("third") == "cancelled"
    # An error that answers an op about no subscription goes to the client's onError.
    await d.receive(0, error(None, "bad_request", "unsubscribe", "missing field 'stream'"))
    assert await d.js("log.clientErrors") == ["bad_request"]
    assert await d.js("log.errors") == []


async def test_a_cancel_without_a_subscription_settles_on_the_gateways_answer(page: Page) -> None:
    d = Driver(page)
    await d.run(
        "window.client = makeClient();"
        "window.ok = client.cancel('a').then((r) => r, (e) => e.code);"
        "window.refused = client.cancel('b').then((r) => r, (e) => e.code);"
    )
    await d.run("sockets[0].open()")
    assert await d.sent(0) == [{"op": "cancel", "stream": "a"}, {"op": "cancel", "stream": "b"}]
    await d.receive(0, {"op": "cancelling", "stream": "a", "status": "running"})
    assert await d.js("ok") == {"stream": "a", "status": "running"}
    # Unanswered when the connection drops: sent again on the next one.
    await d.run("sockets[0].drop(1006)")
    await d.sockets(2)
    await d.run("sockets[1].open()")
    assert await d.sent(1) == [{"op": "cancel", "stream": "b"}]
    await d.receive(1, error("b", "forbidden", "cancel", "token does not allow cancelling 'b'"))
    assert await d.js("refused") == "forbidden"
    assert await d.js("log.clientErrors") == []


async def test_a_connection_that_stops_answering_pings_is_replaced(page: Page) -> None:
    d = Driver(page)
    await d.run(
        "window.sub = follow(window.client = makeClient({pingInterval: 20, pongTimeout: 20}), 's1')"
    )
    await d.run("sockets[0].open()")
    await page.wait_for_function("sockets[0].sent.some(m => m.op === 'ping')")
    await d.sockets(2)  # no pong came: dead
    assert await d.js("sockets[0].closedWith.code") == 4000
    await d.run("client.close()")
    assert await d.js("[client.state, sub.state]") == ["closed", "closed"]
    await page.wait_for_function("log.iterated.includes('<end>')")
