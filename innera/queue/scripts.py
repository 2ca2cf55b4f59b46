"""The Lua scripts of the job queue: every state change is one of these, atomically.

Keys of one queue (all share the hash tag ``{q:<name>}``, so every script touches one
cluster slot, and every key a script touches is passed in KEYS — no key is built in Lua):

- ``waiting``   LIST of job ids, claimed from the head
- ``delayed``   ZSET id → due time (ms); retries wait here too
- ``active``    ZSET id → lease expiry (ms)
- ``completed`` ZSET id → finish time (ms);  ``failed`` the same (the dead-letter set)
- ``meta``      HASH id → JSON {s: status, a: attempts made, m: max attempts, t: fencing
                token (claims so far), st: stalls, p: progress, e: last error, c: created,
                d: due, f: finished}
- ``payloads``  HASH id → the payload (JSON text)
- ``reaper``    the reaper lock (STRING, a random owner token, with a TTL)

Time is the server's (``TIME``), so instances with skewed clocks agree on leases.
"""

from __future__ import annotations

_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function load(meta, id)
  local raw = redis.call('HGET', meta, id)
  if not raw then return nil end
  return cjson.decode(raw)
end
local function save(meta, id, j)
  redis.call('HSET', meta, id, cjson.encode(j))
end
local function owned(j, token)
  return j ~= nil and j.s == 'active' and j.t == tonumber(token)
end
local function drop(zset, meta, payloads, ids)
  if #ids > 0 then
    redis.call('ZREM', zset, unpack(ids))
    redis.call('HDEL', meta, unpack(ids))
    redis.call('HDEL', payloads, unpack(ids))
  end
end
-- retention: at most `keep` entries (-1: no limit), none older than `age` ms (-1: no limit);
-- at most 1000 removals per call (the reaper catches up).
local function trim(zset, meta, payloads, keep, age, now)
  keep = tonumber(keep)
  age = tonumber(age)
  if age >= 0 then
    drop(zset, meta, payloads,
         redis.call('ZRANGEBYSCORE', zset, '-inf', '(' .. (now - age), 'LIMIT', 0, 1000))
  end
  if keep >= 0 then
    local n = redis.call('ZCARD', zset)
    if n > keep then
      drop(zset, meta, payloads, redis.call('ZRANGE', zset, 0, math.min(n - keep, 1000) - 1))
    end
  end
end
"""

# KEYS: waiting delayed completed failed meta payloads
# ARGV: id payload delay_ms max_attempts
# → {1, status} created, or {0, status} an unfinished job with this id exists (dedupe).
# A finished (completed/failed) job with the same id is replaced.
ENQUEUE = _COMMON + """
local id = ARGV[1]
local now = now_ms()
local j = load(KEYS[5], id)
if j then
  if j.s ~= 'completed' and j.s ~= 'failed' then return {0, j.s} end
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
end
local delay = tonumber(ARGV[3])
j = {s = 'waiting', a = 0, m = tonumber(ARGV[4]), t = 0, st = 0, c = now}
redis.call('HSET', KEYS[6], id, ARGV[2])
if delay > 0 then
  j.s = 'delayed'
  j.d = now + delay
  redis.call('ZADD', KEYS[2], j.d, id)
else
  redis.call('RPUSH', KEYS[1], id)
end
save(KEYS[5], id, j)
return {1, j.s}
"""

# KEYS: waiting delayed active meta payloads
# ARGV: lease_ms count
# Promotes due delayed jobs, then pops up to `count` jobs and leases them (new token each).
# → {{id, payload, attempt, token, max_attempts}, ...}
CLAIM = _COMMON + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
if #due > 0 then
  redis.call('ZREM', KEYS[2], unpack(due))
  for _, id in ipairs(due) do
    local j = load(KEYS[4], id)
    if j and j.s == 'delayed' then
      j.s = 'waiting'
      save(KEYS[4], id, j)
      redis.call('RPUSH', KEYS[1], id)
    end
  end
end
local lease = tonumber(ARGV[1])
local out = {}
local tries = 0
while #out < tonumber(ARGV[2]) and tries < 1000 do
  tries = tries + 1
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  local j = load(KEYS[4], id)
  if j and j.s == 'waiting' then
    j.s = 'active'
    j.a = j.a + 1
    j.t = j.t + 1
    save(KEYS[4], id, j)
    redis.call('ZADD', KEYS[3], now + lease, id)
    out[#out + 1] = {id, redis.call('HGET', KEYS[5], id) or '{}', j.a, j.t, j.m}
  end
end
return out
"""

# KEYS: active meta   ARGV: id token lease_ms   → 1 renewed, 0 lease lost
RENEW = _COMMON + """
local j = load(KEYS[2], ARGV[1])
if not owned(j, ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', now_ms() + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# KEYS: meta   ARGV: id token fraction   → 1 stored, 0 lease lost
PROGRESS = _COMMON + """
local j = load(KEYS[1], ARGV[1])
if not owned(j, ARGV[2]) then return 0 end
j.p = tonumber(ARGV[3])
save(KEYS[1], ARGV[1], j)
return 1
"""

# KEYS: active completed meta payloads   ARGV: id token keep age_ms
# → 1 completed, 0 lease lost (another claim owns the job, or it is no longer active)
COMPLETE = _COMMON + """
local id = ARGV[1]
local j = load(KEYS[3], id)
if not owned(j, ARGV[2]) then return 0 end
local now = now_ms()
redis.call('ZREM', KEYS[1], id)
j.s = 'completed'
j.f = now
save(KEYS[3], id, j)
redis.call('ZADD', KEYS[2], now, id)
trim(KEYS[2], KEYS[3], KEYS[4], ARGV[3], ARGV[4], now)
return 1
"""

# KEYS: active delayed failed meta payloads
# ARGV: id token error retry_delay_ms max_attempts(0: the job's own) permanent(0|1) keep age_ms
# → 'retried' (to delayed, with backoff), 'failed' (dead-letter set) or 'lease-lost'
FAIL = _COMMON + """
local id = ARGV[1]
local j = load(KEYS[4], id)
if not owned(j, ARGV[2]) then return 'lease-lost' end
local now = now_ms()
redis.call('ZREM', KEYS[1], id)
j.e = ARGV[3]
local max = tonumber(ARGV[5])
if max <= 0 then max = j.m end
if ARGV[6] == '0' and j.a < max then
  j.s = 'delayed'
  j.d = now + tonumber(ARGV[4])
  save(KEYS[4], id, j)
  redis.call('ZADD', KEYS[2], j.d, id)
  return 'retried'
end
j.s = 'failed'
j.f = now
save(KEYS[4], id, j)
redis.call('ZADD', KEYS[3], now, id)
trim(KEYS[3], KEYS[4], KEYS[5], ARGV[7], ARGV[8], now)
return 'failed'
"""

# KEYS: active waiting meta   ARGV: id token
# Graceful release: back to the head of waiting; the attempt is given back, no stall counted.
# → 1 released, 0 lease lost
RELEASE = _COMMON + """
local id = ARGV[1]
local j = load(KEYS[3], id)
if not owned(j, ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], id)
j.s = 'waiting'
j.a = math.max(j.a - 1, 0)
save(KEYS[3], id, j)
redis.call('LPUSH', KEYS[2], id)
return 1
"""

# KEYS: active waiting completed failed meta payloads lock
# ARGV: lock_token lock_ttl_ms max_stalls keep_completed completed_age_ms keep_failed
#       failed_age_ms
# Only the holder of the lock acts (taken with SET NX PX when free, extended when ours).
# An expired lease is a stall: the job goes back to waiting (attempt given back) or, after
# more than max_stalls stalls, to failed. Then age/count retention of completed and failed.
# → {requeued, failed} or -1 (another instance holds the lock)
REAP = _COMMON + """
local cur = redis.call('GET', KEYS[7])
if not cur then
  redis.call('SET', KEYS[7], ARGV[1], 'NX', 'PX', ARGV[2])
elseif cur ~= ARGV[1] then
  return -1
else
  redis.call('PEXPIRE', KEYS[7], ARGV[2])
end
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, 1000)
local requeued, failed = 0, 0
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  local j = load(KEYS[5], id)
  if j and j.s == 'active' then
    j.st = (j.st or 0) + 1
    j.a = math.max(j.a - 1, 0)
    if j.st > tonumber(ARGV[3]) then
      j.s = 'failed'
      j.f = now
      j.e = 'job stalled more than ' .. ARGV[3] .. ' time(s) (lease expired)'
      redis.call('ZADD', KEYS[4], now, id)
      failed = failed + 1
    else
      j.s = 'waiting'
      redis.call('LPUSH', KEYS[2], id)
      requeued = requeued + 1
    end
    save(KEYS[5], id, j)
  end
end
trim(KEYS[3], KEYS[5], KEYS[6], ARGV[4], ARGV[5], now)
trim(KEYS[4], KEYS[5], KEYS[6], ARGV[6], ARGV[7], now)
return {requeued, failed}
"""

# KEYS: lock   ARGV: token   → 1 released, 0 not ours
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: failed waiting meta   ARGV: id   → 1 moved back to waiting, 0 not a failed job
RETRY = _COMMON + """
local id = ARGV[1]
local j = load(KEYS[3], id)
if not j or j.s ~= 'failed' then return 0 end
redis.call('ZREM', KEYS[1], id)
j.s = 'waiting'
j.a = 0
j.st = 0
j.f = nil
save(KEYS[3], id, j)
redis.call('RPUSH', KEYS[2], id)
return 1
"""

# KEYS: waiting delayed active completed failed   → {waiting, delayed, active, completed, failed}
STATS = """
return {redis.call('LLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3]),
        redis.call('ZCARD', KEYS[4]), redis.call('ZCARD', KEYS[5])}
"""
