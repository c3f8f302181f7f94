"""BEGIN_START: :data:`streamfan.scripts.BEGIN` and an attempt's first events in one call.

So a new stream's ``start`` waits for no second round trip (docs/events.md,
"Starting a job"). When BEGIN answers ``run``, the script writes ``reset`` (when
earlier attempts wrote events) and ``start``. The attempt number is known only in
Redis, so the events come as JSON prefixes that end just before it (the last
field of each: :func:`worker.publisher._before_attempt`).

ARGV: BEGIN's ten, then start_prefix, reset_prefix. Returns BEGIN's replies,
``run`` extended: {'run', attempt, had_events, seq_after, id*} (no cancel to
report: BEGIN itself ends a stream whose cancel is pending).
"""

from __future__ import annotations

from typing import Final

from streamfan import scripts

# The helpers every script starts with (private to scripts.py, which is at its
# size limit): BEGIN_START is BEGIN's body wrapped in a function after them.
_COMMON = scripts._COMMON

# BEGIN is the shared helpers followed by its own body, which becomes a function here.
assert scripts.BEGIN.startswith(_COMMON)
BEGIN_START: Final = (
    _COMMON
    + "local function begin()\n"
    + scripts.BEGIN[len(_COMMON) :]
    + r"""
end
local claim = begin()
if claim[1] ~= R_RUN then return claim end
local evs = {}
if claim[3] == 1 then evs[#evs + 1] = ARGV[12] .. claim[2] .. '}' end
evs[#evs + 1] = ARGV[11] .. claim[2] .. '}'
local ids = append(ARGV[10], evs, 1, #evs)
redis.call('HSET', meta, M_SEQ, #ids)
local out = {R_RUN, claim[2], claim[3], #ids}
for i = 1, #ids do out[#out + 1] = ids[i] end
return out
"""
)
