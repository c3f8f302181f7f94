"""What the mock upstream saw: one :class:`RequestRecord` per chat request, and waiting on them.

Tests use these to check what a client sent (body, headers) and what happened to
the response (chunks sent, how it ended, when the client went away). Waiting is
event-driven: every change wakes the waiters, who re-check their condition, so a
test never polls or sleeps.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from streamfan.mock.script import Script

T = TypeVar("T")

#: Requests remembered (oldest forgotten first) and fault keys counted.
RECORD_LIMIT = 10_000

#: How a response ended.
COMPLETE = "complete"  # everything was sent, the body ended normally
DROPPED = "dropped"  # the mock closed or reset the connection on purpose (a fault)
DISCONNECTED = "disconnected"  # the client went away before the end
ABORTED = "aborted"  # the server was stopped mid-response


@dataclass(eq=False)
class RequestRecord:
    """One ``POST /chat/completions``. Times are ``loop.time()`` (monotonic) seconds."""

    index: int
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # the parsed JSON body, or None if it did not parse
    started_at: float
    started_wall: float  # time.time(), for humans
    fault_key: str | None = None
    attempt: int = 0  # 1-based count of requests with this fault_key (0: no key)
    fault: str | None = None  # the fault applied to this request ("http_500", "drop", ...)
    status: int | None = None  # the HTTP status sent
    stream: bool = False
    script: Script | None = None  # what the mock meant to say (expected_message, ...)
    chunks_sent: int = 0  # chunk objects written (not keep-alives, [DONE] or faults)
    keepalives_sent: int = 0
    first_chunk_at: float | None = None
    ended_at: float | None = None
    outcome: str | None = None  # COMPLETE, DROPPED, DISCONNECTED, ABORTED; None while running
    disconnected_at: float | None = None
    done_event: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    disconnect_event: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def mock(self) -> dict[str, Any]:
        mock = self.body.get("mock") if isinstance(self.body, dict) else None
        return mock if isinstance(mock, dict) else {}

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def disconnected(self) -> bool:
        """The client went away before the response ended."""
        return self.outcome == DISCONNECTED

    def summary(self) -> dict[str, Any]:
        """A JSON-able view for ``GET /_mock/requests`` (the API key redacted)."""
        headers = dict(self.headers)
        if "authorization" in headers:
            scheme = headers["authorization"].partition(" ")[0]
            headers["authorization"] = f"{scheme} [redacted]"

        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - self.started_at, 6)

        return {
            "index": self.index,
            "method": self.method,
            "path": self.path,
            "started_at": self.started_wall,
            "fault_key": self.fault_key,
            "attempt": self.attempt,
            "fault": self.fault,
            "status": self.status,
            "stream": self.stream,
            "chunks_sent": self.chunks_sent,
            "keepalives_sent": self.keepalives_sent,
            "first_chunk_s": rel(self.first_chunk_at),
            "ended_s": rel(self.ended_at),
            "outcome": self.outcome,
            "disconnected": self.disconnected,
            "disconnected_s": rel(self.disconnected_at),
            "headers": headers,
            "body": self.body,
        }


Selector = int | str


class Recorder:
    """The records of one server, bounded, with event-driven waits."""

    def __init__(self, limit: int = RECORD_LIMIT) -> None:
        self.limit = limit
        self._records: collections.deque[RequestRecord] = collections.deque(maxlen=limit)
        self._attempts: dict[str, int] = {}
        self._next_index = 0
        self._change: asyncio.Future[None] | None = None

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(list(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record_factory: Callable[[int], RequestRecord]) -> RequestRecord:
        record = record_factory(self._next_index)
        self._next_index += 1
        self._records.append(record)
        self.changed()
        return record

    def count_attempt(self, key: str) -> int:
        """Count one more request for ``key``; returns its 1-based attempt number."""
        attempt = self._attempts.pop(key, 0) + 1
        self._attempts[key] = attempt  # re-inserted: the dict stays in recency order
        if len(self._attempts) > self.limit:
            del self._attempts[next(iter(self._attempts))]
        return attempt

    def clear(self) -> None:
        self._records.clear()
        self._attempts.clear()
        self._next_index = 0
        self.changed()

    def changed(self) -> None:
        """Wake every waiter (cheap when nobody waits: called for every chunk)."""
        if self._change is not None:
            if not self._change.done():
                self._change.set_result(None)
            self._change = None

    def select(self, which: Selector, attempt: int | None = None) -> list[RequestRecord]:
        """The records ``which`` names: an int is a request index, a str a fault_key."""
        if isinstance(which, int):
            return [r for r in self._records if r.index == which]
        found = [r for r in self._records if r.fault_key == which]
        if attempt is not None:
            found = [r for r in found if r.attempt == attempt]
        return found

    async def wait_for(self, predicate: Callable[[], T | None]) -> T:
        """Wait until ``predicate()`` returns something other than None; return it."""
        while (found := predicate()) is None:
            if self._change is None:
                self._change = asyncio.get_running_loop().create_future()
            # Shielded: one cancelled waiter must not cancel the shared future.
            await asyncio.shield(self._change)
        return found

    async def wait(
        self,
        which: Selector,
        attempt: int | None,
        condition: Callable[[RequestRecord], bool],
    ) -> RequestRecord:
        """The first record named by ``which`` for which ``condition`` holds, once it does."""

        def check() -> RequestRecord | None:
            return next((r for r in self.select(which, attempt) if condition(r)), None)

        return await self.wait_for(check)
