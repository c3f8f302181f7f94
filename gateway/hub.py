"""Stream → local subscribers: the shared position, reads, and fan-out encoded once.

Each watched stream has one :class:`StreamState` with ``last``, the id up to
which its live subscribers have been given everything. A wake-up whose
``prev_id`` equals ``last`` is delivered straight from the message (it provably
skips nothing); any other wake-up starts a read from ``last`` — at most one per
stream in flight, later wake-ups coalesced into a generation counter. Each batch
is encoded once into JSON Lines and the same bytes are queued on every socket.

Subscribers live in one of three places of a state:

``pending``  catching up on their own from their requested position
             (:mod:`gateway.catchup`), reading history page by page;
``subs``     in step: they have exactly everything up to ``last``;
``ahead``    they already have everything up to an id beyond ``last`` (they
             resumed from an id this gateway has not delivered yet); a batch
             gives them only what is newer, then they are in step.

So a subscriber joining mid-stream never disturbs the others, and every id
reaches every subscriber once, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from gateway import catchup
from gateway.history import ZERO, Entry, History, Id, format_id, id_of, terminal_status
from gateway.live import Live
from gateway.metrics import Metrics
from gateway.peer import Peer, Shared
from gateway.tuning import Tuning
from streamfan import protocol
from streamfan.errors import RedisUnavailable
from streamfan.wakeup import decode_wakeup

log = logging.getLogger(__name__)


class Subscription:
    __slots__ = ("active", "answered", "peer", "state", "stream_id")

    def __init__(self, peer: Peer, stream_id: str, state: StreamState) -> None:
        self.peer = peer
        self.stream_id = stream_id
        self.state = state
        self.active = True
        #: ``subscribed`` went out: a later error answers no request (``reply_to`` null).
        self.answered = False


class StreamState:
    __slots__ = (
        "activity",
        "ahead",
        "closed",
        "dirty",
        "final_status",
        "gen",
        "last",
        "last_raw",
        "pending",
        "prefix",
        "reading",
        "stream_id",
        "subs",
        "watched",
    )

    def __init__(self, stream_id: str, watched: asyncio.Task[None]) -> None:
        self.stream_id = stream_id
        self.prefix = protocol.event_prefix(stream_id)
        self.subs: set[Subscription] = set()
        self.ahead: dict[Subscription, Id] = {}
        self.pending: set[Subscription] = set()
        #: The shared position; None until the first subscriber has read up to the end.
        self.last: Id | None = None
        self.last_raw = b""
        #: A wake-up came while ``last`` was unknown: read once it is known.
        self.dirty = False
        #: Bumped whenever a read may find something new (coalesces wake-ups).
        self.gen = 0
        self.reading = False
        #: No longer fanned out: the stream ended, failed, or nobody watches it.
        self.closed = False
        #: The status of the stream's terminal event, once delivered.
        self.final_status: str | None = None
        #: Done once Redis confirmed the SUBSCRIBE to the stream's channel.
        self.watched = watched
        self.activity = 0.0

    @property
    def fanned_out(self) -> bool:
        return bool(self.subs or self.ahead)


class Hub:
    def __init__(self, history: History, live: Live, metrics: Metrics, tuning: Tuning) -> None:
        self.history = history
        self.live = live
        self.metrics = metrics
        self.tuning = tuning
        self.streams: dict[str, StreamState] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.get_running_loop()

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.live.start(self)
        self.spawn(self._safety_net(), name="safety-net")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.live.stop()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str | None = None) -> asyncio.Task[None]:
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    # --- what the server calls -----------------------------------------------------------

    def subscribe(self, peer: Peer, stream_id: str, position: str) -> None:
        peer.session.add(stream_id)
        st = self.state_for(stream_id)
        sub = Subscription(peer, stream_id, st)
        peer.subs[stream_id] = sub
        st.pending.add(sub)
        self.spawn(catchup.run(self, sub, position), name=f"subscribe {stream_id}")

    def unsubscribe(self, peer: Peer, stream_id: str) -> None:
        sub = peer.subs.get(stream_id)
        if sub is not None:
            self.release(sub)

    def detach(self, peer: Peer) -> None:
        for sub in list(peer.subs.values()):
            self.release(sub)

    # --- state bookkeeping (also used by gateway.catchup) ----------------------------------

    def state_for(self, stream_id: str) -> StreamState:
        st = self.streams.get(stream_id)
        if st is None:
            # Subscribe to the channel first; history is read only after Redis
            # confirmed it, so no write can fall between the two.
            watched = self.spawn(self.live.watch(stream_id), name=f"watch {stream_id}")
            st = self.streams[stream_id] = StreamState(stream_id, watched)
        return st

    def release(self, sub: Subscription) -> None:
        """Take a subscription out of everything; forget the stream if nobody is left."""
        sub.active = False
        st, peer, sid = sub.state, sub.peer, sub.stream_id
        st.subs.discard(sub)
        st.ahead.pop(sub, None)
        st.pending.discard(sub)
        if peer.subs.get(sid) is sub:
            del peer.subs[sid]
            peer.session.discard(sid)
        if not (st.subs or st.ahead or st.pending) and self.streams.get(sid) is st:
            self._drop(st)

    def _drop(self, st: StreamState) -> None:
        st.closed = True
        del self.streams[st.stream_id]
        # A watch that has not run yet would subscribe after this unwatch: cancel it.
        st.watched.cancel()
        self.live.unwatch(st.stream_id)

    def finish(self, sub: Subscription, last_message: bytes) -> None:
        sub.peer.send(last_message, bounded=False)
        self.release(sub)

    def fail(self, sub: Subscription, code: str, message: str) -> None:
        """End a subscription with an error: the answer to its ``subscribe`` if it
        was not answered yet, else an error that answers nothing."""
        self.metrics.error(code)
        reply_to = None if sub.answered else protocol.SUBSCRIBE
        self.finish(sub, protocol.error(sub.stream_id, code, message, reply_to=reply_to))

    def establish(self, st: StreamState, end: Id) -> None:
        """Set the shared position from a read that reached the stream's end."""
        st.last, st.last_raw = end, format_id(end)
        if st.dirty:
            st.dirty = False
            self._bump(st)

    def enter(self, sub: Subscription, pos: Id) -> None:
        """A caught-up subscriber joins the shared fan-out."""
        st = sub.state
        st.pending.discard(sub)
        if pos == st.last:
            st.subs.add(sub)
        else:
            st.ahead[sub] = pos

    # --- the live path ------------------------------------------------------------------------

    def on_wakeup(self, stream_id: str, payload: bytes) -> None:
        st = self.streams.get(stream_id)
        if st is None or st.closed:
            return
        st.activity = self._loop.time()
        if st.last is None:
            st.dirty = True
            return
        wake = decode_wakeup(payload)
        if wake is None or not wake.entries:
            self._bump(st)
        elif wake.prev_id == st.last_raw:
            self.metrics.direct_deliveries += 1
            self.deliver(st, wake.entries)
        elif id_of(wake.last_id) > st.last:
            self._bump(st)

    def resync(self, stream_ids: list[str] | None) -> None:
        targets = (
            list(self.streams.values())
            if stream_ids is None
            else [st for sid in stream_ids if (st := self.streams.get(sid)) is not None]
        )
        for st in targets:
            if st.last is None:
                st.dirty = True
            else:
                self._bump(st)

    def deliver(self, st: StreamState, entries: Sequence[Entry]) -> None:
        """Hand a batch newer than ``st.last`` to every live subscriber, encoded once."""
        prefix, sid = st.prefix, st.stream_id
        lines = [protocol.event_line(prefix, eid, ev) for eid, ev in entries]
        last_raw = entries[-1][0]
        last = id_of(last_raw)
        status = terminal_status(entries[-1][1])
        end_line = protocol.end(sid, status) if status is not None else b""
        if status is not None:
            lines.append(end_line)
        shared = Shared(protocol.join_lines(lines))
        for sub in st.subs:
            sub.peer.send_shared(shared)
        delivered = len(entries) * len(st.subs)
        if st.ahead:
            for sub, pos in list(st.ahead.items()):
                if pos >= last:
                    if status is not None:
                        sub.peer.send(end_line)
                    continue
                first = next(i for i, (eid, _) in enumerate(entries) if id_of(eid) > pos)
                sub.peer.send(protocol.join_lines(lines[first:]))
                delivered += len(entries) - first
                del st.ahead[sub]
                st.subs.add(sub)
        st.last, st.last_raw = last, last_raw
        st.activity = self._loop.time()
        self.metrics.events_delivered += delivered
        now_ms = time.time() * 1000.0
        for eid, _ in entries:
            self.metrics.observe_lag(max(0.0, now_ms - int(eid.partition(b"-")[0])) / 1000.0)
        if status is not None:
            st.final_status = status
            self._close(st)

    def _close(self, st: StreamState, error: tuple[str, str] | None = None) -> None:
        """Stop fanning out a stream: it ended (``end`` was sent) or failed with ``error``."""
        for sub in (*st.subs, *st.ahead):
            if error is not None:
                # Only subscribers that were answered long ago are fanned out to.
                self.metrics.error(error[0])
                line = protocol.error(st.stream_id, *error, reply_to=None)
                sub.peer.send(line, bounded=False)
            sub.active = False
            if sub.peer.subs.get(sub.stream_id) is sub:
                del sub.peer.subs[sub.stream_id]
                sub.peer.session.discard(sub.stream_id)
        st.subs.clear()
        st.ahead.clear()
        # Subscribers still catching up finish from history on their own.
        if self.streams.get(st.stream_id) is st:
            self._drop(st)

    def _bump(self, st: StreamState) -> None:
        st.gen += 1
        if st.reading or st.closed or st.last is None:
            return
        st.reading = True
        self.spawn(self._pump(st), name=f"pump {st.stream_id}")

    async def _pump(self, st: StreamState) -> None:
        """Read from the shared position until nothing newer is known; deliver it."""
        delay = self.tuning.backoff_min_s
        try:
            while not st.closed and st.fanned_out and st.last is not None:
                gen, last = st.gen, st.last
                try:
                    page = await self.history.read_after(st.stream_id, last, self.tuning.pump_page)
                except RedisUnavailable as exc:
                    log.info("stream %s: read failed (%s); retrying", st.stream_id, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.tuning.backoff_max_s)
                    continue
                delay = self.tuning.backoff_min_s
                self.metrics.history_reads += 1
                if st.closed:
                    return
                # ``page.gone`` is the shared rule: entries after ``last`` were lost
                # (``known_last=last`` would change nothing: ``last`` is the position).
                # A follower also gives up on a stream whose events key vanished after
                # it delivered from it (deleted, or expired with its meta): nothing
                # after ``last`` was lost, but no terminal event can come any more
                # (and a new subscriber to an expired stream is told ``gone`` too).
                if page.gone or (page.missing and last > ZERO):
                    log.warning("stream %s: history after %s is gone", st.stream_id, last)
                    self._close(st, (protocol.GONE, catchup.gone_message(st.stream_id, last)))
                    return
                # A direct delivery may have moved the position during the read.
                fresh = [e for e in page.entries if id_of(e[0]) > st.last]
                if fresh:
                    self.deliver(st, fresh)
                if page.complete and st.gen == gen:
                    return
        finally:
            st.reading = False

    async def _safety_net(self) -> None:
        """Catch what a lost wake-up would miss: compare quiet streams with their meta."""
        while True:
            interval = self.tuning.safety_poll_s if self.live.up else self.tuning.safety_poll_down_s
            await asyncio.sleep(interval)
            # A call per pass: the streams it looked at are not kept alive by this
            # coroutine's locals while it sleeps (dropped ones stayed until the
            # next pass that found a quiet stream, which an idle gateway never has).
            await self._check_quiet(interval)

    async def _check_quiet(self, interval: float) -> None:
        now = self._loop.time()
        quiet = [
            st
            for st in self.streams.values()
            if st.last is not None
            and st.fanned_out
            and not st.reading
            and now - st.activity >= interval
        ]
        for i in range(0, len(quiet), self.tuning.safety_batch):
            batch = quiet[i : i + self.tuning.safety_batch]
            try:
                last_ids = await self.history.last_ids([st.stream_id for st in batch])
            except RedisUnavailable:
                return
            for st, lid in zip(batch, last_ids, strict=True):
                if st.closed or st.last is None:
                    continue
                if (lid is None and st.last > ZERO) or (
                    lid is not None and lid != st.last_raw and id_of(lid) > st.last
                ):
                    log.info("stream %s: behind its meta; re-reading", st.stream_id)
                    self._bump(st)
