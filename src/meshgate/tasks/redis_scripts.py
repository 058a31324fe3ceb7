"""The Redis task queue's Lua scripts: each change of a task is one script, so that its hash,
its status index and its stream entry never disagree (see `meshgate.tasks.redis`).

Every script but `REWRITE` starts with `_LIB`, the helpers they share. `ARGV[1]` is the key
prefix; keys are computed inside the scripts, which is why Redis Cluster is not supported.
"""

from __future__ import annotations

_LIB = """
local P = ARGV[1]
local FINAL = {succeeded=true, failed=true, cancelled=true, dead=true}
local function clear_input(id)
  local key = P..'task:'..id
  for _, field in ipairs(redis.call('HKEYS', key)) do
    local kind = string.sub(field, 1, 4)
    if kind == 'ask:' or kind == 'ans:' then redis.call('HDEL', key, field) end
  end
end
-- waiting (queued) tasks per target, for max_queued_tasks_per_target
local function count_waiting(id, by)
  local target = redis.call('HGET', P..'task:'..id, 'target_name')
  if target and redis.call('HINCRBY', P..'waiting', target, by) <= 0 then
    redis.call('HDEL', P..'waiting', target)
  end
end
local function move(id, from, to)
  clear_input(id)
  redis.call('ZREM', P..'st:'..from, id)
  redis.call('ZADD', P..'st:'..to, 0, id)
  redis.call('HSET', P..'task:'..id, 'status', to)
  if from ~= to and from == 'queued' then count_waiting(id, -1) end
  if from ~= to and to == 'queued' then count_waiting(id, 1) end
end
local function push(id)
  local key = P..'task:'..id
  local priority = tonumber(redis.call('HGET', key, 'priority'))
  local band = 2
  if priority > 0 then band = 1 elseif priority < 0 then band = 3 end
  local stream = P..'ready:'..band
  local msg = redis.call('XADD', stream, '*', 'id', id)
  redis.call('HSET', key, 'stream', stream, 'msg', msg)
end
local function drop_msg(id)
  local key = P..'task:'..id
  local stream = redis.call('HGET', key, 'stream')
  local msg = redis.call('HGET', key, 'msg')
  if stream and msg then
    redis.call('XACK', stream, 'workers', msg)
    redis.call('XDEL', stream, msg)
    redis.call('HDEL', key, 'stream', 'msg')
  end
end
local function finalize(id, from, to, now)
  move(id, from, to)
  redis.call('HSET', P..'task:'..id, 'finished_at', now)
  drop_msg(id)
  redis.call('ZREM', P..'delayed', id)
  redis.call('ZADD', P..'done', now, id)
  redis.call('PUBLISH', P..'events', 'done '..id)
end
"""

_ENQUEUE = """
local id, idem, now = ARGV[2], ARGV[3], ARGV[4]
-- The id is new to each enqueue: a task already under it is this enqueue's own, stored by a
-- first sending whose answer was lost (the client sends a command again on a new connection).
-- Storing it again would queue it anew, one already running or done too.
if redis.call('EXISTS', P..'task:'..id) == 1 then return {id, 1} end
if idem ~= '' then
  local seen = redis.call('GET', P..'idem:'..idem)
  if seen and redis.call('EXISTS', P..'task:'..seen) == 1 then return {seen, 0} end
end
if ARGV[11] ~= '' and redis.call('ZCARD', P..'st:queued') >= tonumber(ARGV[11]) then
  return {'', -1}
end
if ARGV[12] ~= ''
    and tonumber(redis.call('HGET', P..'waiting', ARGV[6]) or '0') >= tonumber(ARGV[12]) then
  return {'', -2}
end
if idem ~= '' then redis.call('SET', P..'idem:'..idem, id) end
local key = P..'task:'..id
redis.call('HSET', key, 'id', id, 'status', 'queued', 'target', ARGV[5], 'target_name', ARGV[6],
  'priority', ARGV[7], 'max_attempts', ARGV[8], 'attempts', 0, 'created_at', now)
if ARGV[9] ~= '' then redis.call('HSET', key, 'deadline_at', ARGV[9]) end
if idem ~= '' then redis.call('HSET', key, 'idempotency_key', idem) end
if ARGV[10] ~= '' then
  redis.call('HSET', key, 'owner', ARGV[10])
  redis.call('ZADD', P..'owner:'..ARGV[10], 0, id)
end
redis.call('ZADD', P..'ids', 0, id)
redis.call('ZADD', P..'st:queued', 0, id)
redis.call('HINCRBY', P..'waiting', ARGV[6], 1)
push(id)
return {id, 1}
"""

_CLAIM = """
local worker, n, now, lease = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P..'delayed', '-inf', now, 'LIMIT', 0, 100)) do
  redis.call('ZREM', P..'delayed', id)
  if redis.call('HGET', P..'task:'..id, 'status') == 'queued' then push(id) end
end
local out = {}
local function take(stream, entry)
  local msg, fields = entry[1], entry[2]
  local id = fields and fields[2]
  local key = id and (P..'task:'..id)
  local status = key and redis.call('HGET', key, 'status')
  if (not status) or FINAL[status] or redis.call('HGET', key, 'msg') ~= msg then
    redis.call('XACK', stream, 'workers', msg)
    redis.call('XDEL', stream, msg)
    return
  end
  if status ~= 'running' then move(id, status, 'running') else clear_input(id) end
  redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HSET', key, 'started_at', now, 'worker', worker)
  table.insert(out, redis.call('HGETALL', key))
end
for band = 1, 3 do
  if #out < n then
    local stream = P..'ready:'..band
    local r = redis.call('XAUTOCLAIM', stream, 'workers', worker, lease, '0-0', 'COUNT', n - #out)
    for _, entry in ipairs(r[2]) do if entry then take(stream, entry) end end
  end
end
for band = 1, 3 do
  if #out < n then
    local stream = P..'ready:'..band
    local r = redis.call('XREADGROUP', 'GROUP', 'workers', worker, 'COUNT', n - #out,
      'STREAMS', stream, '>')
    if r then for _, entry in ipairs(r[1][2]) do take(stream, entry) end end
  end
end
return out
"""

_EXTEND = """
local key = P..'task:'..ARGV[2]
local stream, msg = redis.call('HGET', key, 'stream'), redis.call('HGET', key, 'msg')
if stream and msg and redis.call('HGET', key, 'status') == 'running'
    and redis.call('HGET', key, 'worker') == ARGV[3] then
  redis.call('XCLAIM', stream, 'workers', ARGV[3], 0, msg, 'JUSTID')
  return 1
end
return 0
"""

_FINISH = """
local id = ARGV[2]
local key = P..'task:'..id
local status = redis.call('HGET', key, 'status')
if (not status) or FINAL[status] then return 0 end
redis.call('HDEL', key, 'result', 'error')
if ARGV[5] ~= '' then redis.call('HSET', key, 'result', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', key, 'error', ARGV[6]) end
finalize(id, status, ARGV[3], ARGV[4])
return 1
"""

_RETRY_LATER = """
local id = ARGV[2]
local key = P..'task:'..id
if redis.call('HGET', key, 'status') ~= 'running' then return 0 end
move(id, 'running', 'queued')
redis.call('HSET', key, 'error', ARGV[4])
drop_msg(id)
redis.call('ZADD', P..'delayed', ARGV[3], id)
return 1
"""

_CANCEL = """
local id = ARGV[2]
local status = redis.call('HGET', P..'task:'..id, 'status')
if not status then return false end
if not FINAL[status] then
  finalize(id, status, 'cancelled', ARGV[3])
  redis.call('PUBLISH', P..'events', 'cancel '..id)
end
return status
"""

_REQUEUE_OWN = """
local worker, count = ARGV[2], 0
for band = 1, 3 do
  local stream = P..'ready:'..band
  for _, p in ipairs(redis.call('XPENDING', stream, 'workers', '-', '+', 10000, worker)) do
    local msg = p[1]
    local entry = redis.call('XRANGE', stream, msg, msg)[1]
    redis.call('XACK', stream, 'workers', msg)
    redis.call('XDEL', stream, msg)
    local id = entry and entry[2][2]
    local key = id and (P..'task:'..id)
    if key and redis.call('HGET', key, 'msg') == msg
        and redis.call('HGET', key, 'status') == 'running' then
      move(id, 'running', 'queued')
      push(id)
      count = count + 1
    end
  end
end
return count
"""

_RETRY_DEAD = """
local id = ARGV[2]
local key = P..'task:'..id
local status = redis.call('HGET', key, 'status')
if status ~= 'dead' and status ~= 'failed' then return 0 end
move(id, status, 'queued')
redis.call('HSET', key, 'attempts', 0)
redis.call('HDEL', key, 'finished_at')
redis.call('ZREM', P..'done', id)
push(id)
return 1
"""

_ASK_INPUT = """
local key = P..'task:'..ARGV[2]
if redis.call('HGET', key, 'status') ~= 'running' then return 0 end
redis.call('HSET', key, 'ask:'..ARGV[3], ARGV[4])
return 1
"""

_ANSWER_INPUT = """
local key = P..'task:'..ARGV[2]
if redis.call('EXISTS', key) == 0 then return -1 end
local taken = 0
for i = 3, #ARGV, 2 do
  if redis.call('HDEL', key, 'ask:'..ARGV[i]) == 1 then
    redis.call('HSET', key, 'ans:'..ARGV[i], ARGV[i + 1])
    taken = taken + 1
  end
end
if taken > 0 then redis.call('PUBLISH', P..'events', 'input '..ARGV[2]) end
return taken
"""

_TAKE_INPUT = """
local key = P..'task:'..ARGV[2]
local value = redis.call('HGET', key, 'ans:'..ARGV[3])
if value then redis.call('HDEL', key, 'ans:'..ARGV[3]) end
return value
"""

_SWEEP = """
local function forget(id)
  local key = P..'task:'..id
  local status = redis.call('HGET', key, 'status')
  local idem = redis.call('HGET', key, 'idempotency_key')
  if idem and redis.call('GET', P..'idem:'..idem) == id then redis.call('DEL', P..'idem:'..idem) end
  local owner = redis.call('HGET', key, 'owner')
  if owner then redis.call('ZREM', P..'owner:'..owner, id) end
  redis.call('DEL', key)
  redis.call('ZREM', P..'ids', id)
  if status then redis.call('ZREM', P..'st:'..status, id) end
  redis.call('ZREM', P..'done', id)
end
-- by age, then the oldest beyond max_kept (ARGV[3]); at most 1000 a call, so one sweep never
-- holds Redis for long (the next sweep goes on)
local ids = redis.call('ZRANGEBYSCORE', P..'done', '-inf', ARGV[2], 'LIMIT', 0, 1000)
for _, id in ipairs(ids) do forget(id) end
local n = #ids
if ARGV[3] ~= '' then
  local excess = math.min(redis.call('ZCARD', P..'done') - tonumber(ARGV[3]), 1000)
  if excess > 0 then
    for _, id in ipairs(redis.call('ZRANGE', P..'done', 0, excess - 1)) do forget(id) end
    n = n + excess
  end
end
return n
"""

_REWRITE = """
local key = KEYS[1]
local n = 0
for i = 1, #ARGV, 3 do
  if redis.call('HGET', key, ARGV[i]) == ARGV[i + 1] then
    redis.call('HSET', key, ARGV[i], ARGV[i + 2])
    n = n + 1
  end
end
return n
"""

SCRIPTS = {
    "enqueue": _LIB + _ENQUEUE,
    "claim": _LIB + _CLAIM,
    "extend": _LIB + _EXTEND,
    "finish": _LIB + _FINISH,
    "retry_later": _LIB + _RETRY_LATER,
    "cancel": _LIB + _CANCEL,
    "requeue_own": _LIB + _REQUEUE_OWN,
    "retry_dead": _LIB + _RETRY_DEAD,
    "ask_input": _LIB + _ASK_INPUT,
    "answer_input": _LIB + _ANSWER_INPUT,
    "take_input": _LIB + _TAKE_INPUT,
    "sweep": _LIB + _SWEEP,
}
"""The queue's scripts by name, helpers included."""

REWRITE = _REWRITE
"""Compare-and-set of a task's fields, for re-encryption: (field, old, new) triples."""
