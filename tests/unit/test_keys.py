"""streamfan.keys: stream-id validation and the key names."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfan.errors import InvalidStreamId
from streamfan.keys import Keys, is_valid_stream_id, new_stream_id, validate_stream_id

#: Deterministic (the same examples every run), and no example database on disk.
FIXED = settings(deadline=None, derandomize=True, database=None)

ID_ALPHABET = string.ascii_letters + string.digits + "._:-"


@pytest.mark.parametrize(
    "stream_id",
    ["a", "A9", "0", "chat.1", "job_2", "ns:id", "a-b", "01HZX3J5K8M9N0P1Q2R3S4T5V6", "x" * 128],
)
def test_valid_ids_are_accepted(stream_id: str) -> None:
    assert validate_stream_id(stream_id) == stream_id
    assert is_valid_stream_id(stream_id)


@pytest.mark.parametrize(
    "stream_id",
    [
        "",
        "x" * 129,
        "a b",
        "a/b",
        "a{b}",
        "a}",
        "a*",
        "é",
        "a\n",
        "a\x00",
        "١٢٣",  # Unicode digits are not [0-9]
        None,
        42,
        b"abc",
    ],
)
def test_invalid_ids_are_refused(stream_id: object) -> None:
    assert not is_valid_stream_id(stream_id)
    with pytest.raises(InvalidStreamId) as info:
        validate_stream_id(stream_id)
    assert info.value.stream_id == stream_id
    assert "1-128 characters" in str(info.value)


def test_a_very_long_invalid_id_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidStreamId) as info:
        validate_stream_id("/" * 10_000)
    assert len(str(info.value)) < 200


@settings(FIXED, max_examples=60)
@given(st.text(alphabet=ID_ALPHABET, min_size=1, max_size=128))
def test_every_id_from_the_alphabet_is_valid(stream_id: str) -> None:
    assert is_valid_stream_id(stream_id)


@settings(FIXED, max_examples=60)
@given(st.text(min_size=1, max_size=20), st.data())
def test_an_id_with_any_character_outside_the_alphabet_is_invalid(
    text: str, data: st.DataObject
) -> None:
    bad = data.draw(st.characters().filter(lambda c: c not in ID_ALPHABET))
    pos = data.draw(st.integers(0, len(text)))
    assert not is_valid_stream_id(text[:pos] + bad + text[pos:])


def test_new_ids_are_valid_and_distinct() -> None:
    ids = {new_stream_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(is_valid_stream_id(i) and len(i) == 32 for i in ids)


def test_every_key_of_a_stream_shares_its_hash_tag() -> None:
    keys = Keys("pfx")
    names = [keys.events("s1"), keys.meta("s1"), keys.live("s1"), keys.lease("s1")]
    assert names == ["pfx:{s1}:events", "pfx:{s1}:meta", "pfx:{s1}:live", "pfx:{s1}:lease"]
    assert Keys().events("s") == "streamfan:{s}:events"
    assert keys.cancel_channel == "pfx:cancel"


@settings(FIXED, max_examples=60)
@given(st.text(alphabet=ID_ALPHABET, min_size=1, max_size=128))
def test_the_stream_id_is_recovered_from_its_live_channel(stream_id: str) -> None:
    keys = Keys("p")
    assert keys.stream_id_from_live(keys.live(stream_id)) == stream_id


@pytest.mark.parametrize(
    "channel", ["p:{a}:meta", "q:{a}:live", "p:{}:live", "p:{a b}:live", "p:cancel", ""]
)
def test_channels_that_are_not_live_channels_give_none(channel: str) -> None:
    assert Keys("p").stream_id_from_live(channel) is None
