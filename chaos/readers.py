"""Chaos readers: subscribers that survive every drop by resuming from their last id.

:class:`Reader` reads over the WebSocket; :class:`SseReader` over the SSE door
(``GET /streams/{ID}/events``), resuming with ``Last-Event-ID`` as a browser's
``EventSource`` does.

On any drop — a killed gateway, a ``too_slow`` or ``unavailable`` error, a closed
socket, or now and then its own choice — it reconnects to a random gateway and
subscribes with ``from`` = the last id it saw (``"0"`` before the first), as
docs/protocol.md tells every client to. It records what it received in a
:class:`~chaos.verdict.ReaderLog` for the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from chaos.verdict import ReaderLog
from streamfan.events import decode_event
from streamfan.positions import FROM_START
from streamfan.protocol import split_frame

#: Error codes after which a client is meant to reconnect and resume.
RESUMABLE = frozenset({"too_slow", "unavailable"})
#: Chance, per event, that the reader drops its own connection (exercises resume).
SELF_DROP = 0.01
#: Backoff between reconnects, seconds (jittered).
BACKOFF_S = (0.05, 0.3)


class Reader:
    def __init__(
        self,
        log: ReaderLog,
        gateways: Callable[[], Sequence[str]],
        token: str,
        seed: int,
    ) -> None:
        self.log = log
        self._gateways = gateways
        self._token = token
        self._rng = random.Random(seed)
        self._last_progress = time.monotonic()
        self._refused = False

    @property
    def position(self) -> str:
        return self.log.received[-1][0] if self.log.received else FROM_START

    def _progress(self) -> None:
        now = time.monotonic()
        self.log.longest_wait_s = max(self.log.longest_wait_s, now - self._last_progress)
        self._last_progress = now

    async def run(self) -> None:
        """Read until the stream's ``end`` or a refusal; reconnect on anything else."""
        try:
            await self._read()
        finally:
            self._progress()  # a reader that never ended waited until it was stopped

    async def _read(self) -> None:
        first = True
        while self.log.end_status is None and not self._refused:
            if not first:
                self.log.reconnects += 1
                await asyncio.sleep(self._rng.uniform(*BACKOFF_S))  # waits-on-time-ok: backoff
            first = False
            url = self._rng.choice(list(self._gateways())) + "/ws?token=" + self._token
            try:
                async with connect(url, open_timeout=5, max_size=None) as ws:
                    await self._session(ws)
            except (OSError, WebSocketException, TimeoutError):
                continue

    async def _session(self, ws: ClientConnection) -> None:
        stream = self.log.stream_id
        await ws.send(orjson.dumps({"op": "subscribe", "stream": stream, "from": self.position}))
        async for frame in ws:
            for msg in split_frame(frame):
                op = msg.get("op")
                if op == "event" and msg.get("stream") == stream:
                    self.log.received.append((msg["id"], decode_event(orjson.dumps(msg["event"]))))
                    self._progress()
                    if self._rng.random() < SELF_DROP:
                        with contextlib.suppress(WebSocketException):
                            await ws.close()
                        return
                elif op == "end":
                    self.log.end_status = msg.get("status")
                    return
                elif op == "error":
                    code = str(msg.get("code"))
                    if code not in RESUMABLE:
                        self.log.refusals.append(code)
                        self._refused = True
                    return


class SseReader(Reader):
    """The same reader over ``GET /streams/{ID}/events``; resumes with ``Last-Event-ID``."""

    async def _read(self) -> None:
        first = True
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=30.0)) as http:
            while self.log.end_status is None and not self._refused:
                if not first:
                    self.log.reconnects += 1
                    await asyncio.sleep(self._rng.uniform(*BACKOFF_S))  # waits-on-time-ok
                first = False
                base = self._rng.choice(list(self._gateways())).replace("ws://", "http://", 1)
                url = f"{base}/streams/{self.log.stream_id}/events"
                headers = {"Authorization": f"Bearer {self._token}"}
                if self.log.received:
                    headers["Last-Event-ID"] = self.position
                try:
                    async with http.stream("GET", url, headers=headers) as response:
                        if response.status_code in (502, 503, 504):
                            continue  # no gateway behind the front just now
                        if response.status_code != 200:
                            self.log.refusals.append(f"http {response.status_code}")
                            self._refused = True
                            return
                        await self._messages(response)
                except (httpx.HTTPError, OSError):
                    continue

    async def _messages(self, response: httpx.Response) -> None:
        entry_id, kind, data = "", "", ""
        async for line in response.aiter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "id":
                    entry_id = value
                elif name == "event":
                    kind = value
                elif name == "data":
                    data = value
                continue
            if kind == "end":
                self.log.end_status = orjson.loads(data).get("status")
                return
            if kind == "error":
                code = str(orjson.loads(data).get("code"))
                if code not in RESUMABLE:
                    self.log.refusals.append(code)
                    self._refused = True
                return
            if data:
                self.log.received.append((entry_id, decode_event(data)))
                self._progress()
                if self._rng.random() < SELF_DROP:
                    return
            entry_id, kind, data = "", "", ""
