-- lib.lua: helpers shared by every llm-throttle script (prepended to each one at load time).
--
-- Key layout. Every key of a pool carries the same hash tag ({llmthrottle}), so each script
-- declares all of them, runs atomically, and works on one Redis Cluster shard:
--   KEYS[1]  meta      hash    epoch, pause_until (ms), wake_at (ms), rescan, arrival (us),
--                              live (set once any live cap exists)
--   KEYS[2]  inflight  hash    resource -> permits held
--   KEYS[3]  leases    hash    request id -> JSON [host, granted_ms, resources, option, queued_ms,
--                              charges taken]
--   KEYS[4]  hosts     zset    host -> lease deadline (ms); renewed by the host's heartbeat
--   KEYS[5]  hostn     hash    host -> how many leases it holds
--   KEYS[6]  tombs     zset    request id -> expiry (ms): released, never to be re-registered
--   KEYS[7]  queue     zset    request id -> priority * PRIORITY_SPAN + arrival (us)
--   KEYS[8]  waiters   hash    request id -> JSON {h, t, x, u, d} (host, enqueued ms,
--                              deadline ms, resources it touches, demand)
--   KEYS[9]  queued    hash    resource -> waiters that could need it
--   KEYS[10] blocked   hash    resource -> lowest priority class with a waiter lacking it
--   KEYS[11] buckets   hash    bucket -> "level updated_ms"
--   KEYS[12] grants    stream  hand-offs to queued waiters: h host, r request id, o option, q ms
--   KEYS[13] hold      hash    resource -> average permit hold time (ms), for retry-after
--   KEYS[14] config    hash    caps and bucket specs, for readers that run no proxy; and
--                              l:<resource> -> a live cap (see cap_of)
--
-- Invariant kept by every script: inflight[r] is the number of leases listing r. Counts only
-- change together with the lease that explains them, inside one script.
--
-- A demand (JSON from the host) is {p: priority, r: [resources], o: [[option resources]...],
-- c: [[bucket, amount, capacity, rate_per_s]...], k: {resource: cap}}: caps and bucket specs
-- travel with the demand, so a queued waiter carries everything a later hand-off must check.

local K = {
  meta = KEYS[1], inflight = KEYS[2], leases = KEYS[3], hosts = KEYS[4], hostn = KEYS[5],
  tombs = KEYS[6], queue = KEYS[7], waiters = KEYS[8], queued = KEYS[9], blocked = KEYS[10],
  buckets = KEYS[11], grants = KEYS[12], hold = KEYS[13], config = KEYS[14],
}

local PRIORITY_SPAN = 4e15  -- above any arrival time in us until the year 2096
local HOLD_DEFAULT_MS = 1000
local HOLD_ALPHA = 0.2
local STREAM_MAXLEN = 10000
-- a waiter past its deadline is its host's to cancel; one whose host never does is dropped
local EXPIRED_WAITER_GRACE_MS = 5000

local NOW_US = 0

-- Redis TIME is the only clock: hosts' clocks never enter a decision.
local function clock()
  local t = redis.call('TIME')
  NOW_US = tonumber(t[1]) * 1000000 + tonumber(t[2])
  return NOW_US / 1000
end

local function num(value, default)
  if value then return tonumber(value) end
  return default
end

-- -- in-flight counts (cached for the script's run) -------------------------------------------

local inflight_cache = {}

local function inflight(r)
  local v = inflight_cache[r]
  if v == nil then
    v = num(redis.call('HGET', K.inflight, r), 0)
    inflight_cache[r] = v
  end
  return v
end

-- One HMGET for several resources' counts (a script about to read them all).
local function prefetch_inflight(resources)
  if #resources < 2 then return end
  local values = redis.call('HMGET', K.inflight, unpack(resources))
  for i, r in ipairs(resources) do inflight_cache[r] = num(values[i], 0) end
end

local function add_inflight(r, delta)
  local v = redis.call('HINCRBY', K.inflight, r, delta)
  if v <= 0 then
    redis.call('HDEL', K.inflight, r)
    v = 0
  end
  inflight_cache[r] = v
end

-- -- token buckets: the arithmetic of proxy/limits/bucket.py, in ms ---------------------------

local bucket_cache = {}

local function bucket(name, capacity, rate_ms, now)
  local b = bucket_cache[name]
  if b == nil then
    local raw = redis.call('HGET', K.buckets, name)
    if raw then
      local level, updated = string.match(raw, '^(%S+) (%S+)$')
      b = {tonumber(level), tonumber(updated)}
    else
      b = {capacity, now}
    end
    bucket_cache[name] = b
  end
  if now > b[2] then
    b[1] = math.min(capacity, b[1] + (now - b[2]) * rate_ms)
    b[2] = now
  end
  return b
end

local function bucket_wait(b, amount, capacity, rate_ms)
  local needed = math.min(amount, capacity)
  if b[1] >= needed then return 0 end
  if rate_ms <= 0 then return math.huge end
  return (needed - b[1]) / rate_ms
end

local function charge(c, now)
  local capacity, rate_ms = c[3], c[4] / 1000
  local b = bucket(c[1], capacity, rate_ms, now)
  b[1] = math.min(capacity, b[1] - c[2])
  redis.call('HSET', K.buckets, c[1], string.format('%.17g %.17g', b[1], b[2]))
end

local function charges_wait(d, now)
  local wait = 0
  for _, c in ipairs(d.c) do
    local rate_ms = c[4] / 1000
    local w = bucket_wait(bucket(c[1], c[3], rate_ms, now), c[2], c[3], rate_ms)
    if w > wait then wait = w end
  end
  return wait
end

-- -- the one atomic step (mirrors MemoryStore._try) --------------------------------------------

local function touched(d)
  local seen, out = {}, {}
  local function add(r)
    if not seen[r] then
      seen[r] = true
      out[#out + 1] = r
    end
  end
  for _, r in ipairs(d.r) do add(r) end
  for _, opt in ipairs(d.o) do
    for _, r in ipairs(opt) do add(r) end
  end
  return out
end

-- The cap of ``r`` for demand ``d``: the live cap every host obeys (config hash field
-- ``l:<r>``, written by setcap.lua for adaptive caps and reloads; -1: no cap) when one is set,
-- else the cap the demand carries. meta ``live`` says whether any is set: one read per script
-- while none is.
local live_any = nil
local live_cache = {}

local function cap_of(d, r)
  if live_any == nil then live_any = redis.call('HGET', K.meta, 'live') ~= false end
  if not live_any then return d.k[r] end
  local v = live_cache[r]
  if v == nil then
    v = num(redis.call('HGET', K.config, 'l:' .. r), false)
    live_cache[r] = v
  end
  if v == false then return d.k[r] end
  if v < 0 then return nil end
  return v
end

-- Which option (index) could be admitted now, or nil with what is missing and the longest
-- bucket wait (ms). ``is_blocked(name)`` says what earlier waiters already lack.
local function try(d, is_blocked, now)
  local missing = {}
  local function lacks(r)
    if is_blocked(r) then return true end
    local cap = cap_of(d, r)
    return cap ~= nil and inflight(r) >= cap
  end
  for _, r in ipairs(d.r) do
    if lacks(r) then missing[#missing + 1] = r end
  end
  local best, best_ratio, best_count = nil, math.huge, math.huge
  local option_missing = {}
  for i, opt in ipairs(d.o) do
    local ok = true
    for _, r in ipairs(opt) do
      if lacks(r) then
        ok = false
        option_missing[#option_missing + 1] = r
      end
    end
    if ok then
      local ratio, count = 0, 0
      local first = opt[1]
      if first then
        count = inflight(first)
        local cap = cap_of(d, first)
        if cap and cap > 0 then ratio = count / cap end
      end
      if ratio < best_ratio or (ratio == best_ratio and count < best_count) then
        best, best_ratio, best_count = i, ratio, count
      end
    end
  end
  if best == nil then
    for _, r in ipairs(option_missing) do missing[#missing + 1] = r end
  end
  local wait = 0
  for _, c in ipairs(d.c) do
    if is_blocked(c[1]) then
      missing[#missing + 1] = c[1]
    else
      local rate_ms = c[4] / 1000
      local w = bucket_wait(bucket(c[1], c[3], rate_ms, now), c[2], c[3], rate_ms)
      if w > 0 then
        missing[#missing + 1] = c[1]
        if w > wait then wait = w end
      end
    end
  end
  if #missing > 0 or best == nil then return nil, missing, wait end
  return best, missing, 0
end

-- Take every permit and charge of option ``opt``: the lease and its counts appear together.
local function take(rid, host, d, opt, now, queued_ms)
  local held = {}
  for _, r in ipairs(d.r) do held[#held + 1] = r end
  for _, r in ipairs(d.o[opt]) do held[#held + 1] = r end
  for _, r in ipairs(held) do add_inflight(r, 1) end
  for _, c in ipairs(d.c) do charge(c, now) end
  redis.call('HSET', K.leases, rid, cjson.encode({host, now, held, opt, queued_ms, d.c}))
  redis.call('HINCRBY', K.hostn, host, 1)
end

-- Give a lease's permits back (``lease`` decoded); ``observe`` feeds the hold-time average.
local function drop_lease(rid, lease, now, observe)
  local held_for = now - lease[2]
  local resources = lease[3]
  for _, r in ipairs(resources) do add_inflight(r, -1) end
  if observe and #resources > 0 then  -- the hold-time averages: one read, one write
    local prev = redis.call('HMGET', K.hold, unpack(resources))
    local fields = {}
    for i, r in ipairs(resources) do
      local avg = held_for
      local p = num(prev[i], nil)
      if p then avg = p + HOLD_ALPHA * (held_for - p) end
      fields[#fields + 1] = r
      fields[#fields + 1] = string.format('%.3f', avg)
    end
    redis.call('HSET', K.hold, unpack(fields))
  end
  redis.call('HDEL', K.leases, rid)
  if redis.call('HINCRBY', K.hostn, lease[1], -1) <= 0 then
    redis.call('HDEL', K.hostn, lease[1])
  end
end

-- -- the queue -------------------------------------------------------------------------------

local function next_score(priority)
  local us = NOW_US
  local last = num(redis.call('HGET', K.meta, 'arrival'), 0)
  if us <= last then us = last + 1 end
  redis.call('HSET', K.meta, 'arrival', string.format('%.0f', us))
  return priority * PRIORITY_SPAN + us
end

-- Queue a waiter; ``raw`` is the demand's JSON exactly as the host sent it.
local function add_waiter(rid, host, d, raw, score, enqueued, deadline)
  local u = touched(d)
  local head = cjson.encode({h = host, t = enqueued, x = deadline, u = u})
  redis.call('HSET', K.waiters, rid, string.sub(head, 1, -2) .. ',"d":' .. raw .. '}')
  redis.call('ZADD', K.queue, string.format('%.0f', score), rid)
  for _, r in ipairs(u) do redis.call('HINCRBY', K.queued, r, 1) end
end

local function drop_waiter(rid, w)
  redis.call('ZREM', K.queue, rid)
  redis.call('HDEL', K.waiters, rid)
  for _, r in ipairs(w.u) do
    if redis.call('HINCRBY', K.queued, r, -1) <= 0 then redis.call('HDEL', K.queued, r) end
  end
end

local function pause_left(now)
  local left = num(redis.call('HGET', K.meta, 'pause_until'), 0) - now
  if left > 0 then return left end
  return 0
end

local function stream_last_id()
  local last = redis.call('XREVRANGE', K.grants, '+', '-', 'COUNT', 1)
  if #last == 0 then return '0-0' end
  return last[1][1]
end

-- Serve waiters in order (priority, then arrival); each one not served blocks only what it
-- lacks for those behind it. Mirrors MemoryStore._scan. Returns ms until a bucket-blocked
-- waiter could be served (or nil). Skipped during a recovery pause (marked for later).
local function scan(now)
  if pause_left(now) > 0 then
    redis.call('HSET', K.meta, 'rescan', '1')
    return nil
  end
  redis.call('HDEL', K.meta, 'rescan')
  local blocked, first_priority = {}, {}
  local function is_blocked(name) return blocked[name] == true end
  local next_wake = nil
  for _, rid in ipairs(redis.call('ZRANGE', K.queue, 0, -1)) do
    local raw = redis.call('HGET', K.waiters, rid)
    if not raw then
      redis.call('ZREM', K.queue, rid)
    else
      local w = cjson.decode(raw)
      if w.x + EXPIRED_WAITER_GRACE_MS < now then
        drop_waiter(rid, w)
      else
        local opt, missing, wait = try(w.d, is_blocked, now)
        if opt then
          drop_waiter(rid, w)
          local queued_ms = now - w.t
          take(rid, w.h, w.d, opt, now, queued_ms)
          redis.call('XADD', K.grants, 'MAXLEN', '~', STREAM_MAXLEN, '*',
            'h', w.h, 'r', rid, 'o', opt, 'q', string.format('%.3f', queued_ms))
        else
          if wait > 0 and (next_wake == nil or wait < next_wake) then next_wake = wait end
          for _, m in ipairs(missing) do
            if not blocked[m] then
              blocked[m] = true
              first_priority[m] = w.d.p
            end
          end
        end
      end
    end
  end
  redis.call('DEL', K.blocked)
  local fields = {}
  for name, priority in pairs(first_priority) do
    fields[#fields + 1] = name
    fields[#fields + 1] = priority
  end
  if #fields > 0 then redis.call('HSET', K.blocked, unpack(fields)) end
  if next_wake then
    redis.call('HSET', K.meta, 'wake_at', string.format('%.3f', now + next_wake))
  else
    redis.call('HDEL', K.meta, 'wake_at')
  end
  return next_wake
end

-- Expected wait before ``d`` could be served: queue ahead x hold time / cap, or the bucket.
local function estimate(d, now, max_wait)
  local est = charges_wait(d, now)
  for _, r in ipairs(touched(d)) do
    local cap = cap_of(d, r)
    if cap and cap > 0 then
      local hold = num(redis.call('HGET', K.hold, r), HOLD_DEFAULT_MS)
      local ahead = num(redis.call('HGET', K.queued, r), 0) + 1
      local e = hold * ahead / cap
      if e > est then est = e end
    end
  end
  return math.min(math.max(est, 1), max_wait)
end

-- The data-loss marker: missing means this Redis lost (or never had) the pool's state. Whoever
-- finds it missing creates a new epoch and pauses admissions so live hosts can re-register.
local function current_epoch(now, host, pause_ms)
  local epoch = redis.call('HGET', K.meta, 'epoch')
  if epoch then return epoch end
  epoch = host .. '@' .. string.format('%.0f', NOW_US)
  redis.call('HSET', K.meta, 'epoch', epoch)
  if pause_ms > 0 then
    redis.call('HSET', K.meta, 'pause_until', string.format('%.3f', now + pause_ms))
  end
  return epoch
end

-- Hosts whose lease deadline passed are gone: their permits and waiters are taken back.
local function reap(now)
  local dead = redis.call('ZRANGEBYSCORE', K.hosts, '-inf', string.format('%.3f', now))
  if #dead == 0 then return false end
  local gone = {}
  for _, h in ipairs(dead) do
    gone[h] = true
    redis.call('ZREM', K.hosts, h)
  end
  local leases = redis.call('HGETALL', K.leases)
  for i = 1, #leases, 2 do
    local lease = cjson.decode(leases[i + 1])
    if gone[lease[1]] then drop_lease(leases[i], lease, now, false) end
  end
  local waiters = redis.call('HGETALL', K.waiters)
  for i = 1, #waiters, 2 do
    local w = cjson.decode(waiters[i + 1])
    if gone[w.h] then drop_waiter(waiters[i], w) end
  end
  for _, h in ipairs(dead) do redis.call('HDEL', K.hostn, h) end
  return true
end

local function fmt(x)
  if x == nil then return '-1' end
  return string.format('%.3f', x)
end
