"""streamfan.tokens: minting and verifying HS256 subscribe tokens."""

from __future__ import annotations

import time

import jwt
import pytest

from streamfan.errors import InvalidStreamId, TokenError
from streamfan.tokens import ALL_STREAMS, OPEN_GRANT, mint_token, verify_token

#: 32+ bytes: PyJWT warns on shorter HMAC keys, and warnings are errors here.
SECRET = "streamfan-unit-secret-0123456789abcdef"
OTHER = "another-secret-of-enough-length-0123456789"


def test_a_minted_token_verifies_to_its_grant() -> None:
    grant = verify_token(SECRET, mint_token(SECRET, ["s1", "s2"], ttl_s=60, now=time.time()))
    assert grant.streams == frozenset({"s1", "s2"})
    assert (grant.can_read("s1"), grant.can_read("s3"), grant.can_cancel("s1")) == (
        True,
        False,
        False,
    )
    assert grant.expires_at > time.time()


def test_a_cancel_token_may_cancel_only_the_streams_it_reads() -> None:
    grant = verify_token(SECRET, mint_token(SECRET, ["s1"], cancel=True))
    assert (grant.can_cancel("s1"), grant.can_cancel("s2")) == (True, False)


def test_a_wildcard_token_reads_every_stream() -> None:
    grant = verify_token(SECRET, mint_token(SECRET, [ALL_STREAMS]))
    assert grant.can_read("anything")
    assert OPEN_GRANT.can_cancel("anything")


def test_an_expired_token_is_refused() -> None:
    token = mint_token(SECRET, ["s"], ttl_s=10, now=time.time() - 100)
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, token)


def test_leeway_accepts_a_token_that_just_expired() -> None:
    token = mint_token(SECRET, ["s"], ttl_s=10, now=time.time() - 15)
    assert verify_token(SECRET, token, leeway_s=60).can_read("s")


def test_a_token_signed_with_another_key_is_refused() -> None:
    with pytest.raises(TokenError, match="invalid token"):
        verify_token(SECRET, mint_token(OTHER, ["s"]))


def test_an_unsigned_alg_none_token_is_refused() -> None:
    token = jwt.encode({"streams": ["s"], "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(TokenError):
        verify_token(SECRET, token)


def test_a_token_signed_with_another_algorithm_is_refused() -> None:
    claims = {"streams": ["s"], "exp": int(time.time()) + 60}
    with pytest.raises(TokenError):
        verify_token(SECRET, jwt.encode(claims, SECRET + SECRET, algorithm="HS512"))


def test_a_token_without_exp_is_refused() -> None:
    token = jwt.encode({"streams": ["s"]}, SECRET, algorithm="HS256")
    with pytest.raises(TokenError, match="exp"):
        verify_token(SECRET, token)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 500])
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(TokenError):
        verify_token(SECRET, token)


@pytest.mark.parametrize(
    ("claims", "says"),
    [
        ({}, "streams"),
        ({"streams": [1]}, "streams"),
        ({"streams": {"a": 1}}, "streams"),
        ({"streams": ["s"], "cancel": "yes"}, "cancel"),
    ],
)
def test_claims_of_the_wrong_shape_are_refused(claims: dict[str, object], says: str) -> None:
    token = jwt.encode({**claims, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    with pytest.raises(TokenError, match=says):
        verify_token(SECRET, token)


def test_a_single_stream_string_claim_is_accepted() -> None:
    token = jwt.encode({"streams": "s", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert verify_token(SECRET, token).streams == frozenset({"s"})


def test_minting_needs_a_secret_and_at_least_one_valid_stream() -> None:
    with pytest.raises(TokenError):
        mint_token(SECRET, [])
    with pytest.raises(TokenError):
        mint_token("", ["s"])
    with pytest.raises(InvalidStreamId):
        mint_token(SECRET, ["bad id"])


def test_the_submit_claim_is_a_boolean_and_lets_a_token_name_no_stream() -> None:
    grant = verify_token(SECRET, mint_token(SECRET, [], submit=True))
    assert grant.submit and grant.streams == frozenset() and not grant.can_read("s")
    assert not verify_token(SECRET, mint_token(SECRET, ["s"])).submit
    token = jwt.encode(
        {"streams": [], "submit": "yes", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"
    )
    with pytest.raises(TokenError, match="submit"):
        verify_token(SECRET, token)
