"""The mock upstream's tokens: splitting text, generated replies, prompt token counts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfan.mock.text import count_prompt_tokens, generate_tokens, tokenize


@given(st.text())
def test_tokens_join_back_into_the_text(text: str) -> None:
    assert "".join(tokenize(text)) == text


def test_tokens_are_words_with_their_leading_space() -> None:
    assert tokenize("Hello, wörld 🙂!") == ["Hello", ",", " wörld", " 🙂", "!"]


@pytest.mark.parametrize("count", [0, 1, 4, 9, 100])
def test_generated_replies_have_exactly_the_asked_number_of_tokens(count: int) -> None:
    assert len(generate_tokens(count)) == count


def test_generated_replies_carry_two_three_and_four_byte_characters() -> None:
    text = "".join(generate_tokens(4)).encode()
    for char in ("é", "中", "🙂"):
        assert char.encode() in text


def test_generated_replies_depend_only_on_count_and_seed() -> None:
    assert generate_tokens(50, 3) == generate_tokens(50, 3)
    assert generate_tokens(50, 3) != generate_tokens(50, 4)


def test_prompt_tokens_count_every_message_text() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi there"}], "name": "ann"},
    ]
    assert count_prompt_tokens(messages) == 3 + (3 + 3) + (3 + 2 + 1)
