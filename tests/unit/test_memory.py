"""When the gateway hands memory back, pure: the trim policy as tables and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import memory
from gateway.memory import TrimPolicy


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
    answers = checks(TrimPolicy(min_drop=1000, fraction=0.5), counts)
    assert [i for i, due in enumerate(answers) if due] == trims, case


def test_the_peak_between_two_checks_counts() -> None:
    policy = TrimPolicy(min_drop=1000, fraction=0.5)
    assert not policy.observe(0)
    for n in range(1, 3001):  # connections opened and left between two checks
        policy.opened(n)
    assert policy.observe(0)


@pytest.mark.parametrize(("min_drop", "fraction"), [(0, 0.5), (1000, 1.0), (1000, -0.1)])
def test_a_policy_refuses_nonsense_thresholds(min_drop: int, fraction: float) -> None:
    with pytest.raises(ValueError):
        TrimPolicy(min_drop=min_drop, fraction=fraction)


@given(
    st.lists(st.integers(min_value=0, max_value=20_000), max_size=40),
    st.integers(min_value=1, max_value=5000),
    st.floats(min_value=0.0, max_value=0.9),
)
def test_a_trim_needs_a_big_drop_and_every_big_drop_that_stops_gets_one(
    counts: list[int], min_drop: int, fraction: float
) -> None:
    policy = TrimPolicy(min_drop=min_drop, fraction=fraction)
    since_trim: list[int] = []
    for n in counts:
        if policy.observe(n):
            # Never without enough connections gone since the last trim.
            assert max(since_trim) - n >= min_drop
            since_trim = []
        since_trim.append(n)
    if since_trim and max(since_trim) - since_trim[-1] >= min_drop:
        low = since_trim[-1]
        if low <= max(since_trim) * fraction:
            # The exodus stops there: the next check at the same count trims.
            assert policy.observe(low)


def test_a_trim_collects_and_trims_the_heap_where_there_is_glibc() -> None:
    assert memory.trim() >= 0.0
    assert isinstance(memory.malloc_trim(), bool)
