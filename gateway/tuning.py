"""Internal timings and sizes of the gateway: named defaults in one small config object.

Everything an operator should set is a ``STREAMFAN_*`` setting
(:class:`streamfan.settings.Settings`). These are the knobs behind them that
only tests and benchmarks turn (a test shortens the pub/sub health check, say),
the way httpx keeps ``Timeout`` and ``Limits`` apart from its client.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Client frames queued before websockets stops reading the socket (frames are
#: small: a subscribe is ~100 bytes; 16 frames of up to 1 MiB is websockets' default).
RECV_QUEUE = 8


@dataclass(frozen=True, slots=True)
class Tuning:
    #: Wait this long for a closing handshake before aborting the TCP connection.
    close_timeout_s: float = 5.0
    #: Entries per XRANGE page when one subscriber catches up on history.
    catch_up_page: int = 200
    #: Entries per XRANGE page when the shared position of a stream catches up.
    pump_page: int = 1000
    #: A catching-up subscriber whose socket stays full this long is cut (too_slow).
    drain_timeout_s: float = 20.0
    #: PING on the pub/sub connection this often...
    live_ping_interval_s: float = 5.0
    #: ...and reconnect when no reply came back within this.
    live_ping_timeout_s: float = 3.0
    #: Connect (and CLIENT SETNAME) to Redis within this.
    redis_connect_timeout_s: float = 3.0
    #: A read on the pool that takes longer than this fails (a half-open socket).
    redis_read_timeout_s: float = 5.0
    #: Wait this long for a free pooled connection before a read fails.
    pool_wait_s: float = 5.0
    #: How long a new subscription waits for Redis to confirm SUBSCRIBE.
    subscribe_confirm_s: float = 3.0
    #: Reconnect backoff on the pub/sub connection and for failed shared reads.
    backoff_min_s: float = 0.05
    backoff_max_s: float = 1.0
    #: Safety net: compare each quiet watched stream with its meta ``last_id`` this often.
    safety_poll_s: float = 5.0
    #: ...and this often while the pub/sub connection is down.
    safety_poll_down_s: float = 1.0
    #: Streams asked about per round trip by the safety net.
    safety_batch: int = 500
    #: An HTTP door's streamed response idle this long gets a comment (a keep-alive).
    http_keepalive_s: float = 15.0
    #: An HTTP connection with no request in flight this long is closed (keep-alive).
    http_idle_s: float = 60.0
    #: Check the open connections this often for a trim (:mod:`gateway.memory`)...
    trim_check_s: float = 5.0
    #: ...due once at least this many left since the peak...
    trim_min_drop: int = 1000
    #: ...and at most this fraction of the peak is left (the trim's full collection
    #: walks every live object: ~40 µs of CPU per open connection)...
    trim_fraction: float = 0.25
    #: ...and at most this many are still open: caps the event-loop stall of a
    #: trim at ~100 ms, whatever the peak (a quarter of 100,000 would be ~1 s).
    trim_max_open: int = 2000
