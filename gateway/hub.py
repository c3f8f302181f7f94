"""Stream → local subscribers: reads, catch-up and fan-out encoded once — the I/O.

The decisions are :mod:`streamfan.recovery`'s: where a position resolves,
whether history after it is ``gone``, when a subscriber is in step, ahead or
pending, when a stream has finished. This module does what they say: it reads
(through :class:`~gateway.history.History`), encodes each batch once into JSON
Lines and queues the same bytes on every socket (:class:`~gateway.peer.Peer`).

One subscriber's way in (:meth:`Hub._catch_up`, driving a
:class:`~streamfan.recovery.Reader`): the stream's channel is subscribed — and
Redis confirmed it — before anything is read, so every later write wakes the
hub; then the meta, ``subscribed`` with the resolved position, and history page
by page to this socket alone, pacing itself on the socket; then it joins the
fan-out. So a subscriber joining mid-stream never disturbs the others, and every
id reaches every subscriber once, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from gateway.batch import Batch, Sink
from gateway.history import History
from gateway.live import LiveSource
from gateway.metrics import Metrics
from gateway.streams import StreamState, Subscription
from gateway.tuning import Tuning
from streamfan import protocol
from streamfan.errors import RedisUnavailable
from streamfan.page import Entry
from streamfan.positions import ZERO, format_id, parse_id
from streamfan.protocol import CloseCode
from streamfan.recovery import Deliver, End, Join, Read, Reader, Refuse, Rewatch
from streamfan.wakeup import decode_wakeup

log = logging.getLogger(__name__)


class Hub:
    def __init__(
        self, history: History, live: LiveSource, metrics: Metrics, tuning: Tuning
    ) -> None:
        self.history = history
        self.live = live
        self.metrics = metrics
        self.tuning = tuning
        self.streams: dict[str, StreamState] = {}
        #: Each connection's subscriptions, by stream id.
        self.subscriptions: dict[Sink, dict[str, Subscription]] = {}
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

    def subscription_count(self) -> int:
        return sum(len(subs) for subs in self.subscriptions.values())

    def subscribe(self, peer: Sink, stream_id: str, position: str) -> Subscription:
        peer.session.add(stream_id)
        st = self._state_for(stream_id)
        sub = Subscription(peer, stream_id, st)
        self.subscriptions.setdefault(peer, {})[stream_id] = sub
        st.pending.add(sub)
        self.spawn(self._subscription(sub, position), name=f"subscribe {stream_id}")
        return sub

    def unsubscribe(self, peer: Sink, stream_id: str) -> None:
        sub = self.subscriptions.get(peer, {}).get(stream_id)
        if sub is not None:
            self._release(sub)

    def detach(self, peer: Sink) -> None:
        for sub in list(self.subscriptions.get(peer, {}).values()):
            self._release(sub)
        self.subscriptions.pop(peer, None)

    # --- state bookkeeping -----------------------------------------------------------------

    def _state_for(self, stream_id: str) -> StreamState:
        st = self.streams.get(stream_id)
        if st is None:
            # Subscribe to the channel first; history is read only after Redis
            # confirmed it, so no write can fall between the two.
            watched = self.spawn(self.live.watch(stream_id), name=f"watch {stream_id}")
            st = self.streams[stream_id] = StreamState(stream_id, watched)
        return st

    def _forget(self, sub: Subscription) -> None:
        sub.active = False
        subs = self.subscriptions.get(sub.peer)
        if subs is not None and subs.get(sub.stream_id) is sub:
            del subs[sub.stream_id]
            sub.peer.session.discard(sub.stream_id)

    def _release(self, sub: Subscription) -> None:
        """Take a subscription out of everything; forget the stream if nobody is left."""
        self._forget(sub)
        st = sub.state
        st.leave(sub)
        if st.empty and self.streams.get(st.stream_id) is st:
            self._drop(st)

    def _drop(self, st: StreamState) -> None:
        st.closed = True
        del self.streams[st.stream_id]
        # A watch that has not run yet would subscribe after this unwatch: cancel it.
        st.watched.cancel()
        self.live.unwatch(st.stream_id)

    def _fail(self, sub: Subscription, code: str, message: str) -> None:
        """End a subscription with an error: the answer to its ``subscribe`` if it
        was not answered yet, else an error that answers nothing."""
        self.metrics.error(code)
        sub.peer.error(sub, code, message, answered=sub.answered)
        self._release(sub)

    # --- one subscriber's way in -------------------------------------------------------------

    async def _subscription(self, sub: Subscription, position: str) -> None:
        """The task behind one ``subscribe``; ends when the subscriber joined or finished."""
        try:
            await self._catch_up(sub, Reader(sub.stream_id, position))
        except RedisUnavailable:
            if sub.active and sub in sub.state.pending:
                again = "resume from your last id" if sub.answered else "subscribe again shortly"
                self._fail(sub, protocol.UNAVAILABLE, f"Redis is unavailable; {again}")
        except Exception:
            log.exception("stream %s: subscription failed", sub.stream_id)
            if sub.active and sub in sub.state.pending:
                self._fail(sub, protocol.UNAVAILABLE, "the gateway failed; subscribe again")
        finally:
            if sub.active and sub in sub.state.pending:
                self._release(sub)  # cancelled (shutdown): leave nothing behind

    async def _catch_up(self, sub: Subscription, reader: Reader) -> None:
        sid, peer, tuning = sub.stream_id, sub.peer, self.tuning
        await asyncio.shield(sub.state.watched)
        meta = await self.history.meta(sid)
        if not sub.active:
            return
        if meta is not None:
            sub.state.meta = meta
        if meta is None:
            opened = reader.open(None, ZERO)
        else:
            opened = reader.open(meta.status, parse_id(meta.last_id) if meta.last_id else ZERO)
        if isinstance(opened, Refuse):
            self._fail(sub, opened.code, opened.message)
            return
        # Nothing at or below this position is sent: resuming from it neither
        # skips nor repeats.
        peer.subscribed(sub, opened.status, format_id(opened.position).decode())
        sub.answered = True
        while sub.active:
            step = reader.step(sub.state)
            if isinstance(step, Rewatch):
                sub.state.pending.discard(sub)
                sub.state = self._state_for(sid)
                sub.state.pending.add(sub)
                await asyncio.shield(sub.state.watched)
                reader.rewatched()
                continue
            if isinstance(step, Join):
                st = sub.state
                if step.establish is not None and st.establish(step.establish):
                    self._start_read(st)
                st.join(sub, step.position)
                peer.joined(sub)
                return
            if isinstance(step, End):
                peer.end(sub, step.status)
                self._release(sub)
                return
            assert isinstance(step, Read)  # a reader with a fan-out never waits
            page = await self.history.read_after(
                sid, step.after, tuning.catch_up_page, known_last=step.known_last
            )
            self.metrics.history_reads += 1
            if not sub.active:
                return
            out = reader.feed(page)
            if isinstance(out, Refuse):
                self._fail(sub, out.code, out.message)
                return
            if isinstance(out, Deliver):
                peer.replay(sub, out.entries, out.final_status)
                self.metrics.events_delivered += len(out.entries)
                if out.final_status is not None:
                    self._release(sub)  # the terminal event and ``end`` went out
                    return
                if not await peer.drained(tuning.drain_timeout_s):
                    if sub.active and not peer.closing:
                        self.metrics.slow_disconnects += 1
                        peer.cut(CloseCode.TOO_SLOW)
                    return

    # --- the live path ------------------------------------------------------------------------

    def on_wakeup(self, stream_id: str, payload: bytes) -> None:
        st = self.streams.get(stream_id)
        if st is None or st.closed:
            return
        st.activity = self._loop.time()
        decision = st.on_wakeup(decode_wakeup(payload))
        if decision is True:
            self._start_read(st)
        elif decision:
            self.metrics.direct_deliveries += 1
            self._deliver(st, decision)

    def resync(self, stream_ids: list[str] | None) -> None:
        targets = (
            list(self.streams.values())
            if stream_ids is None
            else [st for sid in stream_ids if (st := self.streams.get(sid)) is not None]
        )
        for st in targets:
            if st.request_read():
                self._start_read(st)

    def _deliver(self, st: StreamState, batch: Sequence[Entry]) -> None:
        """Hand a batch newer than the shared position to every live subscriber,
        encoded once (the subscribers that were ahead get their part of it)."""
        entries, status, caught = st.advance(batch)
        # Encoded at most once per wire format, by the first subscriber of each.
        out = Batch(st, entries, status)
        for sub in st.in_step:
            sub.peer.deliver(out)
        delivered = len(entries) * len(st.in_step)
        for sub, first in caught:
            sub.peer.deliver(out, first)
            delivered += len(entries) - first
        st.promote(caught, len(entries))
        st.activity = self._loop.time()
        self.metrics.events_delivered += delivered
        now_ms = time.time() * 1000.0
        for eid, _ in entries:
            self.metrics.observe_lag(max(0.0, now_ms - int(eid.partition(b"-")[0])) / 1000.0)
        if status is not None:
            self._close(st)

    def _close(self, st: StreamState, error: tuple[str, str] | None = None) -> None:
        """Stop fanning out a stream: it ended (``end`` was sent) or failed with ``error``."""
        for sub in (*st.in_step, *st.ahead):
            if error is not None:
                # Only subscribers that were answered long ago are fanned out to.
                self.metrics.error(error[0])
                sub.peer.error(sub, *error, answered=True)
            self._forget(sub)
        st.in_step.clear()
        st.ahead.clear()
        # Subscribers still catching up finish from history on their own.
        if self.streams.get(st.stream_id) is st:
            self._drop(st)

    def _start_read(self, st: StreamState) -> None:
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
                fresh = st.on_page(page, last)
                if isinstance(fresh, Refuse):
                    log.warning("stream %s: history after %s is gone", st.stream_id, last)
                    self._close(st, (fresh.code, fresh.message))
                    return
                if fresh:
                    self._deliver(st, fresh)
                if st.read_finished(page, gen):
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
                if not st.closed and st.behind(lid):
                    log.info("stream %s: behind its meta; re-reading", st.stream_id)
                    if st.request_read():
                        self._start_read(st)
