"""One subscriber's way in: from its requested position to the stream's shared position.

The order is what makes history and live join without a gap or a duplicate:

1. the stream's channel is subscribed (and Redis confirmed it) before anything
   is read, so every write after the read will wake the hub;
2. the meta is read: no meta is ``not_found`` (or ``gone`` for an explicit id:
   the stream existed and has expired); ``$`` resolves to the meta's ``last_id``
   (written in the same script as each ``XADD``, so it is the stream's newest
   entry). ``subscribed`` tells the client that resolved position: everything
   it is sent comes after it, so it can resume from there before any event;
3. history is read page by page from the subscriber's own position, straight
   to its socket only (others are not disturbed), pacing itself on the socket;
4. once it has everything up to the shared position, it joins the fan-out —
   in step, or *ahead* if it already has more (the hub then skips what it has).

A stream that finished (before or during the catch-up) is replayed to its
terminal event, then ``end``; the subscriber never joins.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gateway.history import ZERO, Entry, Id, format_id, id_of, terminal_status
from streamfan import protocol
from streamfan.errors import RedisUnavailable
from streamfan.history import gone_without_meta
from streamfan.protocol import CloseCode

if TYPE_CHECKING:
    from gateway.hub import Hub, Subscription

log = logging.getLogger(__name__)


async def run(hub: Hub, sub: Subscription, position: str) -> None:
    """The task behind one ``subscribe``; ends when the subscriber joined or finished."""
    try:
        await _run(hub, sub, position)
    except Exception:
        log.exception("stream %s: subscription failed", sub.stream_id)
        if sub.active and sub in sub.state.pending:
            hub.fail(sub, protocol.UNAVAILABLE, "the gateway failed; subscribe again")
    finally:
        if sub.active and sub in sub.state.pending:
            hub.release(sub)  # cancelled (shutdown): leave nothing behind


async def _run(hub: Hub, sub: Subscription, position: str) -> None:
    sid, peer = sub.stream_id, sub.peer
    try:
        await _watched(sub)
        meta = await hub.history.meta(sid)
    except RedisUnavailable:
        hub.fail(sub, protocol.UNAVAILABLE, "Redis is unavailable; subscribe again shortly")
        return
    if not sub.active:
        return
    if meta is None:
        if gone_without_meta(position):
            hub.fail(sub, protocol.GONE, f"stream {sid!r} no longer exists (expired)")
        else:
            hub.fail(sub, protocol.NOT_FOUND, f"stream {sid!r} not found")
        return
    known_end: Id | None = None
    known_last = id_of(meta.last_id) if meta.last_id else ZERO
    if position == protocol.FROM_NOW:
        pos = known_last
        known_end = pos
    else:
        pos = id_of(position)
    # ``pos`` is the very position _catch_up delivers after (nothing at or
    # below it is sent), so resuming from it neither skips nor repeats.
    peer.send(protocol.subscribed(sid, meta.status, format_id(pos).decode()), bounded=False)
    sub.answered = True
    finished = meta.status if meta.finished else None
    await _catch_up(hub, sub, pos, known_end, finished, known_last=known_last)


async def _watched(sub: Subscription) -> None:
    await asyncio.shield(sub.state.watched)


async def _catch_up(
    hub: Hub,
    sub: Subscription,
    pos: Id,
    known_end: Id | None,
    finished: str | None,
    *,
    known_last: Id,
) -> None:
    """``pos``: the subscriber has everything up to here. ``known_end``: a real end
    of the stream seen after the channel was subscribed (so the shared position
    may start there). ``finished``: the stream's final status, if it has ended.
    ``known_last``: the meta's ``last_id`` when subscribing (entries up to it were
    written, so a stream that vanished since has lost them)."""
    sid, peer, tuning = sub.stream_id, sub.peer, hub.tuning
    while sub.active:
        st = sub.state
        if finished is None and st.closed:
            if st.final_status is None:
                # The shared fan-out stopped without ending (it was dropped or
                # failed): carry on under a fresh state.
                st.pending.discard(sub)
                sub.state = hub.state_for(sid)
                sub.state.pending.add(sub)
                await _watched(sub)
                known_end = None
                continue
            # The terminal event went out to the fan-out while this subscriber
            # was reading: read on until this subscriber has it too.
            finished = st.final_status
            known_end = None
        if finished is None:
            if st.last is None and known_end is not None:
                hub.establish(st, known_end)
            if st.last is not None and pos >= st.last:
                hub.enter(sub, pos)
                return
        elif known_end is not None and pos >= known_end:
            hub.finish(sub, protocol.end(sid, finished))
            return
        try:
            page = await hub.history.read_after(
                sid, pos, tuning.catch_up_page, known_last=known_last
            )
        except RedisUnavailable:
            hub.fail(sub, protocol.UNAVAILABLE, "Redis is unavailable; resume from your last id")
            return
        hub.metrics.history_reads += 1
        if not sub.active:
            return
        if page.gone:
            hub.fail(sub, protocol.GONE, gone_message(sid, pos))
            return
        if page.entries:
            if _replay(hub, sub, page.entries):
                hub.release(sub)  # the terminal event and ``end`` went out
                return
            pos = id_of(page.entries[-1][0])
            if not await peer.drained(tuning.drain_timeout_s):
                if sub.active and not peer.closing:
                    hub.metrics.slow_disconnects += 1
                    peer.cut(CloseCode.TOO_SLOW)
                return
        if page.complete:
            # Everything up to the end (at read time) has now been sent.
            known_end = page.end
            pos = max(pos, page.end)


def _replay(hub: Hub, sub: Subscription, entries: list[Entry]) -> bool:
    """Send history to this subscriber alone; True if it held the terminal event."""
    prefix = sub.state.prefix
    lines = [protocol.event_line(prefix, eid, ev) for eid, ev in entries]
    status = terminal_status(entries[-1][1])
    if status is not None:
        lines.append(protocol.end(sub.stream_id, status))
    sub.peer.send(protocol.join_lines(lines), bounded=False)
    hub.metrics.events_delivered += len(entries)
    return status is not None


def gone_message(stream_id: str, pos: Id) -> str:
    return (
        f"history of {stream_id!r} after {format_id(pos).decode()} is gone (trimmed or "
        "expired): the events after that position can no longer be replayed"
    )
