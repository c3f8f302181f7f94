"""One connection's state and limits: what its token allows, what it subscribed, its rate.

Pure: no sockets, no Redis, no clock of its own (callers pass ``now``), so every
limit is tested as a table. The socket side lives in :mod:`gateway.peer`.
"""

from __future__ import annotations

import math

from streamfan import protocol
from streamfan.protocol import Cancel, ClientOp, Invalid, Subscribe
from streamfan.tokens import Grant


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up; one token per message."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("a token bucket needs rate > 0 and capacity >= 1")
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token; False if there is none (the caller is flooding)."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def burst_for(rate: float, max_subscriptions: int) -> float:
    """How many messages a client may send at once.

    Two seconds' worth, and never less than a subscribe to every stream it may
    hold plus a little: a client that opens its page and subscribes to all its
    streams at once is not flooding.
    """
    return max(2 * rate, max_subscriptions + 4.0)


class Session:
    """What one connection may do and has done."""

    __slots__ = ("bucket", "grant", "max_subscriptions", "streams")

    def __init__(
        self, grant: Grant, *, max_subscriptions: int, max_messages_per_s: float, now: float
    ) -> None:
        self.grant = grant
        self.max_subscriptions = max_subscriptions
        self.bucket = TokenBucket(
            max_messages_per_s, burst_for(max_messages_per_s, max_subscriptions), now
        )
        #: Streams subscribed, from the subscribe request until ``end``, an error
        #: or an unsubscribe.
        self.streams: set[str] = set()

    @property
    def expires_at(self) -> float | None:
        """The token's ``exp`` (Unix time), or None for a token that never expires."""
        exp = self.grant.expires_at
        return None if math.isinf(exp) else exp

    def admit(self, now: float) -> bool:
        """Count one received message; False means the client floods and must go."""
        return self.bucket.take(now)

    def authorize(self, op: ClientOp) -> Invalid | None:
        """The error to answer ``op`` with, or None if it may go ahead."""
        if isinstance(op, Subscribe):
            if not self.grant.can_read(op.stream):
                return Invalid(
                    protocol.FORBIDDEN,
                    f"token does not allow stream {op.stream!r}",
                    op.stream,
                    op.op,
                )
            if op.stream in self.streams:
                # The subscription in place carries on; only this request is refused.
                return Invalid(
                    protocol.BAD_REQUEST, f"already subscribed to {op.stream!r}", op.stream, op.op
                )
            if len(self.streams) >= self.max_subscriptions:
                return Invalid(
                    protocol.TOO_MANY_SUBSCRIPTIONS,
                    f"at most {self.max_subscriptions} subscriptions per connection",
                    op.stream,
                    op.op,
                )
        elif isinstance(op, Cancel) and not self.grant.can_cancel(op.stream):
            return Invalid(
                protocol.FORBIDDEN,
                f"token does not allow cancelling {op.stream!r}",
                op.stream,
                op.op,
            )
        return None

    def add(self, stream_id: str) -> None:
        self.streams.add(stream_id)

    def discard(self, stream_id: str) -> None:
        self.streams.discard(stream_id)
