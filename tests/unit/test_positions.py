"""The one parser of entry ids and positions (streamfan.positions)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfan.errors import InvalidRequest
from streamfan.positions import (
    FROM_NOW,
    FROM_START,
    ZERO,
    ZERO_RAW,
    format_id,
    parse_id,
    parse_position,
    validate_position,
)

U64 = st.integers(min_value=0, max_value=2**64 - 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", (0, 0)),
        ("0-0", (0, 0)),
        ("1700000000000-3", (1700000000000, 3)),
        ("1700000000000", (1700000000000, 0)),
        (b"5-6", (5, 6)),
        ("007-01", (7, 1)),
        (f"{2**64 - 1}-{2**64 - 1}", (2**64 - 1, 2**64 - 1)),
    ],
)
def test_valid_ids_parse_to_their_pair(text: str | bytes, expected: tuple[int, int]) -> None:
    assert parse_id(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "-", "1-", "-1", "a-1", "1-b", "1-2-3", "1.5", " 1", "١٢", f"{2**64}", f"1-{2**64}", "$"],
)
def test_invalid_ids_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid stream entry id"):
        parse_id(text)


@given(U64, U64)
def test_format_and_parse_round_trip(ms: int, seq: int) -> None:
    assert parse_id(format_id((ms, seq))) == (ms, seq)


@given(st.tuples(U64, U64), st.tuples(U64, U64))
def test_pairs_order_as_redis_orders_ids(a: tuple[int, int], b: tuple[int, int]) -> None:
    # Redis orders by ms, then seq: exactly the tuple order the parser gives.
    assert (parse_id(format_id(a)) < parse_id(format_id(b))) == (a < b)


def test_positions_normalise_and_dollar_stays() -> None:
    assert parse_position(FROM_START) == ZERO_RAW.decode() == "0-0"
    assert parse_id(ZERO_RAW) == ZERO
    assert parse_position(FROM_NOW) == "$"
    assert parse_position("12") == "12-0"
    assert parse_position("0012-07") == "12-7"
    assert parse_position(12) is None
    assert parse_position("nope") is None


def test_validate_position_names_the_bad_value() -> None:
    with pytest.raises(InvalidRequest, match="'1-x'"):
        validate_position("1-x")
    assert validate_position("3") == "3-0"
