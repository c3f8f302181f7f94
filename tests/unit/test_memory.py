"""When the gateway hands memory back, pure: the trim policy as tables and properties,
and what :func:`gateway.memory.release` frees on a protocol with no socket."""

from __future__ import annotations

import base64
import logging
import os
import weakref
from types import SimpleNamespace
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request
from websockets.server import ServerProtocol

from gateway import memory
from gateway.memory import TrimPolicy
from gateway.tuning import Tuning


def checks(policy: TrimPolicy, counts: list[int]) -> list[bool]:
    return [policy.observe(n) for n in counts]


@pytest.mark.parametrize(
    ("case", "counts", "trims"),
    [
        ("nobody ever came", [0, 0, 0], []),
        ("steady load", [5000, 5000, 5000], []),
        ("everyone left, then it stayed empty", [10_000, 0, 0, 0], [2]),
        ("an exodus over several checks trims once it stops", [10_000, 6000, 2000, 0, 0], [4]),
        ("too few left", [1500, 600, 600], []),
        ("more than the fraction stayed", [10_000, 5001, 5001], []),
        ("exactly half stayed", [10_000, 5000, 5000], [2]),
        ("a second exodus after the first trim", [10_000, 4000, 4000, 0, 0], [2, 4]),
        ("load came back, then left again", [4000, 0, 0, 4000, 0, 0], [2, 5]),
    ],
)
def test_a_trim_is_due_once_per_exodus_after_it_stopped(
    case: str, counts: list[int], trims: list[int]
) -> None:
    answers = checks(TrimPolicy(min_drop=1000, fraction=0.5, max_open=100_000), counts)
    assert [i for i, due in enumerate(answers) if due] == trims, case


@pytest.mark.parametrize(
    ("case", "counts", "trims"),
    [
        ("a quarter of a big peak is still too many", [100_000, 25_000, 25_000], []),
        ("then the rest left but the cap", [100_000, 25_000, 25_000, 2000, 2000], [4]),
        ("or all of them", [100_000, 25_000, 25_000, 0, 0], [4]),
        ("one over the cap", [100_000, 2001, 2001], []),
        ("a small peak never meets the cap", [6000, 1500, 1500], [2]),
    ],
)
def test_no_trim_while_more_than_max_open_are_still_open(
    case: str, counts: list[int], trims: list[int]
) -> None:
    # The trim's full collection blocks the event loop ~40 µs per open connection.
    answers = checks(TrimPolicy(min_drop=1000, fraction=0.25, max_open=2000), counts)
    assert [i for i, due in enumerate(answers) if due] == trims, case


def test_the_policy_defaults_are_the_tuning_defaults() -> None:
    policy, tuning = TrimPolicy(), Tuning()
    assert (policy.min_drop, policy.fraction, policy.max_open) == (
        tuning.trim_min_drop,
        tuning.trim_fraction,
        tuning.trim_max_open,
    )


def test_the_peak_between_two_checks_counts() -> None:
    policy = TrimPolicy(min_drop=1000, fraction=0.5, max_open=100_000)
    assert not policy.observe(0)
    for n in range(1, 3001):  # connections opened and left between two checks
        policy.opened(n)
    assert policy.observe(0)


@pytest.mark.parametrize(
    ("min_drop", "fraction", "max_open"),
    [(0, 0.5, 2000), (1000, 1.0, 2000), (1000, -0.1, 2000), (1000, 0.5, -1)],
)
def test_a_policy_refuses_nonsense_thresholds(
    min_drop: int, fraction: float, max_open: int
) -> None:
    with pytest.raises(ValueError):
        TrimPolicy(min_drop=min_drop, fraction=fraction, max_open=max_open)


@given(
    st.lists(st.integers(min_value=0, max_value=20_000), max_size=40),
    st.integers(min_value=1, max_value=5000),
    st.floats(min_value=0.0, max_value=0.9),
    st.integers(min_value=0, max_value=20_000),
)
def test_a_trim_needs_a_big_drop_and_every_big_drop_that_stops_gets_one(
    counts: list[int], min_drop: int, fraction: float, max_open: int
) -> None:
    policy = TrimPolicy(min_drop=min_drop, fraction=fraction, max_open=max_open)
    since_trim: list[int] = []
    for n in counts:
        if policy.observe(n):
            # Never without enough connections gone since the last trim, nor with
            # more than max_open still open.
            assert max(since_trim) - n >= min_drop
            assert n <= max_open
            since_trim = []
        since_trim.append(n)
    if since_trim and max(since_trim) - since_trim[-1] >= min_drop:
        low = since_trim[-1]
        if low <= max(since_trim) * fraction and low <= max_open:
            # The exodus stops there: the next check at the same count trims.
            assert policy.observe(low)


def test_a_trim_collects_and_trims_the_heap_where_there_is_glibc() -> None:
    assert memory.trim() >= 0.0
    assert isinstance(memory.malloc_trim(), bool)


def _lost_without_close_frame() -> ServerProtocol:
    """A server protocol past its handshake whose socket ended without a close frame."""
    protocol = ServerProtocol()
    key = base64.b64encode(os.urandom(16)).decode()
    protocol.receive_data(
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    (request,) = protocol.events_received()
    assert isinstance(request, Request)
    protocol.send_response(protocol.accept(request))
    protocol.data_to_send()
    protocol.receive_eof()  # what connection_lost does first
    return protocol


def _connection(**attributes: object) -> ServerConnection:
    return cast("ServerConnection", SimpleNamespace(**attributes))


@pytest.mark.usefixtures("no_cyclic_gc")
def test_a_protocol_lost_without_a_close_frame_is_freed_by_reference_counting() -> None:
    # The parser's exception keeps a traceback; on 3.12 its frames' callers
    # (receive_eof here) hold the protocol too, which clear_frames left alone.
    protocol = _lost_without_close_frame()
    assert protocol.parser_exc is not None
    left = weakref.ref(protocol)
    memory.release(_connection(protocol=protocol, transport=None))
    del protocol
    assert left() is None


def test_release_survives_attributes_a_later_version_changed_and_warns_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "_release_failed", False)

    class SealedTransport:  # a read callback that can no longer be reset
        __slots__ = ()

        @property
        def _read_ready_cb(self) -> object:
            return object()

    broken = [
        _connection(),  # no protocol at all
        _connection(protocol=SimpleNamespace(state=None, parser=None), transport=None),
        _connection(protocol=_lost_without_close_frame(), transport=SealedTransport()),
    ]
    with caplog.at_level(logging.WARNING, logger=memory.__name__):
        for connection in broken * 2:
            memory.release(connection)
    assert len(caplog.records) == 1
    assert "cannot free closed connections at once" in caplog.records[0].getMessage()
