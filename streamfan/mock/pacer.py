"""Pacing of the mock upstream's streams: one timer for all of them.

A benchmark runs a thousand streams at 20 tokens/s: 20,000 writes a second. A
task per stream sleeping before each chunk would cost a future, a timer and a task
switch per chunk; instead every stream's next deadline sits in one heap and a
single ``loop.call_at`` callback writes whatever is due, straight to the
transports, then re-arms for the earliest deadline left. Deadlines are computed
from each response's start (``start + send.at``), so pacing never drifts, and a
stream that fell behind sends everything due in one write.

A :class:`PacedStream` also fills long silences with keep-alive comments, and in
``split_bytes`` mode writes one piece per callback, each in its own turn of the
event loop, so a client tends to read them separately.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable, Iterable

from streamfan.mock.http import LAST_CHUNK, chunk_frame
from streamfan.mock.plan import Send

#: Delay between split pieces when none is asked: enough to put each in its own
#: loop iteration (after the selector ran), without slowing a test down.
SPLIT_YIELD_S = 1e-6
#: Longest a due send may wait for the pacer's timer, once more than DEFAULT_BUSY
#: streams are waiting.
DEFAULT_TICK_S = 0.001
DEFAULT_BUSY = 32


class PacedStream:
    """The timed writes of one response; ``done`` resolves when the last is written."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        sends: Iterable[Send],
        *,
        start: float,
        end_body: bool,
        keepalive_s: float,
        keepalive_frame: bytes,  # already framed
        forever: bool,
        split_delay_s: float | None,
        on_write: Callable[[int, int], None],
        chunked: bool = True,
    ) -> None:
        self.transport = transport
        # Sends are made as they come due (see streamfan.mock.script.Script.plan): pull one ahead.
        self._sends = iter(sends)
        self._head = next(self._sends, None)
        self.start = start
        self.chunked = chunked  # HTTP/1.1 chunked framing (HTTP/1.0: raw bytes, end at close)
        self.end_body = end_body and chunked  # the body's terminator rides on the last write
        self.keepalive_s = keepalive_s
        self.keepalive_frame = keepalive_frame
        self.forever = forever  # keep sending keep-alives after the last send (a stall)
        self.split_delay_s = split_delay_s  # one send per turn (None: coalesce what is due)
        self.on_write = on_write  # (chunks, keepalives) written
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_write = start
        self.cancelled = False
        if self._head is None:
            self.done.set_result(None)

    def cancel(self) -> None:
        self.cancelled = True

    def due(self) -> float | None:
        """When this stream next has something to write (None: nothing, ever)."""
        if self.cancelled:
            return None
        when = math.inf
        if self._head is not None:
            when = self.start + self._head.at
        elif not self.forever:
            return None
        if self.keepalive_s:
            when = min(when, self.last_write + self.keepalive_s)
        return None if when == math.inf else when

    def fire(self, now: float) -> float | None:
        """Write what is due at ``now``; returns the next deadline."""
        if self.cancelled:
            return None
        if self.transport.is_closing():
            # The connection is going away under us: let the response's task know.
            if not self.done.done():
                self.done.set_exception(ConnectionResetError("the connection was closed"))
            return None
        head = self._head
        if head is not None and self.start + head.at <= now:
            batch = [head]
            head = next(self._sends, None)
            if self.split_delay_s is None:
                # Everything already due (the stream fell behind) leaves in one write.
                while head is not None and self.start + head.at <= now:
                    batch.append(head)
                    head = next(self._sends, None)
            self._head = head
            frame = batch[0].data if len(batch) == 1 else b"".join([s.data for s in batch])
            if self.chunked:
                frame = chunk_frame(frame)
            if head is None and self.end_body:
                frame += LAST_CHUNK  # the end of the body rides along
            self.transport.write(frame)
            self.last_write = now
            self.on_write(sum([s.chunks for s in batch]), 0)
            if head is None and not self.done.done():
                self.done.set_result(None)
            if self.split_delay_s is not None and head is not None:
                # Not before the next turn of the loop, so the client can read in between.
                return max(self.start + head.at, now + (self.split_delay_s or SPLIT_YIELD_S))
        elif self.keepalive_s and self.last_write + self.keepalive_s <= now:
            self.transport.write(self.keepalive_frame)
            self.last_write = now
            self.on_write(0, 1)
        return self.due()


class Pacer:
    """Writes the due sends of every :class:`PacedStream` of a server from one timer.

    With more than ``busy`` streams waiting, the timer fires at most once per
    ``tick_s``: a thousand streams have a thousand different deadlines, and a turn
    of the event loop per deadline (an epoll_wait each) would cost more than the
    writes. A send is then up to ``tick_s`` late, never early. With few streams
    (tests) every deadline gets its own turn.
    """

    def __init__(self, tick_s: float = DEFAULT_TICK_S, busy: int = DEFAULT_BUSY) -> None:
        self.tick_s = tick_s
        self.busy = busy
        self._heap: list[tuple[float, int, PacedStream]] = []
        self._seq = 0  # ties broken by arrival: streams due together keep their order
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._fired_at = -math.inf

    def add(self, stream: PacedStream) -> None:
        when = stream.due()
        if when is None:
            return
        self._push(when, stream)
        self._arm(when)

    def _push(self, when: float, stream: PacedStream) -> None:
        heapq.heappush(self._heap, (when, self._seq, stream))
        self._seq += 1

    def _arm(self, when: float) -> None:
        if len(self._heap) > self.busy:
            when = max(when, self._fired_at + self.tick_s)
        if when >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = asyncio.get_running_loop().call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self._fired_at = asyncio.get_running_loop().time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            stream = heapq.heappop(heap)[2]
            try:
                when = stream.fire(now)
            except Exception as exc:  # a broken stream must not stop the others
                if not stream.done.done():
                    stream.done.set_exception(exc)
                continue
            if when is not None:
                self._push(when, stream)
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
        self._heap.clear()
