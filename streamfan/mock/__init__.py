"""The mock upstream: an OpenAI-compatible ``/chat/completions`` server for development and tests.

It streams scripted replies (fixed or generated text, reasoning, refusals, tool
calls, ``n`` choices, usage) at a chosen token rate and injects the faults a real
upstream or proxy produces: HTTP errors with OpenAI's bodies, a connection closed
(FIN) or reset (RST) mid-stream, a stall, a malformed or error line, a truncated
body, a BOM, bytes split at awkward places. Every request is recorded, and tests
wait on what happened to it (chunks sent, the client going away) without polling.
What a request may ask for is listed in :mod:`streamfan.mock.options`.

It lives in the contract package so that the suite, the benchmarks and
``streamfan up`` share one scripted upstream, but nothing else in ``streamfan``
imports it: a backend that imports ``streamfan`` never loads it.

Exports: :class:`MockUpstream` (the server; ``async with MockUpstream() as mock``),
:class:`Defaults` (server-wide defaults), :class:`Script` (what a request body
makes the mock say, for computing the expected message), :class:`RequestRecord`
(one request as seen), :class:`MockOptionError`, and the outcomes a record ends
with (``COMPLETE``, ``DROPPED``, ``DISCONNECTED``, ``ABORTED``).

Modules, pure first: ``options`` (the ``mock`` field), ``text`` (tokens),
``reply`` (what each choice says), ``script`` (chunks and bytes, faults applied),
``plan`` (timed writes), ``http`` (the wire); then the I/O: ``records`` (what it
saw), ``pacer`` (one timer for every stream), ``respond`` (one response),
``server`` (connections and routing).

HTTP: requests are parsed by h11; responses are written as raw bytes, because the
faults are responses no HTTP library will write (see :mod:`streamfan.mock.http`).
"""

from __future__ import annotations

from streamfan.mock.options import Defaults, MockOptionError
from streamfan.mock.records import ABORTED, COMPLETE, DISCONNECTED, DROPPED, RequestRecord
from streamfan.mock.script import Script
from streamfan.mock.server import MockUpstream

__all__ = [
    "ABORTED",
    "COMPLETE",
    "DISCONNECTED",
    "DROPPED",
    "Defaults",
    "MockOptionError",
    "MockUpstream",
    "RequestRecord",
    "Script",
]
