"""The mock upstream's plans: timed writes, joined when due together, split on request."""

from __future__ import annotations

from streamfan.mock.plan import Send, coalesce, split_sends


def test_events_due_at_the_same_moment_are_one_send() -> None:
    events = [(0.0, b"a", 1), (0.0, b"b", 0), (0.5, b"c", 1), (1.0, b"d", 2), (1.0, b"e", 1)]
    assert list(coalesce(iter(events))) == [
        Send(0.0, b"ab", 1),
        Send(0.5, b"c", 1),
        Send(1.0, b"de", 3),
    ]


def test_split_sends_cut_bytes_and_keep_chunk_counts_on_the_last_piece() -> None:
    sends = [Send(0.0, b"abcdefg", 2), Send(1.0, b"hi", 1)]
    assert list(split_sends(sends, 3)) == [
        Send(0.0, b"abc", 0),
        Send(0.0, b"def", 0),
        Send(0.0, b"g", 2),
        Send(1.0, b"hi", 1),
    ]
