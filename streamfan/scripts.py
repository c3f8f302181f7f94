"""The Lua scripts that change a stream: the whole write-side state machine of Redis.

Every change to a stream goes through one of these, so each is atomic and a
round trip. They share the ``append`` helper: ``XADD`` each event (``MAXLEN ~``),
record the newest id in meta ``last_id``, and ``PUBLISH`` one wake-up carrying
the previous id and the new entries (format in :mod:`streamfan.wakeup`).

All scripts take the same four keys, in this order (one hash slot, thanks to the
``{ID}`` tag): meta, events, live channel (passed as a key so the slot is known),
lease. Times are passed in by the caller (milliseconds), not read in Lua.

No script spells a key suffix, a field, a status or a reply tag: each starts
with :data:`PRELUDE`, Lua locals generated from :data:`CONSTANTS`, which takes
them from :mod:`streamfan.keys`, :mod:`streamfan.events`,
:mod:`streamfan.positions` and :class:`Reply`. ``tests/unit/test_scripts.py``
fails on a quoted literal in a script that should have been one of them.
"""

from __future__ import annotations

from typing import Final

from streamfan import events
from streamfan.keys import EVENT_FIELD, EVENTS_SUFFIX, LIVE_SUFFIX, META_SUFFIX, Meta
from streamfan.positions import ZERO_RAW


class Reply:
    """The tags the scripts answer with (first element of a reply, or the reply)."""

    OK = "ok"
    RUN = "run"
    BUSY = "busy"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    CANCELLING = "cancelling"
    EXHAUSTED = "exhausted"
    NOT_FOUND = "not_found"
    STALE = "stale"
    GAP = "gap"
    GONE = "gone"
    ERR = "err"
    BAD_RECORD = "bad_record"
    ENDED, HELD = "ended", "held"  # ORPHAN: ended here; an attempt holds it


def _upper_attrs(cls: type) -> dict[str, str]:
    return {name: value for name, value in vars(cls).items() if name.isupper()}


#: Lua name -> value of every fact the scripts share with Python.
CONSTANTS: Final[dict[str, str]] = {
    "META_SUFFIX": META_SUFFIX,
    "EVENTS_SUFFIX": EVENTS_SUFFIX,
    "LIVE_SUFFIX": LIVE_SUFFIX,
    "EVENT_FIELD": EVENT_FIELD,
    "ZERO_ID": ZERO_RAW.decode(),
    **{f"M_{name}": value for name, value in _upper_attrs(Meta).items()},
    **{f"S_{status.upper()}": status for status in sorted(events.STATUSES)},
    **{f"R_{name}": value for name, value in _upper_attrs(Reply).items()},
}


def _lua_string(value: str) -> str:
    # The values are plain names; anything else would need escaping.
    if not value.replace("_", "").replace(":", "").replace("-", "").isalnum():
        raise ValueError(f"not a plain name for a Lua constant: {value!r}")
    return f"'{value}'"


#: Prepended to every script: the constants as locals, and the finished statuses
#: as a set (``is_finished`` in :data:`_COMMON`, ``READ_PAGE``'s callers decide).
PRELUDE: Final = (
    "\n".join(f"local {name} = {_lua_string(value)}" for name, value in CONSTANTS.items())
    + "\nlocal FINISHED = {"
    + ", ".join(f"[S_{status.upper()}] = true" for status in sorted(events.FINISHED_STATUSES))
    + "}\n"
)

_COMMON: Final = (
    PRELUDE
    + r"""
local meta, events, live, lease = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- XADD evs[first..last] to stream `ev_key` after `prev` (its newest id), and
-- PUBLISH one wake-up on `chan`. Returns the new ids; meta's last_id is the caller's.
local function xadd_publish(ev_key, chan, prev, maxlen, evs, first, last)
  local out = {prev}
  local ids = {}
  for i = first, last do
    local id = redis.call('XADD', ev_key, 'MAXLEN', '~', maxlen, '*', EVENT_FIELD, evs[i])
    ids[#ids + 1] = id
    out[#out + 1] = id
    out[#out + 1] = evs[i]
  end
  if #ids > 0 then
    redis.call('PUBLISH', chan, table.concat(out, '\n'))
  end
  return ids
end

local function append(maxlen, evs, first, last)
  local prev = redis.call('HGET', meta, M_LAST_ID) or ZERO_ID
  local ids = xadd_publish(events, live, prev, maxlen, evs, first, last)
  if #ids > 0 then redis.call('HSET', meta, M_LAST_ID, ids[#ids]) end
  return ids
end

local function finish(status, now, retention_ms)
  redis.call('HSET', meta, M_STATUS, status, M_UPDATED_AT, now)
  redis.call('HDEL', meta, M_CANCEL)
  redis.call('PEXPIRE', meta, retention_ms)
  redis.call('PEXPIRE', events, retention_ms)
  redis.call('DEL', lease)
end

local function is_finished(status)
  return FINISHED[status] == true
end

-- A durable end (worker/durability.py) whose terminal entry a crash took back:
-- write that end again, not a new reply. Returns the status, or nil if no marker.
local function finish_from_marker(maxlen, now, retention_ms)
  local m = redis.call('HMGET', meta, M_FINISHING, M_FINISHING_STATUS)
  if not m[1] then return nil end
  append(maxlen, {m[1]}, 1, 1)
  finish(m[2], now, retention_ms)
  return m[2]
end
"""
)

#: submit(): create the meta hash unless it exists (1 if created, else 0). ARGV: now_ms,
#: model, owner, queued_ttl_ms[, field, value]... (more meta fields: the door's digest)
CREATE: Final = (
    _COMMON
    + r"""
if redis.call('EXISTS', meta) == 1 then return 0 end
redis.call('HSET', meta, M_STATUS, S_QUEUED, M_CREATED_AT, ARGV[1], M_UPDATED_AT, ARGV[1],
           M_MODEL, ARGV[2], M_OWNER, ARGV[3], M_ATTEMPT, 0, M_SEQ, 0)
for i = 5, #ARGV - 1, 2 do redis.call('HSET', meta, ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', meta, ARGV[4])
return 1
"""
)

#: cancel(): end a queued stream at once, flag a running one for its worker.
#: ARGV: now_ms, reason, cancelled_event_json, retention_ms, maxlen, cancel_channel, stream_id
#: Returns the status after the call: 'not_found', a finished status, 'cancelled'
#: (ended here) or 'cancelling' (the worker will write ``cancelled``).
CANCEL: Final = (
    _COMMON
    + r"""
local status = redis.call('HGET', meta, M_STATUS)
if not status then return R_NOT_FOUND end
if is_finished(status) then return status end
if status == S_QUEUED then
  append(ARGV[5], {ARGV[3]}, 1, 1)
  finish(S_CANCELLED, ARGV[1], ARGV[4])
  return S_CANCELLED
end
redis.call('HSET', meta, M_CANCEL, ARGV[2], M_UPDATED_AT, ARGV[1])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return R_CANCELLING
"""
)

#: Worker: claim the next attempt of a stream.
#: ARGV: token, lease_ms, now_ms, model, safety_ttl_ms, max_attempts,
#:       exhausted_error_event_json, cancelled_event_json, retention_ms, maxlen
#: Returns {'run', attempt, had_events} | {'finished', status} | {'busy', pttl}
#:       | {'cancelled'} | {'exhausted', attempt}
BEGIN: Final = (
    _COMMON
    + r"""
local token, now = ARGV[1], ARGV[3]
local status = redis.call('HGET', meta, M_STATUS)
if not status then
  -- enqueued straight into arq by a service that wrote no meta: adopt the job
  redis.call('HSET', meta, M_STATUS, S_QUEUED, M_CREATED_AT, now, M_MODEL, ARGV[4],
             M_OWNER, '', M_ATTEMPT, 0, M_SEQ, 0)
  status = S_QUEUED
end
if is_finished(status) then return {R_FINISHED, status} end
local holder = redis.call('GET', lease)
if holder and holder ~= token then return {R_BUSY, redis.call('PTTL', lease)} end
local final = finish_from_marker(ARGV[10], now, ARGV[9])
if final then return {R_FINISHED, final} end
if redis.call('HGET', meta, M_CANCEL) then
  append(ARGV[10], {ARGV[8]}, 1, 1)
  finish(S_CANCELLED, now, ARGV[9])
  return {R_CANCELLED}
end
local attempt = redis.call('HINCRBY', meta, M_ATTEMPT, 1)
if attempt > tonumber(ARGV[6]) then
  append(ARGV[10], {ARGV[7]}, 1, 1)
  redis.call('HSET', meta, M_ERROR, ARGV[7])
  finish(S_ERROR, now, ARGV[9])
  return {R_EXHAUSTED, attempt}
end
redis.call('HSET', meta, M_STATUS, S_RUNNING, M_SEQ, 0, M_UPDATED_AT, now)
redis.call('SET', lease, token, 'PX', ARGV[2])
redis.call('PEXPIRE', meta, ARGV[5])
redis.call('PEXPIRE', events, ARGV[5])
local had = 0
if redis.call('XLEN', events) > 0 then had = 1 end
return {R_RUN, attempt, had}
"""
)

#: Worker: append events of one attempt. Idempotent by (attempt, seq): events
#: already written by a lost-reply retry are skipped; a stale attempt is refused.
#: ARGV: attempt, seq ('' = append after whatever is there), maxlen, now_ms,
#:       final_status ('' unless terminal), retention_ms, n_meta_pairs,
#:       [field, value]*, event_json*
#: Returns {'ok', cancel_reason_or_empty, seq_after, id*} | {'stale', attempt}
#:       | {'finished', status} | {'gap', have} | {'gone'}
APPEND: Final = (
    _COMMON
    + r"""
local cur = redis.call('HGET', meta, M_ATTEMPT)
if not cur then return {R_GONE} end
if tonumber(cur) ~= tonumber(ARGV[1]) then return {R_STALE, cur} end
local status = redis.call('HGET', meta, M_STATUS)
if is_finished(status) then return {R_FINISHED, status} end
local have = tonumber(redis.call('HGET', meta, M_SEQ) or 0)
-- seq '' = "wherever the stream is": the writer lost track (a call interrupted
-- after the script ran), so nothing may be skipped as already written.
local first = have
if ARGV[2] ~= '' then first = tonumber(ARGV[2]) end
if first > have then return {R_GAP, have} end
local npairs = tonumber(ARGV[7])
local base = 7 + 2 * npairs
local evs = {}
for i = base + 1, #ARGV do evs[#evs + 1] = ARGV[i] end
local skip = have - first
local ids = append(ARGV[3], evs, skip + 1, #evs)
redis.call('HSET', meta, M_SEQ, have + #ids, M_UPDATED_AT, ARGV[4])
for i = 1, npairs do
  redis.call('HSET', meta, ARGV[6 + 2 * i], ARGV[7 + 2 * i])
end
if ARGV[5] ~= '' then finish(ARGV[5], ARGV[4], ARGV[6]) end
local out = {R_OK, redis.call('HGET', meta, M_CANCEL) or '', have + #ids}
for i = 1, #ids do out[#out + 1] = ids[i] end
return out
"""
)

#: Worker: the hot path of :data:`APPEND` for many streams in one round trip
#: (``worker.batcher``): no meta fields, no terminal status.
#: ARGV: maxlen, now_ms, batch. ``batch`` holds one record per stream, records
#: separated by "\x1e"; a record is "<key base> <attempt> <seq or ''>" then,
#: one per line, the event JSONs (compact JSON never holds a raw newline or
#: control character). The key base is ``Keys.base(id)``: the stream's keys are
#: the base + ":meta", ":events", ":live".
#: Why one argument, not KEYS: redis-py packs each argument in Python (~2 µs
#: each), which for four per stream cost more than the rest of the append.
#: The keys are named inside the script: a batch spans many streams' slots.
#: Returns one reply per stream, in order, each shaped as :data:`APPEND`'s, or
#: {'err', message} if Redis refused that stream's commands, or {'bad_record'}.
APPEND_MANY: Final = (
    _COMMON
    + r"""
local maxlen, now, batch = ARGV[1], ARGV[2], ARGV[3]

local function append_record(record)
  local nl = string.find(record, '\n', 1, true) or (#record + 1)
  local base, attempt, seq = string.match(string.sub(record, 1, nl - 1), '^(%S+) (%d+) (%d*)$')
  if not base then return {R_BAD_RECORD} end
  local m_key, e_key = base .. META_SUFFIX, base .. EVENTS_SUFFIX
  local m = redis.call('HMGET', m_key, M_ATTEMPT, M_STATUS, M_SEQ, M_LAST_ID, M_CANCEL)
  local have = tonumber(m[3] or 0)
  local first = have
  if seq ~= '' then first = tonumber(seq) end
  if not m[1] then return {R_GONE} end
  if tonumber(m[1]) ~= tonumber(attempt) then return {R_STALE, m[1]} end
  if is_finished(m[2]) then return {R_FINISHED, m[2]} end
  if first > have then return {R_GAP, have} end
  local evs = {}
  for ev in string.gmatch(string.sub(record, nl + 1), '[^\n]+') do evs[#evs + 1] = ev end
  local ids = xadd_publish(e_key, base .. LIVE_SUFFIX, m[4] or ZERO_ID, maxlen, evs,
                           have - first + 1, #evs)
  if #ids > 0 then
    redis.call('HSET', m_key, M_SEQ, have + #ids, M_UPDATED_AT, now, M_LAST_ID, ids[#ids])
  end
  local reply = {R_OK, m[5] or '', have + #ids}
  for i = 1, #ids do reply[#reply + 1] = ids[i] end
  return reply
end

local replies = {}
local pos = 1
while pos <= #batch do
  local stop = string.find(batch, '\30', pos, true) or (#batch + 1)
  local record = string.sub(batch, pos, stop - 1)
  pos = stop + 1
  -- One stream's failure (OOM, a wrong key type...) is that stream's reply
  -- only: the others in the batch carry on.
  local ok, reply = pcall(append_record, record)
  if not ok then
    local msg = reply
    -- redis.call raises a table {err = message}: Redis's shape, not our reply tag
    if type(reply) == 'table' then msg = reply.err or 'script error' end
    reply = {R_ERR, tostring(msg)}
  end
  replies[#replies + 1] = reply
end
return replies
"""
)

#: Worker: extend the lease while still holding it; report a pending cancel.
#: ARGV: token, lease_ms, attempt (optional). Returns {1, cancel_reason_or_empty}
#: or {0, ''} if lost. A lease that lapsed while Redis was away (its TTL runs on
#: Redis's clock) is taken back by the attempt that still owns the stream.
RENEW: Final = (
    _COMMON
    + r"""
local holder = redis.call('GET', lease)
if holder ~= ARGV[1] and (holder or not ARGV[3] or redis.call('HGET', meta, M_ATTEMPT)
    ~= ARGV[3] or redis.call('HGET', meta, M_STATUS) ~= S_RUNNING) then return {0, ''} end
redis.call('SET', lease, ARGV[1], 'PX', ARGV[2])  -- ours, or lapsed and still ours
return {1, redis.call('HGET', meta, M_CANCEL) or ''}
"""
)

#: Readers (the client API and the gateway): one page of a stream's history and
#: whether the history after a position is gone, decided at the same instant.
#: This is the only place the ``gone`` rule lives (see :mod:`streamfan.history`):
#:
#:   gone  <=>  entries were removed from the stream
#:              and the position is before the newest id ever written
#:              and the position is before the oldest entry still kept.
#:
#: With the events key present: removed = ``entries-added`` > ``length``, newest =
#: ``last-generated-id``, oldest kept = ``first-entry`` (none if emptied). With the
#: key gone (expired or deleted): nothing is kept, and newest = the larger of the
#: meta's ``last_id`` and ARGV[3] (what the caller saw written), so anything before
#: it was removed. ``max-deleted-entry-id`` is not used: ``MAXLEN``/``XTRIM`` never
#: update it, only ``XDEL`` does (see :mod:`streamfan.history` for why an ``XDEL``
#: after a kept position is not ``gone``).
#: KEYS: meta, events (one slot, like the write scripts' first two keys).
#: ARGV: position (``ms-seq``, no leading zeros: read after it), count (>= 1),
#:       known newest id (``ms-seq``; ``0-0`` if none).
#: Returns {exists (0/1), gone (0/1), last_generated_id ('0-0' if no key),
#:          rows, status}: rows = up to ``count`` ``XRANGE`` replies with ids greater
#:          than the position; none when gone or when the key does not exist.
#:          status = the meta's status at the same instant (nil: no meta), so a
#:          reader learns in the same round trip that the stream finished or vanished.
READ_PAGE: Final = (
    PRELUDE
    + r"""
local meta, events = KEYS[1], KEYS[2]
local pos, count, known = ARGV[1], tonumber(ARGV[2]), ARGV[3]

-- a < b for entry ids: decimal ms and seq without leading zeros, compared as
-- strings (length first) since they may exceed a Lua number's 53 exact bits.
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then
    if #am ~= #bm then return #am < #bm end
    return am < bm
  end
  if #as ~= #bs then return #as < #bs end
  return as < bs
end

local status = redis.call('HGET', meta, M_STATUS) or false
if redis.call('EXISTS', events) == 0 then
  local newest = redis.call('HGET', meta, M_LAST_ID) or ZERO_ID
  if before(newest, known) then newest = known end
  if before(pos, newest) then return {0, 1, ZERO_ID, {}, status} end
  return {0, 0, ZERO_ID, {}, status}
end
local info = redis.call('XINFO', 'STREAM', events)
local f = {}
for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
local last = f['last-generated-id']
local removed = tonumber(f['entries-added'] or 0) > tonumber(f['length'] or 0)
local first = nil
if type(f['first-entry']) == 'table' then first = f['first-entry'][1] end
if removed and before(pos, last) and (first == nil or before(pos, first)) then
  return {1, 1, last, {}, status}
end
-- From the position itself (inclusive, so even the largest id is a valid start),
-- dropping its own entry if it is still there.
local rows = redis.call('XRANGE', events, pos, '+', 'COUNT', count + 1)
if #rows > 0 and rows[1][1] == pos then table.remove(rows, 1) end
if #rows > count then rows[#rows] = nil end
return {1, 0, last, rows, status}
"""
)
