"""Recovery: how a reader joins a stream's history and its live tail — decided, not done.

Sans-I/O, after websockets' ``Protocol``: the caller reads (a meta, a page of
history, a wake-up) and feeds what it read in; the machine answers with what to
do next. Nothing here imports asyncio, Redis or a socket, so every decision is
a table test or a hypothesis property (``tests/unit/test_recovery.py``). The
gateway (:mod:`gateway.hub`), the client API (:meth:`streamfan.Client.events`)
and every other read path drive these same two machines.

:class:`Reader` — one reader, from the position it asked for:

1. ``open()`` with the meta: no meta is ``not_found`` (or ``gone`` for an
   explicit id: the stream existed and has expired); ``"$"`` resolves to the
   meta's ``last_id`` (written by the same script as every ``XADD``, so it is
   the stream's newest entry). The resolved position is what the reader is told
   it stands at: everything it gets comes after it.
2. ``step()`` says what to do: :class:`Read` a page after the position,
   :class:`Join` the shared live fan-out (gateway), :class:`Wait` for more
   (client API, which has no fan-out), :class:`End` (finished), or
   :class:`Rewatch` (the fan-out it was about to join stopped without ending).
3. ``feed(page)`` answers :class:`Deliver` (entries for this reader alone, cut
   at the terminal event), :class:`Refuse` (``gone``: entries after the
   position were removed before they could be read; ``not_found``: the stream
   vanished without ending) or None.

:class:`Fanout` — a stream's shared live position on one gateway and who is
with it: ``in_step`` (they have exactly everything up to ``last``), ``ahead``
(they resumed from an id beyond ``last``: a batch gives them only what is
newer) and ``pending`` (still catching up through their own :class:`Reader`).
A wake-up whose ``prev_id`` is ``last`` is delivered straight from the message
(it provably skips nothing); any other wake-up asks for one read from ``last``,
at most one in flight, later ones coalesced.

A finished status is written by the same script as the terminal event: a
complete page read after the meta said "finished" has it or is past it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from streamfan import events, protocol
from streamfan.page import Entry, Page, through_terminal
from streamfan.positions import FROM_NOW, ZERO, Id, format_id, parse_id, parse_position
from streamfan.wakeup import Wakeup

# --- what the machines answer ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refuse:
    """The reader cannot be served: ``code`` is ``not_found`` or ``gone``."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Opened:
    """The reader is in: ``position`` is where it stands (``"$"`` resolved)."""

    status: str
    position: Id


@dataclass(frozen=True, slots=True)
class Read:
    """Read a page after ``after``; ``known_last`` is the newest id the meta showed."""

    after: Id
    known_last: Id


@dataclass(frozen=True, slots=True)
class Deliver:
    """Send ``entries`` to this reader; ``final_status`` if the last is the terminal event."""

    entries: Sequence[Entry]
    final_status: str | None


@dataclass(frozen=True, slots=True)
class Join:
    """Caught up: join the live fan-out at ``position`` (after setting its shared
    position to ``establish``, when that is not None: nobody had set it yet)."""

    position: Id
    establish: Id | None


@dataclass(frozen=True, slots=True)
class Wait:
    """Caught up on a stream still running: wait until something follows ``after``."""

    after: Id


@dataclass(frozen=True, slots=True)
class End:
    """The reader has the terminal event (or was already past it): it is over."""

    status: str


@dataclass(frozen=True, slots=True)
class Rewatch:
    """The fan-out stopped without the stream ending (dropped, or failed): carry on
    under a fresh one, once its channel is subscribed; then :meth:`Reader.rewatched`."""


Step = Read | Join | Wait | End | Rewatch


def gone_message(stream_id: str, after: Id) -> str:
    return (
        f"history of {stream_id!r} after {format_id(after).decode()} is gone (trimmed or "
        "expired): the events after that position can no longer be replayed"
    )


def _gone(stream_id: str, after: Id) -> Refuse:
    return Refuse(protocol.GONE, gone_message(stream_id, after))


# --- one reader --------------------------------------------------------------------------


class Reader:
    """One reader's way from its requested position to the end, or to the live fan-out."""

    __slots__ = ("_ended", "finished", "known_end", "known_last", "position", "stream_id")

    def __init__(self, stream_id: str, position: str) -> None:
        normalised = parse_position(position)
        if normalised is None:
            raise ValueError(f"invalid position {position!r}")
        self.stream_id = stream_id
        #: Where the reader stands: it has everything up to here. A position
        #: (``"$"``, or an id) until :meth:`open` resolves it.
        self.position: Id | str = normalised
        #: A real end of the stream, seen since the channel was subscribed: the
        #: reader is caught up when its position reaches it.
        self.known_end: Id | None = None
        #: The meta's ``last_id`` when opened: entries up to it were written, so a
        #: stream that vanished since has lost them.
        self.known_last: Id = ZERO
        #: The stream's final status, once the reader knows it has ended.
        self.finished: str | None = None
        self._ended = False

    @property
    def at(self) -> Id:
        assert isinstance(self.position, tuple), "open() first"
        return self.position

    def open(self, status: str | None, last_id: Id) -> Opened | Refuse:
        """The meta as read after the channel was subscribed (``status`` None: no meta)."""
        requested = self.position
        if status is None:
            self._ended = True
            if requested != FROM_NOW and parse_id(str(requested)) != ZERO:
                return Refuse(
                    protocol.GONE, f"stream {self.stream_id!r} no longer exists (expired)"
                )
            return Refuse(protocol.NOT_FOUND, f"stream {self.stream_id!r} not found")
        self.known_last = last_id
        if requested == FROM_NOW:
            self.position = self.known_end = last_id
        else:
            self.position = parse_id(str(requested))
        if status in events.FINISHED_STATUSES:
            self.finished = status
        return Opened(status, self.position)

    def step(self, fanout: Fanout[Any] | None = None) -> Step:
        """What to do next. ``fanout``: the stream's shared live position on this
        gateway; None for a reader with no fan-out to join (the client API)."""
        assert not self._ended, "the reader is over"
        pos = self.at
        if fanout is not None and self.finished is None and fanout.closed:
            if fanout.final_status is None:
                return Rewatch()
            # The terminal event went out to the fan-out while this reader was
            # reading: read on until this reader has it too.
            self.finished = fanout.final_status
            self.known_end = None
        caught_up = self.known_end is not None and pos >= self.known_end
        if self.finished is not None:
            if caught_up:
                self._ended = True
                return End(self.finished)
        elif fanout is None:
            if caught_up:
                return Wait(pos)
        else:
            establish = None
            shared = fanout.last
            if shared is None and self.known_end is not None:
                establish = shared = self.known_end
            if shared is not None and pos >= shared:
                self._ended = True
                return Join(pos, establish)
        return Read(pos, self.known_last)

    def rewatched(self) -> None:
        """After :class:`Rewatch`: a fresh fan-out's channel is subscribed, so an end
        seen before no longer proves anything about what it will deliver."""
        self.known_end = None

    def feed(self, page: Page) -> Deliver | Refuse | None:
        """A page read after :attr:`position`, as :class:`Read` asked."""
        pos = self.at
        if page.gone:
            self._ended = True
            return _gone(self.stream_id, pos)
        if page.status is None and self.finished is None and not page.entries:
            # The meta is gone and the stream never ended: nothing will come.
            self._ended = True
            return Refuse(protocol.NOT_FOUND, f"stream {self.stream_id!r} no longer exists")
        if page.status in events.FINISHED_STATUSES and self.finished is None:
            self.finished = page.status
        out: Deliver | None = None
        if page.entries:
            entries, final = through_terminal(page.entries)
            if final is not None:
                self._ended = True
                self.finished = final
            self.position = pos = parse_id(entries[-1][0])
            out = Deliver(entries, final)
        # Past the rows the page skipped too (not events): the next read starts after them.
        self.position = pos = max(pos, page.read_to)
        if page.complete:
            # Everything up to the end (at read time) has now been sent.
            self.known_end = page.end
            self.position = max(pos, page.end)
        else:
            # There is more: an end seen before (``"$"``'s) proves nothing now.
            self.known_end = None
        return out


# --- a stream's shared live position -----------------------------------------------------

S = TypeVar("S")


@dataclass(slots=True, eq=False)
class Fanout(Generic[S]):
    """One stream's live fan-out on one gateway: its position and its subscribers."""

    stream_id: str = ""
    #: The shared position; None until a reader has read up to the end (:meth:`establish`).
    last: Id | None = None
    last_raw: bytes = b""
    in_step: set[S] = field(default_factory=set)
    ahead: dict[S, Id] = field(default_factory=dict)
    pending: set[S] = field(default_factory=set)
    #: A wake-up came while ``last`` was unknown: read once it is known.
    dirty: bool = False
    #: Bumped whenever a read may find something new (coalesces wake-ups).
    gen: int = 0
    reading: bool = False
    #: No longer fanned out: the stream ended, failed, or nobody watches it.
    closed: bool = False
    #: The status of the stream's terminal event, once delivered.
    final_status: str | None = None

    @property
    def fanned_out(self) -> bool:
        return bool(self.in_step or self.ahead)

    @property
    def empty(self) -> bool:
        return not (self.in_step or self.ahead or self.pending)

    def leave(self, sub: S) -> None:
        self.in_step.discard(sub)
        self.ahead.pop(sub, None)
        self.pending.discard(sub)

    def establish(self, end: Id) -> bool:
        """Set the shared position from a read that reached the stream's end;
        True if a read is due (a wake-up came while it was unknown)."""
        self.last, self.last_raw = end, format_id(end)
        due, self.dirty = self.dirty, False
        return due and self.request_read()

    def join(self, sub: S, pos: Id) -> None:
        """A caught-up reader joins: in step, or ahead if it already has more."""
        self.pending.discard(sub)
        if pos == self.last:
            self.in_step.add(sub)
        else:
            self.ahead[sub] = pos

    def request_read(self) -> bool:
        """Something new may be in the stream: True if a read must start now
        (none is in flight; one in flight reads again when it sees ``gen`` moved)."""
        if self.last is None:
            self.dirty = True
            return False
        self.gen += 1
        if self.reading or self.closed:
            return False
        self.reading = True
        return True

    def on_wakeup(self, wake: Wakeup | None) -> Sequence[Entry] | bool:
        """A live message: the entries to deliver straight from it, or whether a
        read must start (``wake`` None: a malformed message, a bare wake-up)."""
        if self.closed:
            return False
        if self.last is None:
            self.dirty = True
            return False
        if wake is None or not wake.entries:
            return self.request_read()
        if wake.prev_id == self.last_raw:
            return wake.entries
        if parse_id(wake.last_id) > self.last:
            return self.request_read()
        return False

    def on_page(self, page: Page, at: Id) -> Refuse | Sequence[Entry]:
        """A page read from ``at`` (the shared position when the read began): what
        is newer than the position now (a direct delivery may have moved it), or
        ``gone`` — also when the events key vanished after the fan-out delivered
        from it: nothing after ``at`` was lost, but no terminal event can come."""
        if page.gone or (page.missing and at > ZERO):
            return _gone(self.stream_id, at)
        last = self.last if self.last is not None else at
        return [e for e in page.entries if parse_id(e[0]) > last]

    def read_finished(self, page: Page, gen: int) -> bool:
        """After a read that started at ``gen``: True if no more reads are due."""
        if self.closed or not self.fanned_out or (page.complete and self.gen == gen):
            self.reading = False
            return True
        return False

    def advance(
        self, entries: Sequence[Entry]
    ) -> tuple[Sequence[Entry], str | None, list[tuple[S, int]]]:
        """Move the shared position past ``entries`` (all newer than it, in order).

        Returns the entries to deliver (cut at a terminal event), the final
        status if the batch ends the stream, and for each
        subscriber that was ahead, from which index of ``entries`` it gets the
        batch (``len(entries)``: nothing but the end); :meth:`promote` them once
        the in-step subscribers have been given the batch.
        """
        entries, final = through_terminal(entries)
        caught: list[tuple[S, int]] = []
        if self.ahead:
            new_last = parse_id(entries[-1][0])
            for sub, pos in self.ahead.items():
                if pos >= new_last:
                    if final is not None:
                        caught.append((sub, len(entries)))
                    continue
                first = next(i for i, (eid, _) in enumerate(entries) if parse_id(eid) > pos)
                caught.append((sub, first))
        self.last_raw = entries[-1][0]
        self.last = parse_id(self.last_raw)
        if final is not None:
            self.final_status = final
        return entries, final, caught

    def promote(self, caught: list[tuple[S, int]], delivered: int) -> None:
        """Those of ``caught`` that got part of a batch of ``delivered`` entries are in step."""
        for sub, first in caught:
            if first < delivered:
                del self.ahead[sub]
                self.in_step.add(sub)

    def behind(self, meta_last_id: bytes | None) -> bool:
        """The safety net's check of a quiet stream: its meta shows a newer entry
        than the fan-out delivered (or the stream vanished after delivering)."""
        if self.last is None:
            return False
        if meta_last_id is None:
            return self.last > ZERO
        return meta_last_id != self.last_raw and parse_id(meta_last_id) > self.last
