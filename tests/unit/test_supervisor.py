"""The worker supervisor's policy (worker/supervisor.py) and its pure helpers."""

from __future__ import annotations

import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.processes import cgroup_cpus, cpu_count, parse_processes
from worker.supervisor import (
    Action,
    Backoff,
    Forward,
    GiveUp,
    Restart,
    Spawn,
    Supervision,
)

TERM = int(signal.SIGTERM)
KILLED = -int(signal.SIGKILL)


def test_the_backoff_starts_at_base_doubles_and_stops_at_max() -> None:
    b = Backoff(base_s=0.5, max_s=30.0)
    assert [b.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert b.delay(10_000) == 30.0


@given(st.integers(1, 10_000), st.floats(0.01, 5), st.floats(5, 120))
def test_the_backoff_never_shrinks_and_never_exceeds_max(n: int, base: float, top: float) -> None:
    b = Backoff(base_s=base, max_s=top)
    assert base <= b.delay(n) <= b.delay(n + 1) <= top


def test_every_slot_is_spawned_at_start() -> None:
    assert Supervision(3).start(0.0) == [Spawn(0), Spawn(1), Spawn(2)]


def test_a_killed_child_is_restarted_after_the_backoff_and_a_healthy_run_resets_it() -> None:
    sup = Supervision(2, Backoff(base_s=0.5, healthy_s=60))
    sup.start(0.0)
    assert sup.exited(0, KILLED, 1.0) == [Restart(0, 0.5, 1, KILLED)]
    assert sup.due(0, 1.5) == [Spawn(0)]
    assert sup.exited(0, 1, 2.0) == [Restart(0, 1.0, 2, 1)]
    assert sup.due(0, 3.0) == [Spawn(0)]
    # Up for a minute: healthy, so the next failure starts over.
    assert sup.exited(0, KILLED, 63.0) == [Restart(0, 0.5, 1, KILLED)]
    assert sup.running == 1 and not sup.finished


def test_a_child_that_exits_0_outside_burst_is_restarted_too() -> None:
    sup = Supervision(1)
    sup.start(0.0)
    assert sup.exited(0, 0, 5.0) == [Restart(0, 0.5, 1, 0)]


def test_a_signal_is_forwarded_to_running_children_and_pending_restarts_are_dropped() -> None:
    sup = Supervision(3)
    sup.start(0.0)
    sup.exited(1, KILLED, 1.0)
    assert sup.signal(TERM) == [Forward(0, TERM), Forward(2, TERM)]
    assert sup.due(1, 1.5) == []  # the restart fell due after the stop: not started
    assert sup.exited(0, 0, 2.0) == []
    assert not sup.finished
    assert sup.exited(2, 0, 2.1) == []
    assert sup.finished and sup.exit_code == 0


def test_a_second_signal_is_forwarded_again() -> None:
    sup = Supervision(2)
    sup.start(0.0)
    sup.signal(int(signal.SIGINT))
    sup.exited(0, 0, 1.0)
    assert sup.signal(int(signal.SIGINT)) == [Forward(1, int(signal.SIGINT))]


def test_a_child_that_fails_while_stopping_makes_the_exit_code_1() -> None:
    sup = Supervision(2)
    sup.start(0.0)
    sup.signal(TERM)
    sup.exited(0, 0, 1.0)
    sup.exited(1, KILLED, 1.0)
    assert sup.finished and sup.exit_code == 1


def test_a_child_killed_by_the_signal_passed_on_stopped_cleanly() -> None:
    # A child still starting has no handler yet: the signal itself ends it.
    sup = Supervision(3)
    sup.start(0.0)
    sup.signal(TERM)
    sup.exited(0, -TERM, 0.1)
    sup.exited(1, 128 + TERM, 0.1)
    sup.exited(2, 0, 0.2)
    assert sup.finished and sup.exit_code == 0


def test_in_burst_mode_a_child_that_ran_the_queue_dry_stays_stopped() -> None:
    sup = Supervision(2, burst=True)
    sup.start(0.0)
    assert sup.exited(0, 1, 1.0) == [Restart(0, 0.5, 1, 1)]  # a crash is still restarted
    assert sup.exited(1, 0, 1.0) == []
    assert sup.due(0, 1.5) == [Spawn(0)]
    assert sup.exited(0, 0, 2.0) == []
    assert sup.finished and sup.exit_code == 0


def test_when_every_slot_keeps_failing_it_gives_up_and_stops_the_rest() -> None:
    sup = Supervision(2, Backoff(give_up_after=3, healthy_s=60))
    sup.start(0.0)
    t = 0.0
    for _ in range(2):
        t += 1
        assert isinstance(sup.exited(0, 1, t)[0], Restart)
        sup.due(0, t)
        assert isinstance(sup.exited(1, 1, t)[0], Restart)
        sup.due(1, t)
    assert isinstance(sup.exited(0, 1, t + 1)[0], Restart)  # slot 1 is not at 3 yet
    actions = sup.exited(1, 1, t + 1)
    assert actions == [GiveUp(1, 1, 3)]  # slot 0 waits for its restart: nothing to forward
    assert sup.finished and sup.exit_code == 1


def test_it_does_not_give_up_while_one_slot_is_healthy() -> None:
    sup = Supervision(2, Backoff(give_up_after=2, healthy_s=60))
    sup.start(0.0)
    for t in (1.0, 2.0, 3.0):
        assert isinstance(sup.exited(0, 1, t)[0], Restart)
        sup.due(0, t)
    assert sup.slots[0].failures == 3 and not sup.gave_up


events = st.lists(
    st.tuples(
        st.sampled_from(["exit", "due", "signal"]),
        st.integers(0, 3),
        st.sampled_from([0, 1, KILLED, TERM * -1]),
        st.floats(0, 100),
    ),
    max_size=60,
)


@given(st.integers(1, 4), st.booleans(), events)
def test_any_sequence_of_events_keeps_the_rules(
    n: int, burst: bool, seq: list[tuple[str, int, int, float]]
) -> None:
    backoff = Backoff(give_up_after=3)
    sup = Supervision(n, backoff, burst=burst)
    now = 0.0
    running: set[int] = set()
    waiting: set[int] = set()
    stopped_at_some_point = False

    def apply(actions: list[Action]) -> None:
        nonlocal stopped_at_some_point
        for a in actions:
            if isinstance(a, Spawn):
                assert a.slot not in running, "two children in one slot"
                assert not stopped_at_some_point, "spawned after the stop"
                running.add(a.slot)
                waiting.discard(a.slot)
            elif isinstance(a, Restart):
                assert a.slot not in running
                assert 0 < a.delay_s <= backoff.max_s
                waiting.add(a.slot)
            elif isinstance(a, Forward):
                assert a.slot in running, "a signal for a child that is not running"
            elif isinstance(a, GiveUp):
                assert all(s.failures >= backoff.give_up_after for s in sup.slots)
                stopped_at_some_point = True
                waiting.clear()

    apply(sup.start(now))
    for kind, raw_slot, code, dt in seq:
        now += dt
        slot = raw_slot % n
        if kind == "exit" and slot in running:
            running.discard(slot)
            before = sup.stopping
            actions = sup.exited(slot, code, now)
            if not before and not (burst and code == 0):
                assert len([a for a in actions if isinstance(a, Restart | GiveUp)]) == 1
            apply(actions)
        elif kind == "due":
            apply(sup.due(slot, now))
        elif kind == "signal":
            forwarded = sup.signal(TERM)
            assert {a.slot for a in forwarded if isinstance(a, Forward)} == running
            stopped_at_some_point = True
            waiting.clear()
            apply(forwarded)
        assert sup.running == len(running)
        assert sup.finished == (not running and (sup.stopping or burst) and not waiting)
    assert sup.exit_code in (0, 1)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2),
        ("150000 100000", 2),
        ("50000 100000", 1),
        ("", None),
        ("garbage", None),
        ("-1 100000", None),
        ("100000 0", None),
    ],
)
def test_a_cgroup_cpu_quota_is_read_as_whole_cpus(text: str, cpus: int | None) -> None:
    assert cgroup_cpus(text) == cpus


def test_processes_is_a_positive_number_or_auto() -> None:
    assert parse_processes("3") == 3
    assert parse_processes("auto") == parse_processes("AUTO") == cpu_count() >= 1
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="auto"):
            parse_processes(bad)
