"""Handing memory back after connections leave: reference cycles at close, and a trim.

What kept a gateway's RSS at its peak after 10,000 sockets closed
(``python -m bench memory``; docs/benchmarks.md has the figures):

* **Reference cycles in every closed connection**, so its objects waited for a
  full collection of the cyclic GC, which an idle gateway may never run:

  - websockets' Sans-I/O protocol keeps its parser, a generator suspended at
    its last ``yield`` that holds the protocol (its reader, ``Close`` frame,
    logger adapter...); when the socket ended without a close frame, the
    parser's exception (``parser_exc``) keeps a traceback whose frames hold the
    protocol, too: on 3.12, also the callers' frames (``receive_eof``,
    ``connection_lost``), which ``traceback.clear_frames`` does not clear;
  - CPython 3.11's ``_SelectorSocketTransport`` keeps a bound method of itself
    (``_read_ready_cb``, python/cpython#100348; 3.12 clears it in ``close()``),
    with its socket and ``extra`` dict.

  :class:`Connection` breaks them when websockets reports the connection lost:
  what the socket used goes at once, by reference counting. These are private
  attributes of websockets and CPython: should a later version rename or
  guard them, :func:`release` logs one warning per process and the cycles are
  left to the cyclic GC, as before.
* **Allocators keep freed memory.** The interpreter's free lists (tuples,
  dicts, floats...) keep freed objects; pymalloc (CPython's allocator for
  objects up to 512 bytes) returns a 1 MiB arena only when nothing lives in it;
  glibc keeps freed chunks inside its heap. After a mass disconnect
  (:class:`TrimPolicy` decides when, :func:`reclaim` checks every few seconds)
  the gateway runs a full collection, which also empties the free lists, then
  glibc's ``malloc_trim(0)``, which returns the free pages inside its heap.
  Nothing returns a pymalloc arena in which one object still lives (a cached
  ``urlsplit`` result, a timer not yet due, a small string): that memory is
  reused by the next connections, not handed back.

Nothing here runs per message: :func:`release` once per closed connection,
:func:`trim` at most once per check, only after the open connections fell
well below their peak and stopped falling. A trim blocks the event loop for
the full collection, which walks every live object: ~20 ms with none left
after 10,000 connections, ~40 µs more per connection still open (on the bench
machine; ``streamfan_gateway_memory_trim_seconds_total``); ``malloc_trim``
itself takes 1 to 2 ms. Hence a trim only once three quarters of the peak left,
and never while more than ``max_open`` connections (2,000: ~100 ms) are still
open: a quarter of a peak of 100,000 would stall every client for a second.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import GeneratorType
from typing import cast

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from gateway.metrics import Metrics

log = logging.getLogger(__name__)

#: The bound method CPython 3.11's socket transport keeps on itself.
READ_CALLBACK = "_read_ready_cb"

#: Set once a step of :func:`release` failed: it is logged once per process.
_release_failed = False


class Connection(ServerConnection):
    """websockets' server connection, whose objects go as soon as the socket is lost."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        release(self)


def release(connection: ServerConnection) -> None:
    """Break the reference cycles a lost connection leaves behind (see above).

    Each step touches private attributes of websockets or CPython; one that a
    later version changed is skipped (one warning per process), never raised
    into ``connection_lost``: the cycles are then left to the cyclic GC.
    """
    global _release_failed
    for step in (_close_parser, _drop_parser_traceback, _drop_read_callback):
        try:
            step(connection)
        except (AttributeError, RuntimeError) as exc:
            if not _release_failed:
                _release_failed = True
                log.warning(
                    "cannot free closed connections at once (%s: %r); the cyclic GC will",
                    step.__name__,
                    exc,
                )


def _close_parser(connection: ServerConnection) -> None:
    protocol = connection.protocol
    if protocol.state is State.CLOSED and isinstance(protocol.parser, GeneratorType):
        # Suspended at its last ``yield``: websockets never steps it after EOF.
        protocol.parser.close()


def _drop_parser_traceback(connection: ServerConnection) -> None:
    exc = connection.protocol.parser_exc
    if exc is not None:
        # A connection that ended without a close frame: the exception's traceback
        # holds the parser's frame and, on 3.12, its callers' (receive_eof,
        # connection_lost), all holding the protocol; traceback.clear_frames clears
        # only the former. The exception itself stays (ConnectionClosedError's cause).
        exc.__traceback__ = None


def _drop_read_callback(connection: ServerConnection) -> None:
    transport = connection.transport
    if getattr(transport, READ_CALLBACK, None) is not None:  # None on 3.12+ after close()
        setattr(transport, READ_CALLBACK, None)


@dataclass(slots=True)
class TrimPolicy:
    """When to hand memory back: many connections left, and they stopped leaving.

    Pure. :meth:`opened` is told the number of open connections whenever one
    opens (so the peak is exact, not sampled); :meth:`observe` is told it at
    every check and answers whether to trim now. A trim is due when the
    connections are at least ``min_drop`` below their peak since the last trim
    (or the start), at most ``fraction`` of it and at most ``max_open``, and not
    fewer than at the previous check (an exodus under way is let finish first).
    The peak then restarts from the current number: one exodus trims once, and
    a gateway whose load moves a little never does.
    """

    #: Connections that must have left (an idle subscribed one is ~16 KiB of RSS).
    min_drop: int = 1000
    #: ...and at most this fraction of the peak may be left...
    fraction: float = 0.25
    #: ...and at most this many: the trim blocks the event loop ~40 µs per open
    #: connection (~100 ms for 2,000), so after a peak of 100,000 it waits until
    #: all but 2,000 left rather than stall every client for a second at 25,000.
    #: A gateway that never gets below it never trims (its memory is in use).
    max_open: int = 2000
    peak: int = 0
    previous: int = 0

    def __post_init__(self) -> None:
        if self.min_drop < 1 or not 0.0 <= self.fraction < 1.0 or self.max_open < 0:
            raise ValueError(
                "a trim policy needs min_drop >= 1, 0 <= fraction < 1 and max_open >= 0"
            )

    def opened(self, open_connections: int) -> None:
        """A connection opened; ``open_connections`` counts it."""
        if open_connections > self.peak:
            self.peak = open_connections

    def observe(self, open_connections: int) -> bool:
        """The open connections at a check; True if memory should be trimmed now."""
        n, previous = open_connections, self.previous
        self.previous = n
        self.opened(n)
        if (
            self.peak - n < self.min_drop
            or n > self.peak * self.fraction
            or n > self.max_open
            or n < previous
        ):
            return False
        self.peak = n
        return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        # The symbols already loaded into this process: its C library among them.
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc: musl, macOS, Windows
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return cast("Callable[[int], int]", fn)


def malloc_trim() -> bool:
    """glibc's ``malloc_trim(0)``: give the free pages of the malloc heap back to
    the kernel. False, and nothing done, where the C library has no such call."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


def trim() -> float:
    """A full collection, then ``malloc_trim(0)``; returns the CPU seconds it took."""
    cpu0 = time.process_time()
    gc.collect()
    malloc_trim()
    return time.process_time() - cpu0


async def reclaim(
    open_connections: Callable[[], int], policy: TrimPolicy, interval_s: float, metrics: Metrics
) -> None:
    """Check every ``interval_s``; trim when ``policy`` says so. Runs until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        n = open_connections()
        if policy.observe(n):
            wall0 = time.perf_counter()
            cpu_s = trim()
            wall_s = time.perf_counter() - wall0  # how long the event loop stood still
            metrics.memory_trims += 1
            metrics.memory_trim_s += cpu_s
            log.info(
                "%d connections left: memory trimmed in %.1f ms (%.1f ms CPU)",
                n,
                wall_s * 1000,
                cpu_s * 1000,
            )
