"""Judging a chaos run: every reader against the stream and the upstream's scripted reply.

A reader passes when it saw every entry id of its stream exactly once, in order
(no duplicate, no gap against the stream's own entries), ended with the stream's
terminal event, and the events it saw assemble — ``reset``s applied — into the
message the mock upstream scripted. A stream passes when its assembled result is
that message and its terminal event is ``done``. Pure: no I/O.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamfan import events
from streamfan.assembler import Assembler
from streamfan.events import Event
from streamfan.positions import parse_id


@dataclass(slots=True)
class ReaderLog:
    """What one reader received, across all its connections."""

    stream_id: str
    index: int
    received: list[tuple[str, Event]] = field(default_factory=list)
    end_status: str | None = None  # the status of the ``end`` it was sent, if any
    reconnects: int = 0
    refusals: list[str] = field(default_factory=list)  # error codes that were not expected
    longest_wait_s: float = 0.0


@dataclass(frozen=True, slots=True)
class StreamOutcome:
    """What Redis holds for one stream at the end of the run."""

    stream_id: str
    entry_ids: tuple[str, ...]
    status: str | None
    message: dict[str, Any] | None  # the assembled reply (choice 0), None if none
    expected: dict[str, Any]


@dataclass(slots=True)
class ReaderVerdict:
    duplicates: int = 0
    gaps: int = 0
    out_of_order: int = 0
    exact: bool = False
    ended: bool = False
    problems: list[str] = field(default_factory=list)


def describe_difference(got: dict[str, Any] | None, expected: dict[str, Any]) -> str:
    """A short account of how ``got`` differs from ``expected`` (the messages are long)."""
    if got is None:
        return "nothing assembled"
    text, want = str(got.get("content") or ""), str(expected.get("content") or "")
    if text != want:
        at = next((i for i, (a, b) in enumerate(zip(text, want, strict=False)) if a != b),
                  min(len(text), len(want)))  # fmt: skip
        return f"content differs at character {at} ({len(text)} vs {len(want)} characters)"
    keys = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
    return f"fields differ: {', '.join(keys)}"


def judge_reader(log: ReaderLog, outcome: StreamOutcome) -> ReaderVerdict:
    verdict = ReaderVerdict()
    ids = [entry_id for entry_id, _ in log.received]
    counts = collections.Counter(ids)
    verdict.duplicates = sum(n - 1 for n in counts.values() if n > 1)
    verdict.out_of_order = sum(1 for a, b in itertools.pairwise(ids) if parse_id(a) >= parse_id(b))
    verdict.gaps = len(set(outcome.entry_ids) - set(counts))
    assembler = Assembler()
    for _, event in log.received:
        assembler.feed(event)
    last = log.received[-1][1] if log.received else None
    verdict.ended = (
        last is not None
        and events.is_terminal(last)
        and log.end_status is not None
        and log.end_status == outcome.status
    )
    message = assembler.message(0) if assembler.indexes else None
    verdict.exact = message == outcome.expected
    who = f"{log.stream_id} reader {log.index}"
    if verdict.duplicates:
        verdict.problems.append(f"{who}: {verdict.duplicates} duplicate ids")
    if verdict.out_of_order:
        verdict.problems.append(f"{who}: {verdict.out_of_order} ids out of order")
    if verdict.gaps:
        verdict.problems.append(f"{who}: {verdict.gaps} entries never delivered")
    if not verdict.ended:
        verdict.problems.append(f"{who}: did not end (end={log.end_status}, last={last})")
    if not verdict.exact:
        verdict.problems.append(f"{who}: {describe_difference(message, outcome.expected)}")
    verdict.problems += [f"{who}: refused with {code}" for code in log.refusals]
    return verdict


@dataclass(slots=True)
class Summary:
    faults: dict[str, int]
    streams: int = 0
    replies_exact: int = 0
    streams_done: int = 0
    readers: int = 0
    readers_exact: int = 0
    events_delivered: int = 0
    reconnects: int = 0
    duplicates: int = 0
    gaps: int = 0
    longest_wait_s: float = 0.0
    process_exits: list[str] = field(default_factory=list)
    leftover_keys: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            not self.problems
            and not self.process_exits
            and not self.leftover_keys
            and self.replies_exact == self.streams
            and self.readers_exact == self.readers
        )


def summarise(
    outcomes: Mapping[str, StreamOutcome],
    logs: Iterable[ReaderLog],
    faults: Mapping[str, int],
    *,
    process_exits: Sequence[str] = (),
    leftover_keys: Sequence[str] = (),
) -> Summary:
    summary = Summary(faults=dict(faults), process_exits=list(process_exits),
                      leftover_keys=list(leftover_keys))  # fmt: skip
    summary.streams = len(outcomes)
    for outcome in outcomes.values():
        if outcome.status == events.STATUS_DONE:
            summary.streams_done += 1
        if outcome.message == outcome.expected and outcome.status == events.STATUS_DONE:
            summary.replies_exact += 1
        else:
            summary.problems.append(
                f"{outcome.stream_id}: status {outcome.status}, "
                f"{describe_difference(outcome.message, outcome.expected)}"
            )
    for log in logs:
        verdict = judge_reader(log, outcomes[log.stream_id])
        summary.readers += 1
        summary.readers_exact += verdict.exact and verdict.ended and not verdict.problems
        summary.events_delivered += len(log.received)
        summary.reconnects += log.reconnects
        summary.duplicates += verdict.duplicates
        summary.gaps += verdict.gaps
        summary.longest_wait_s = max(summary.longest_wait_s, log.longest_wait_s)
        summary.problems += verdict.problems
    return summary


def table(summary: Summary) -> str:
    """The run's report, as aligned text."""
    rows: list[tuple[str, str]] = [
        (f"fault {kind}", str(n)) for kind, n in sorted(summary.faults.items())
    ]
    rows += [
        ("streams done / total", f"{summary.streams_done} / {summary.streams}"),
        ("replies exact / total", f"{summary.replies_exact} / {summary.streams}"),
        ("readers exact / total", f"{summary.readers_exact} / {summary.readers}"),
        ("events delivered", str(summary.events_delivered)),
        ("reconnects", str(summary.reconnects)),
        ("duplicates", str(summary.duplicates)),
        ("gaps", str(summary.gaps)),
        ("longest wait without progress", f"{summary.longest_wait_s:.2f} s"),
        ("process exits", str(len(summary.process_exits))),
        ("keys retention missed", str(len(summary.leftover_keys))),
        ("verdict", "PASS" if summary.passed else "FAIL"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
