"""A chaos reader: one WebSocket subscriber that survives every drop by resuming from its last id.

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
