"""The Lua scripts that change a stream: the whole write-side state machine of Redis.

Every change to a stream goes through one of these, so each is atomic and a
round trip. They share the ``append`` helper: ``XADD`` each event (``MAXLEN ~``),
record the newest id in meta ``last_id``, and ``PUBLISH`` one wake-up carrying
the previous id and the new entries (format in :mod:`streamfan.wakeup`).

All scripts take the same four keys, in this order (one hash slot, thanks to the
``{ID}`` tag): meta, events, live channel (passed as a key so the slot is known),
lease. Times are passed in by the caller (milliseconds), not read in Lua.
"""

from __future__ import annotations

from typing import Final

_COMMON: Final = r"""
local meta, events, live, lease = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- XADD evs[first..last] to stream `ev_key` after `prev` (its newest id), and
-- PUBLISH one wake-up on `chan`. Returns the new ids; meta's last_id is the caller's.
local function xadd_publish(ev_key, chan, prev, maxlen, evs, first, last)
  local out = {prev}
  local ids = {}
  for i = first, last do
    local id = redis.call('XADD', ev_key, 'MAXLEN', '~', maxlen, '*', 'e', evs[i])
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
  local prev = redis.call('HGET', meta, 'last_id') or '0-0'
  local ids = xadd_publish(events, live, prev, maxlen, evs, first, last)
  if #ids > 0 then redis.call('HSET', meta, 'last_id', ids[#ids]) end
  return ids
end

local function finish(status, now, retention_ms)
  redis.call('HSET', meta, 'status', status, 'updated_at', now)
  redis.call('HDEL', meta, 'cancel')
  redis.call('PEXPIRE', meta, retention_ms)
  redis.call('PEXPIRE', events, retention_ms)
  redis.call('DEL', lease)
end

local function is_finished(status)
  return status == 'done' or status == 'error' or status == 'cancelled'
end
"""

#: submit(): create the meta hash unless it exists. Returns 1 if created, else 0.
#: ARGV: now_ms, model, owner, queued_ttl_ms
CREATE: Final = (
    _COMMON
    + r"""
if redis.call('EXISTS', meta) == 1 then return 0 end
redis.call('HSET', meta, 'status', 'queued', 'created_at', ARGV[1], 'updated_at', ARGV[1],
           'model', ARGV[2], 'owner', ARGV[3], 'attempt', 0, 'seq', 0)
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
local status = redis.call('HGET', meta, 'status')
if not status then return 'not_found' end
if is_finished(status) then return status end
if status == 'queued' then
  append(ARGV[5], {ARGV[3]}, 1, 1)
  finish('cancelled', ARGV[1], ARGV[4])
  return 'cancelled'
end
redis.call('HSET', meta, 'cancel', ARGV[2], 'updated_at', ARGV[1])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 'cancelling'
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
local status = redis.call('HGET', meta, 'status')
if not status then
  -- enqueued straight into arq by a service that wrote no meta: adopt the job
  redis.call('HSET', meta, 'status', 'queued', 'created_at', now, 'model', ARGV[4],
             'owner', '', 'attempt', 0, 'seq', 0)
  status = 'queued'
end
if is_finished(status) then return {'finished', status} end
local holder = redis.call('GET', lease)
if holder and holder ~= token then return {'busy', redis.call('PTTL', lease)} end
if redis.call('HGET', meta, 'cancel') then
  append(ARGV[10], {ARGV[8]}, 1, 1)
  finish('cancelled', now, ARGV[9])
  return {'cancelled'}
end
local attempt = redis.call('HINCRBY', meta, 'attempt', 1)
if attempt > tonumber(ARGV[6]) then
  append(ARGV[10], {ARGV[7]}, 1, 1)
  redis.call('HSET', meta, 'error', ARGV[7])
  finish('error', now, ARGV[9])
  return {'exhausted', attempt}
end
redis.call('HSET', meta, 'status', 'running', 'seq', 0, 'updated_at', now)
redis.call('SET', lease, token, 'PX', ARGV[2])
redis.call('PEXPIRE', meta, ARGV[5])
redis.call('PEXPIRE', events, ARGV[5])
local had = 0
if redis.call('XLEN', events) > 0 then had = 1 end
return {'run', attempt, had}
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
local cur = redis.call('HGET', meta, 'attempt')
if not cur then return {'gone'} end
if tonumber(cur) ~= tonumber(ARGV[1]) then return {'stale', cur} end
local status = redis.call('HGET', meta, 'status')
if is_finished(status) then return {'finished', status} end
local have = tonumber(redis.call('HGET', meta, 'seq') or '0')
-- seq '' = "wherever the stream is": the writer lost track (a call interrupted
-- after the script ran), so nothing may be skipped as already written.
local first = have
if ARGV[2] ~= '' then first = tonumber(ARGV[2]) end
if first > have then return {'gap', have} end
local npairs = tonumber(ARGV[7])
local base = 7 + 2 * npairs
local evs = {}
for i = base + 1, #ARGV do evs[#evs + 1] = ARGV[i] end
local skip = have - first
local ids = append(ARGV[3], evs, skip + 1, #evs)
redis.call('HSET', meta, 'seq', have + #ids, 'updated_at', ARGV[4])
for i = 1, npairs do
  redis.call('HSET', meta, ARGV[6 + 2 * i], ARGV[7 + 2 * i])
end
if ARGV[5] ~= '' then finish(ARGV[5], ARGV[4], ARGV[6]) end
local out = {'ok', redis.call('HGET', meta, 'cancel') or '', have + #ids}
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
#: Keys named inside a script are fine on one Redis; the batch spans many
#: streams' slots anyway, so a Redis Cluster would need batches split by slot.
#: Returns one reply per stream, in order, each shaped as :data:`APPEND`'s, or
#: {'err', message} if Redis refused that stream's commands, or {'bad_record'}.
APPEND_MANY: Final = (
    _COMMON
    + r"""
local maxlen, now, batch = ARGV[1], ARGV[2], ARGV[3]

local function append_record(record)
  local nl = string.find(record, '\n', 1, true) or (#record + 1)
  local base, attempt, seq = string.match(string.sub(record, 1, nl - 1), '^(%S+) (%d+) (%d*)$')
  if not base then return {'bad_record'} end
  local m_key, e_key = base .. ':meta', base .. ':events'
  local m = redis.call('HMGET', m_key, 'attempt', 'status', 'seq', 'last_id', 'cancel')
  local have = tonumber(m[3] or '0')
  local first = have
  if seq ~= '' then first = tonumber(seq) end
  if not m[1] then return {'gone'} end
  if tonumber(m[1]) ~= tonumber(attempt) then return {'stale', m[1]} end
  if is_finished(m[2]) then return {'finished', m[2]} end
  if first > have then return {'gap', have} end
  local evs = {}
  for ev in string.gmatch(string.sub(record, nl + 1), '[^\n]+') do evs[#evs + 1] = ev end
  local ids = xadd_publish(e_key, base .. ':live', m[4] or '0-0', maxlen, evs,
                           have - first + 1, #evs)
  if #ids > 0 then
    redis.call('HSET', m_key, 'seq', have + #ids, 'updated_at', now, 'last_id', ids[#ids])
  end
  local reply = {'ok', m[5] or '', have + #ids}
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
    if type(reply) == 'table' then msg = reply['err'] or 'error' end
    reply = {'err', tostring(msg)}
  end
  replies[#replies + 1] = reply
end
return replies
"""
)

#: Worker: extend the lease while still holding it; report a pending cancel.
#: ARGV: token, lease_ms, attempt (optional). Returns {1, cancel_reason_or_empty}
#: or {0, ''} if lost. A lease that lapsed while Redis was unreachable or paused
#: (its TTL ran on Redis's clock) is taken back by the attempt that still owns
#: the stream: nobody else holds it and no later attempt began.
RENEW: Final = (
    _COMMON
    + r"""
local holder = redis.call('GET', lease)
if holder ~= ARGV[1] then
  if holder or not ARGV[3] or redis.call('HGET', meta, 'attempt') ~= ARGV[3]
     or redis.call('HGET', meta, 'status') ~= 'running' then
    return {0, ''}
  end
  redis.call('SET', lease, ARGV[1], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', lease, ARGV[2])
end
return {1, redis.call('HGET', meta, 'cancel') or ''}
"""
)

#: Orphan sweep (``worker.sweep``): end a stream whose job is gone from the queue,
#: unless it finished or an attempt holds its lease. Called only after the sweep
#: saw the job missing; the lease and status are re-checked here, atomically.
#: ARGV: now_ms, error_event_json, retention_ms, maxlen.
#: Returns 'orphaned' (ended here), 'held', 'gone' (no meta) or a finished status.
ORPHAN: Final = (
    _COMMON
    + r"""
local status = redis.call('HGET', meta, 'status')
if not status then return 'gone' end
if is_finished(status) then return status end
if redis.call('EXISTS', lease) == 1 then return 'held' end
append(ARGV[4], {ARGV[2]}, 1, 1)
redis.call('HSET', meta, 'error', ARGV[2])
finish('error', ARGV[1], ARGV[3])
return 'orphaned'
"""
)

#: Orphan sweep: take the open streams last checked before ARGV[1] (at most
#: ARGV[2] of them) and mark them checked at ARGV[3], in one step, so that two
#: workers' sweeps never check the same stream at once.
#: KEYS: the open-streams index (a sorted set on the queue's Redis: id -> ms).
CLAIM_DUE: Final = r"""
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for i = 1, #due do redis.call('ZADD', KEYS[1], 'XX', ARGV[3], due[i]) end
return due
"""

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
READ_PAGE: Final = r"""
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

local status = redis.call('HGET', meta, 'status') or false
if redis.call('EXISTS', events) == 0 then
  local newest = redis.call('HGET', meta, 'last_id') or '0-0'
  if before(newest, known) then newest = known end
  if before(pos, newest) then return {0, 1, '0-0', {}, status} end
  return {0, 0, '0-0', {}, status}
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
