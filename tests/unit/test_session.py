"""One connection's limits, pure: rate, subscriptions, what the token allows."""

from __future__ import annotations

import pytest

from gateway.session import Session, TokenBucket, burst_for
from streamfan import protocol
from streamfan.protocol import Cancel, Ping, Subscribe, Unsubscribe
from streamfan.tokens import OPEN_GRANT, Grant

READ_AB = Grant(streams=frozenset({"a", "b"}), cancel=False, expires_at=2e9)
CANCEL_A = Grant(streams=frozenset({"a"}), cancel=True, expires_at=2e9)


def session(grant: Grant = READ_AB, *, max_subs: int = 2, rate: float = 10.0) -> Session:
    return Session(grant, max_subscriptions=max_subs, max_messages_per_s=rate, now=0.0)


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=10.0, capacity=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(0.1)  # one token back after 1/rate s
    assert not bucket.take(0.1)
    assert [bucket.take(10.0) for _ in range(6)] == [True] * 5 + [False]  # never more than capacity


def test_a_bucket_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, capacity=1, now=0.0)


def test_the_burst_covers_subscribing_to_every_allowed_stream_at_once() -> None:
    assert burst_for(50.0, 100) >= 101
    assert burst_for(50.0, 1) == 100.0


def test_a_flooding_session_is_refused_and_a_patient_one_is_not() -> None:
    s = session(rate=10.0, max_subs=2)
    burst = int(burst_for(10.0, 2))
    assert all(s.admit(0.0) for _ in range(burst))
    assert not s.admit(0.0)
    assert all(s.admit(1.0 + i / 10) for i in range(50))


@pytest.mark.parametrize(
    ("grant", "subscribed", "op", "code"),
    [
        (READ_AB, set(), Subscribe("a", "0-0"), None),
        (READ_AB, set(), Subscribe("c", "0-0"), protocol.FORBIDDEN),
        (READ_AB, {"a"}, Subscribe("a", "$"), protocol.BAD_REQUEST),
        (READ_AB, {"a", "b"}, Subscribe("b", "0-0"), protocol.BAD_REQUEST),
        (OPEN_GRANT, {"a", "b"}, Subscribe("c", "0-0"), protocol.TOO_MANY_SUBSCRIPTIONS),
        (READ_AB, set(), Cancel("a"), protocol.FORBIDDEN),
        (CANCEL_A, set(), Cancel("a"), None),
        (CANCEL_A, set(), Cancel("b"), protocol.FORBIDDEN),
        (READ_AB, set(), Unsubscribe("zzz"), None),
        (READ_AB, set(), Ping(), None),
    ],
)
def test_authorize_answers_each_operation_with_the_right_code(
    grant: Grant, subscribed: set[str], op: object, code: str | None
) -> None:
    s = session(grant)
    for sid in subscribed:
        s.add(sid)
    refusal = s.authorize(op)  # type: ignore[arg-type]
    assert (refusal.code if refusal else None) == code
    if refusal is not None and isinstance(op, (Subscribe, Cancel)):
        assert refusal.stream == op.stream
        assert refusal.reply_to == op.op  # "subscribe" or "cancel": which request failed


def test_a_finished_subscription_frees_its_slot() -> None:
    s = session(OPEN_GRANT, max_subs=1)
    s.add("a")
    assert s.authorize(Subscribe("b", "0-0")) is not None
    s.discard("a")
    assert s.authorize(Subscribe("b", "0-0")) is None


def test_expiry_is_the_tokens_exp_or_none() -> None:
    assert session(READ_AB).expires_at == 2e9
    assert session(OPEN_GRANT).expires_at is None
