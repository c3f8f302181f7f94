"""The orphan sweep's two scripts (``worker/sweep.py``), beside :mod:`streamfan.scripts`.

They start with the same :data:`~streamfan.scripts.PRELUDE` and spell no fact by
hand (``tests/unit/test_scripts.py`` checks them with the others).
"""

from __future__ import annotations

from typing import Final

from streamfan.scripts import _COMMON, PRELUDE

#: Orphan sweep (``worker.sweep``): end a stream whose job is gone from the queue,
#: unless it finished or an attempt holds its lease. Called only after the sweep
#: saw the job missing; the lease and status are re-checked here, atomically.
#: ARGV: now_ms, error_event_json, retention_ms, maxlen.
#: Returns :attr:`Reply.ENDED` (ended here), ``HELD``, ``GONE`` (no meta) or a
#: finished status (also when it wrote the lost terminal entry of a durable end;
#: ``scripts.BEGIN`` does the same).
ORPHAN: Final = (
    _COMMON
    + r"""
local status = redis.call('HGET', meta, M_STATUS)
if not status then return R_GONE end
if is_finished(status) then return status end
if redis.call('EXISTS', lease) == 1 then return R_HELD end
-- a durable end whose terminal entry was lost is that end, not an orphan
local final = finish_from_marker(ARGV[4], ARGV[1], ARGV[3])
if final then return final end
append(ARGV[4], {ARGV[2]}, 1, 1)
redis.call('HSET', meta, M_ERROR, ARGV[2])
finish(S_ERROR, ARGV[1], ARGV[3])
return R_ENDED
"""
)

#: Orphan sweep: take the open streams last checked before ARGV[1] (at most
#: ARGV[2] of them) and mark them checked at ARGV[3], in one step, so that two
#: workers' sweeps never check the same stream at once.
#: KEYS: the open-streams index (a sorted set on the queue's Redis: id -> ms).
CLAIM_DUE: Final = (
    PRELUDE
    + r"""
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for i = 1, #due do redis.call('ZADD', KEYS[1], 'XX', ARGV[3], due[i]) end
return due
"""
)
