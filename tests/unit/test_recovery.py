"""The recovery machines (streamfan.recovery): table tests, and a simulated
gateway driven by hypothesis through any interleaving of writes, trims, lost and
late wake-ups, shared reads and readers catching up."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfan import events, protocol
from streamfan.page import Entry, Page, through_terminal
from streamfan.positions import ZERO, Id, format_id, parse_id
from streamfan.recovery import (
    Deliver,
    End,
    Fanout,
    Join,
    Opened,
    Read,
    Reader,
    Refuse,
    Rewatch,
    Wait,
)
from streamfan.wakeup import Wakeup


def delta(i: int) -> bytes:
    return orjson.dumps({"type": "delta", "choices": [{"index": 0, "delta": {"content": str(i)}}]})


DONE = orjson.dumps({"type": "done", "finish_reason": "stop", "usage": None})


def entry(i: int, data: bytes | None = None) -> Entry:
    return format_id((i, 0)), data if data is not None else delta(i)


def page(
    entries: list[Entry],
    *,
    complete: bool = True,
    end: Id | None = None,
    gone: bool = False,
    missing: bool = False,
    read_to: Id | None = None,
    status: str | None = events.STATUS_RUNNING,
) -> Page:
    last = parse_id(entries[-1][0]) if entries else ZERO
    return Page(
        entries,
        complete=complete,
        end=end if end is not None else last,
        gone=gone,
        missing=missing,
        read_to=read_to if read_to is not None else last,
        status=status,
    )


# --- Reader: table tests ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "code"),
    [
        ("0", protocol.NOT_FOUND),
        ("0-0", protocol.NOT_FOUND),
        ("$", protocol.NOT_FOUND),
        ("5", protocol.GONE),
        ("5-1", protocol.GONE),
    ],
)
def test_a_stream_without_meta_is_not_found_or_gone_for_an_id(position: str, code: str) -> None:
    out = Reader("s", position).open(None, ZERO)
    assert isinstance(out, Refuse)
    assert out.code == code


def test_dollar_resolves_to_the_metas_last_id() -> None:
    r = Reader("s", "$")
    assert r.open(events.STATUS_RUNNING, (7, 2)) == Opened(events.STATUS_RUNNING, (7, 2))
    # Already at the end it saw: a reader with no fan-out waits, one with joins.
    assert r.step() == Wait((7, 2))
    g = Reader("s", "$")
    g.open(events.STATUS_RUNNING, (7, 2))
    assert g.step(Fanout()) == Join((7, 2), establish=(7, 2))


def test_dollar_on_a_finished_stream_ends_at_once() -> None:
    r = Reader("s", "$")
    r.open(events.STATUS_DONE, (9, 0))
    assert r.step() == End(events.STATUS_DONE)


def test_an_invalid_position_is_refused_before_anything_is_read() -> None:
    with pytest.raises(ValueError, match="invalid position"):
        Reader("s", "yesterday")


def test_history_is_read_then_the_reader_waits_at_the_end() -> None:
    r = Reader("s", "0")
    r.open(events.STATUS_RUNNING, (2, 0))
    assert r.step() == Read(ZERO, known_last=(2, 0))
    out = r.feed(page([entry(1), entry(2)]))
    assert isinstance(out, Deliver)
    assert [e[0] for e in out.entries] == [b"1-0", b"2-0"]
    assert out.final_status is None
    assert r.step() == Wait((2, 0))


def test_an_incomplete_page_is_followed_by_the_next() -> None:
    r = Reader("s", "0")
    r.open(events.STATUS_RUNNING, (3, 0))
    r.feed(page([entry(1), entry(2)], complete=False, end=(3, 0)))
    assert r.step() == Read((2, 0), known_last=(3, 0))


def test_the_terminal_event_ends_the_reader_and_rows_after_it_are_not_delivered() -> None:
    r = Reader("s", "0")
    r.open(events.STATUS_RUNNING, (3, 0))
    out = r.feed(page([entry(1), entry(2, DONE), entry(3)]))
    assert isinstance(out, Deliver)
    assert [e[0] for e in out.entries] == [b"1-0", b"2-0"]
    assert out.final_status == events.STATUS_DONE


def test_a_finished_status_on_a_complete_page_ends_the_reader_past_the_terminal() -> None:
    # The reader resumed after the terminal event: nothing comes, and it is over.
    r = Reader("s", "5")
    r.open(events.STATUS_RUNNING, (4, 0))
    assert r.feed(page([], end=(5, 0), status=events.STATUS_DONE)) is None
    assert r.step() == End(events.STATUS_DONE)


def test_a_gone_page_refuses_with_gone() -> None:
    r = Reader("s", "1")
    r.open(events.STATUS_RUNNING, (9, 0))
    out = r.feed(page([], gone=True))
    assert isinstance(out, Refuse)
    assert out.code == protocol.GONE
    assert "after 1-0" in out.message


def test_a_stream_that_vanished_unfinished_is_not_found() -> None:
    r = Reader("s", "0")
    r.open(events.STATUS_QUEUED, ZERO)
    out = r.feed(page([], missing=True, status=None))
    assert isinstance(out, Refuse)
    assert out.code == protocol.NOT_FOUND


def test_skipped_rows_move_the_position() -> None:
    r = Reader("s", "0")
    r.open(events.STATUS_RUNNING, (6, 0))
    r.feed(page([entry(1)], complete=False, read_to=(4, 0), end=(6, 0)))
    assert r.step() == Read((4, 0), known_last=(6, 0))


def test_joining_is_in_step_at_the_shared_position_and_ahead_beyond_it() -> None:
    f: Fanout[str] = Fanout(stream_id="s")
    f.establish((3, 0))
    f.join("a", (3, 0))
    f.join("b", (5, 0))
    assert f.in_step == {"a"}
    assert f.ahead == {"b": (5, 0)}
    entries, final, caught = f.advance([entry(4), entry(5), entry(6)])
    assert final is None
    assert caught == [("b", 2)]  # b gets only 6
    f.promote(caught, len(entries))
    assert f.in_step == {"a", "b"}
    assert f.last == (6, 0)


def test_a_reader_behind_the_shared_position_keeps_reading() -> None:
    f: Fanout[str] = Fanout(stream_id="s")
    f.establish((9, 0))
    r = Reader("s", "0")
    r.open(events.STATUS_RUNNING, (9, 0))
    r.feed(page([entry(1), entry(2)], end=(2, 0)))  # it saw an older end
    assert r.step(f) == Read((2, 0), known_last=(9, 0))


def test_a_fanout_that_stopped_unfinished_is_rewatched_and_one_that_ended_is_read_to_its_end() -> (
    None
):
    r = Reader("s", "0")
    r.open(events.STATUS_RUNNING, (2, 0))
    dropped: Fanout[str] = Fanout(closed=True)
    assert r.step(dropped) == Rewatch()
    ended: Fanout[str] = Fanout(closed=True, final_status=events.STATUS_DONE)
    assert r.step(ended) == Read(ZERO, known_last=(2, 0))
    out = r.feed(page([entry(1), entry(2, DONE)]))
    assert isinstance(out, Deliver)
    assert out.final_status == events.STATUS_DONE


# --- Fanout: wake-ups ---------------------------------------------------------------------


def test_wakeups_before_the_position_is_known_are_remembered() -> None:
    f: Fanout[str] = Fanout(stream_id="s")
    assert f.on_wakeup(Wakeup(b"0-0", (entry(1),))) is False
    assert f.dirty
    assert f.establish(ZERO) is True  # a read is due now
    assert f.reading


@pytest.mark.parametrize(
    ("wake", "expected"),
    [
        (Wakeup(b"3-0", (entry(4),)), "direct"),  # proves nothing was skipped
        (Wakeup(b"2-0", (entry(3), entry(4))), "read"),  # newer, but not from our position
        (Wakeup(b"1-0", (entry(2),)), "nothing"),  # old news
        (Wakeup(b"3-0", ()), "read"),  # a bare wake-up
        (None, "read"),  # a malformed message
    ],
)
def test_a_wakeup_is_delivered_directly_only_when_it_provably_skips_nothing(
    wake: Wakeup | None, expected: str
) -> None:
    f: Fanout[str] = Fanout(stream_id="s")
    f.establish((3, 0))
    f.join("a", (3, 0))
    out = f.on_wakeup(wake)
    kind = "direct" if not isinstance(out, bool) else ("read" if out else "nothing")
    assert kind == expected


def test_reads_are_coalesced_one_in_flight() -> None:
    f: Fanout[str] = Fanout(stream_id="s")
    f.establish(ZERO)
    f.join("a", ZERO)
    assert f.request_read() is True
    gen = f.gen
    assert f.request_read() is False  # one is in flight: it will read again
    assert f.read_finished(page([]), gen) is False
    assert f.read_finished(page([]), f.gen) is True
    assert not f.reading


def test_a_fanout_page_that_is_gone_or_vanished_refuses() -> None:
    f: Fanout[str] = Fanout(stream_id="s")
    f.establish((3, 0))
    out = f.on_page(page([], gone=True), (3, 0))
    assert isinstance(out, Refuse)
    assert out.code == protocol.GONE
    assert isinstance(f.on_page(page([], missing=True), (3, 0)), Refuse)
    # A stream that never had an event and has no key yet is simply empty.
    g: Fanout[str] = Fanout(stream_id="s")
    g.establish(ZERO)
    assert g.on_page(page([], missing=True), ZERO) == []


def test_the_safety_net_sees_a_stream_behind_its_meta() -> None:
    f: Fanout[str] = Fanout(stream_id="s")
    assert f.behind(b"5-0") is False  # position unknown: nothing to compare
    f.establish((3, 0))
    assert f.behind(b"3-0") is False
    assert f.behind(b"5-0") is True
    assert f.behind(None) is True  # vanished after delivering


def test_through_terminal_cuts_at_the_first_terminal() -> None:
    rows = [entry(1), entry(2, DONE), entry(3)]
    cut, status = through_terminal(rows)
    assert [e[0] for e in cut] == [b"1-0", b"2-0"]
    assert status == events.STATUS_DONE
    assert through_terminal(rows[:1]) == (rows[:1], None)


# --- a simulated gateway ------------------------------------------------------------------


@dataclass
class Stream:
    """A Redis stream as the READ_PAGE script sees it: entries, trimming, the gone rule."""

    kept: list[Entry] = field(default_factory=list)
    written: int = 0
    removed: bool = False
    finished: bool = False

    @property
    def last(self) -> Id:
        return (self.written, 0)

    def write(self, n: int, terminal: bool) -> Wakeup:
        prev = format_id(self.last)
        new = []
        for _ in range(n):
            self.written += 1
            new.append(entry(self.written))
        if terminal:
            self.written += 1
            new.append(entry(self.written, DONE))
            self.finished = True
        self.kept.extend(new)
        return Wakeup(prev, tuple(new))

    def trim(self, n: int) -> None:
        if n and self.kept:
            self.kept = self.kept[n:]
            self.removed = True

    def before_kept(self, after: Id) -> bool:
        return not self.kept or after < parse_id(self.kept[0][0])

    def page(self, after: Id, count: int) -> Page:
        status = events.STATUS_DONE if self.finished else events.STATUS_RUNNING
        first = parse_id(self.kept[0][0]) if self.kept else None
        if self.removed and after < self.last and (first is None or after < first):
            return page([], gone=True, end=self.last, status=status)
        rows = [e for e in self.kept if parse_id(e[0]) > after][:count]
        return page(
            rows,
            complete=len(rows) < count,
            end=self.last,
            read_to=parse_id(rows[-1][0]) if rows else after,
            status=status,
        )


@dataclass(eq=False)
class Sub:
    start: Id
    reader: Reader
    got: list[Id] = field(default_factory=list)
    outcome: str | None = None  # "end", "gone", or None while it runs
    joined: bool = False
    #: When told ``gone``: whether the position it was read from was before the
    #: oldest entry Redis kept at that moment.
    gone_justified: bool | None = None


class Gateway:
    """What gateway.hub does, with the I/O replaced by the simulated stream."""

    def __init__(self, stream: Stream, page_size: int) -> None:
        self.stream = stream
        self.page_size = page_size
        self.fanout: Fanout[Sub] = Fanout(stream_id="s")
        self.subs: list[Sub] = []
        self.queue: list[Wakeup] = []

    def subscribe(self, position: str) -> None:
        reader = Reader("s", position)
        opened = reader.open(
            events.STATUS_DONE if self.stream.finished else events.STATUS_RUNNING,
            self.stream.last,
        )
        assert isinstance(opened, Opened)
        sub = Sub(opened.position, reader)
        self.subs.append(sub)
        self.fanout.pending.add(sub)

    def give(self, sub: Sub, entries: list[Entry] | tuple[Entry, ...], final: str | None) -> None:
        assert sub.outcome is None
        sub.got.extend(parse_id(e[0]) for e in entries)
        if final is not None:
            sub.outcome = "end"

    def catch_up(self, sub: Sub) -> None:
        """One step of one pending reader."""
        if sub.outcome is not None or sub.joined:
            return
        step = sub.reader.step(self.fanout)
        if isinstance(step, Rewatch):
            # The fan-out failed (gone) while this reader caught up: a fresh one.
            fresh: Fanout[Sub] = Fanout(stream_id="s")
            fresh.pending = {s for s in self.fanout.pending if s.outcome is None}
            self.fanout = fresh
            sub.reader.rewatched()
            return
        if isinstance(step, Join):
            if step.establish is not None:
                self.fanout.establish(step.establish)
            self.fanout.join(sub, step.position)
            sub.joined = True
        elif isinstance(step, End):
            sub.outcome = "end"
            self.fanout.leave(sub)
        else:
            assert isinstance(step, Read)
            out = sub.reader.feed(self.stream.page(step.after, self.page_size))
            if isinstance(out, Refuse):
                sub.outcome = out.code
                sub.gone_justified = self.stream.before_kept(step.after)
                self.fanout.leave(sub)
            elif isinstance(out, Deliver):
                self.give(sub, list(out.entries), out.final_status)
                if out.final_status is not None:
                    self.fanout.leave(sub)

    def deliver(self, batch: list[Entry] | tuple[Entry, ...]) -> None:
        f = self.fanout
        entries, final, caught = f.advance(batch)
        for sub in f.in_step:
            self.give(sub, list(entries), final)
        for sub, first in caught:
            self.give(sub, list(entries[first:]), final)
        f.promote(caught, len(entries))
        if final is not None:
            f.closed = True

    def wake(self) -> None:
        if self.queue:
            out = self.fanout.on_wakeup(self.queue.pop(0))
            if not isinstance(out, bool):
                self.deliver(out)

    def pump(self) -> None:
        f = self.fanout
        if not f.reading or f.last is None:
            return
        gen, at = f.gen, f.last
        pg = self.stream.page(at, self.page_size)
        fresh = f.on_page(pg, at)
        if isinstance(fresh, Refuse):
            for sub in (*f.in_step, *f.ahead):
                sub.outcome = fresh.code
                sub.gone_justified = self.stream.before_kept(at)
            f.in_step.clear()
            f.ahead.clear()
            f.closed = True
            f.reading = False
            return
        if fresh:
            self.deliver(fresh)
        f.read_finished(pg, gen)

    def settle(self) -> None:
        """Everything in flight arrives; the safety net catches lost wake-ups."""
        for _ in range(10_000):
            self.wake()
            self.pump()
            for sub in self.subs:
                self.catch_up(sub)
            idle = not self.queue and not self.fanout.reading
            if idle and all(s.outcome is not None or s.joined for s in self.subs):
                if not self.fanout.closed and self.fanout.behind(format_id(self.stream.last)):
                    self.fanout.request_read()
                    continue
                return
        raise AssertionError("the simulation did not settle")


OPS = st.one_of(
    st.tuples(st.just("write"), st.integers(1, 4)),
    st.tuples(st.just("trim"), st.integers(1, 6)),
    st.tuples(st.just("wake"), st.just(0)),
    st.tuples(st.just("lose"), st.just(0)),
    st.tuples(st.just("late"), st.just(0)),
    st.tuples(st.just("pump"), st.just(0)),
    st.tuples(st.just("step"), st.integers(0, 7)),
    st.tuples(st.just("join"), st.integers(0, 30)),
    st.tuples(st.just("join_now"), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(OPS, max_size=60),
    page_size=st.integers(1, 5),
    finish=st.booleans(),
    trims=st.booleans(),
)
def test_any_interleaving_gives_every_reader_every_id_once_in_order(
    ops: list[tuple[str, int]], page_size: int, finish: bool, trims: bool
) -> None:
    stream = Stream()
    gw = Gateway(stream, page_size)
    gw.subscribe("0")
    for op, n in ops:
        if stream.finished and op == "write":
            continue
        if op == "write":
            gw.queue.append(stream.write(n, terminal=False))
        elif op == "trim" and trims:
            stream.trim(n)
        elif op == "wake":
            gw.wake()
        elif op == "lose" and gw.queue:
            gw.queue.pop(0)  # pub/sub dropped it
        elif op == "late" and len(gw.queue) > 1:
            gw.queue.append(gw.queue.pop(0))  # arrives after a later one
        elif op == "pump":
            gw.pump()
        elif op == "step" and gw.subs:
            gw.catch_up(gw.subs[n % len(gw.subs)])
        elif op == "join" and not gw.fanout.closed:
            gw.subscribe(format_id((min(n, stream.written), 0)).decode())
        elif op == "join_now" and not gw.fanout.closed:
            gw.subscribe("$")
    if finish and not stream.finished:
        gw.queue.append(stream.write(1, terminal=True))
    gw.settle()

    for sub in gw.subs:
        # Every id once, in order, with no gap from where the reader started...
        expected_from = sub.start[0] + 1
        assert sub.got == [(i, 0) for i in range(expected_from, expected_from + len(sub.got))]
        if sub.outcome == protocol.GONE:
            # ...and ``gone`` was said only when the position read from (the
            # reader's own, or the fan-out's) was before the oldest kept entry
            # (conservative by one: Redis does not say which id was trimmed last).
            assert stream.removed
            assert sub.gone_justified
        elif not trims:
            # Without trimming nobody is ever told ``gone``, and each reader has
            # everything written after its position.
            assert sub.outcome in (None, "end")
            assert len(sub.got) == stream.written - sub.start[0]
            assert (sub.outcome == "end") == stream.finished


@given(st.integers(0, 20), st.integers(1, 20), st.integers(1, 5))
def test_a_trimmed_position_always_yields_gone(pos: int, trimmed: int, page_size: int) -> None:
    stream = Stream()
    stream.write(20, terminal=False)
    stream.trim(trimmed)
    r = Reader("s", format_id((pos, 0)).decode())
    r.open(events.STATUS_RUNNING, stream.last)
    outcomes = []
    while True:
        step = r.step()
        if isinstance(step, Wait):
            break
        assert isinstance(step, Read)
        out = r.feed(stream.page(step.after, page_size))
        outcomes.append(out)
        if isinstance(out, Refuse):
            break
    # Entries up to ``trimmed`` were removed. Redis does not say which id was
    # trimmed last, so a position before the oldest kept entry counts as gone
    # even when it is the newest trimmed id itself (conservative by one, never a gap).
    lost = pos <= trimmed and pos < stream.written
    refused = isinstance(outcomes[-1], Refuse) if outcomes else False
    assert refused == lost
    if lost:
        assert outcomes == [Refuse(protocol.GONE, outcomes[-1].message)]  # nothing delivered
