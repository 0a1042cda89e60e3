-- admit.lua: admit a demand now, or queue it. The fast path: ONE round trip.
--
-- KEYS: the pool's keys (see lib.lua).
-- ARGV: epoch the host knows, host, request id, demand JSON, max wait (ms), max queue depth,
--       recovery pause (ms, used only when this call finds the store empty), '1' when the max
--       wait is the request's own (then a wait the queue predicts longer is refused at once).
-- Replies:
--   {'G', option, queued_ms}            granted (also when this request was granted already)
--   {'Q', score, stream_id, wake_ms}    queued; grants after stream_id concern it; wake_ms >= 0
--                                       when only buckets block it (rescan then)
--   {'R', wait_ms}                      a bucket could not serve it within max wait: refused
--   {'F', retry_ms}                     the queue is full: refused
--   {'T', wait_ms}                      cannot start within the request's own max wait: refused
--   {'E', epoch, pause_ms}              the store's epoch differs: re-register, then retry
--   {'P', pause_ms}                     admissions paused while hosts re-register
--   {'X'}                               this request id was released already (a late retry)
-- Invariant: a request id is admitted at most once, and charged only when admitted, so a
-- retried call (redis-py retries on a dropped connection) neither double-grants nor charges.

local epoch_arg, host, rid, raw = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local max_wait, max_depth, pause_ms = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local own_wait = ARGV[8] == '1'
local now = clock()

-- one read for the meta fields the fast path needs (every call saved is ~3 us of Redis time)
local meta = redis.call('HMGET', K.meta, 'epoch', 'pause_until', 'rescan')
local epoch, paused = meta[1], 0
if epoch then
  paused = math.max(0, num(meta[2], 0) - now)
else
  epoch = current_epoch(now, host, pause_ms)
  paused = pause_left(now)
end
if epoch ~= epoch_arg then return {'E', epoch, fmt(paused)} end
if paused > 0 then return {'P', fmt(paused)} end

local lease = redis.call('HGET', K.leases, rid)
if lease then
  lease = cjson.decode(lease)
  return {'G', lease[4], fmt(lease[5])}
end
if redis.call('HEXISTS', K.waiters, rid) == 1 then
  return {'Q', redis.call('ZSCORE', K.queue, rid) or '0', stream_last_id(), '-1'}
end
if redis.call('ZSCORE', K.tombs, rid) then return {'X'} end
if meta[3] then scan(now) end

local d = cjson.decode(raw)
-- nothing is blocked while nobody waits (the common case): no lookup per resource then
local any_blocked = redis.call('EXISTS', K.blocked) == 1
local blocked_cache = {}
local function is_blocked(name)
  if not any_blocked then return false end
  local b = blocked_cache[name]
  if b == nil then
    local p = redis.call('HGET', K.blocked, name)
    b = p ~= false and tonumber(p) <= d.p
    blocked_cache[name] = b
  end
  return b
end
prefetch_inflight(touched(d))

local opt, missing, _ = try(d, is_blocked, now)
if opt then
  take(rid, host, d, opt, now, 0)
  charge_fair(d, false)
  return {'G', opt, '0'}
end

local solo = charges_wait(d, now)
if solo > max_wait then return {'R', fmt(solo)} end
if redis.call('ZCARD', K.queue) >= max_depth then
  return {'F', fmt(estimate(d, now, max_wait))}
end
if own_wait then
  local ahead = estimate(d, now, math.huge, true)
  if ahead > max_wait then return {'T', fmt(ahead)} end
end

local score = next_score(d.p)
add_waiter(rid, host, d, raw, score, now, now + max_wait)
local buckets, only_buckets = {}, true
for _, c in ipairs(d.c) do buckets[c[1]] = true end
local stored = {}
for _, m in ipairs(missing) do
  if not buckets[m] then only_buckets = false end
  -- later arrivals of this priority or lower must not pass it on what it lacks
  if not stored[m] then
    stored[m] = true
    -- fifo: later arrivals of this priority or lower; fair: any class may be owed the turn
    local mark = d.p
    if not fifo(d) then mark = 0 end
    local p = redis.call('HGET', K.blocked, m)
    if p == false or tonumber(p) > mark then redis.call('HSET', K.blocked, m, mark) end
  end
end
local wake = -1
if only_buckets then
  wake = solo
  local at = num(redis.call('HGET', K.meta, 'wake_at'), math.huge)
  if now + solo < at then redis.call('HSET', K.meta, 'wake_at', fmt(now + solo)) end
end
return {'Q', string.format('%.0f', score), stream_last_id(), fmt(wake)}
