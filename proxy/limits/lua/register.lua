-- register.lua: the host is the source of truth for its own leases and waiters; put back
-- whatever the store lost (restart, failover, a partition past the TTL), even above a cap.
--
-- KEYS: the pool's keys (see lib.lua).
-- ARGV: host, lease TTL (ms), recovery pause (ms),
--       leases JSON   [[request id, option, [resources], queued_ms], ...],
--       waiters JSON  [[request id, score, enqueued_ms_ago, max_wait_left_ms, demand JSON
--                      as a string], ...]
-- Replies: {epoch, pause_ms, stream_id, wake_ms, live_hosts, ...per waiter that needs the host's
--           attention: 'G', request id, option, queued_ms (granted) | 'X', request id (gone)}
--          stream_id is the grants stream's end BEFORE this call's own hand-offs.
-- Invariant: a lease is added only if the store has neither it nor its tombstone, so a
-- release racing this call is never undone, and no lease is counted twice; a registered
-- lease's request leaves the queue, so the queue never grants it a second one.

local host, ttl, pause_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local leases, waiters = cjson.decode(ARGV[4]), cjson.decode(ARGV[5])
local now = clock()
local epoch = current_epoch(now, host, pause_ms)
redis.call('ZADD', K.hosts, fmt(now + ttl), host)

local changed = false
for _, l in ipairs(leases) do
  local rid = l[1]
  -- the host holds it now (granted locally while degraded): a waiter of the same request
  -- left in the queue would be granted a second lease later, counted once too many for good
  local stale = redis.call('HGET', K.waiters, rid)
  if stale then drop_waiter(rid, cjson.decode(stale)) end
  if not redis.call('ZSCORE', K.tombs, rid) and redis.call('HEXISTS', K.leases, rid) == 0 then
    for _, r in ipairs(l[3]) do add_inflight(r, 1) end
    redis.call('HSET', K.leases, rid, cjson.encode({host, now, l[3], l[2], l[4]}))
    redis.call('HINCRBY', K.hostn, host, 1)
  end
end

local out = {}
for _, w in ipairs(waiters) do
  local rid = w[1]
  local lease = redis.call('HGET', K.leases, rid)
  if lease then
    lease = cjson.decode(lease)
    out[#out + 1] = 'G'
    out[#out + 1] = rid
    out[#out + 1] = lease[4]
    out[#out + 1] = fmt(lease[5])
  elseif redis.call('ZSCORE', K.tombs, rid) then
    out[#out + 1] = 'X'
    out[#out + 1] = rid
  elseif redis.call('HEXISTS', K.waiters, rid) == 0 then
    local d = cjson.decode(w[5])
    -- keep the original arrival so the queue's order survives the loss
    local score = tonumber(w[2])
    local last = num(redis.call('HGET', K.meta, 'arrival'), 0)
    if score % PRIORITY_SPAN > last then
      redis.call('HSET', K.meta, 'arrival', string.format('%.0f', score % PRIORITY_SPAN))
    end
    add_waiter(rid, host, d, w[5], score, now - w[3], now + w[4])
    changed = true
  end
end

local stream_id = stream_last_id()
local wake = nil
if changed or redis.call('HGET', K.meta, 'rescan') then wake = scan(now) end
local live = redis.call('ZCOUNT', K.hosts, fmt(now), '+inf')
local reply = {epoch, fmt(pause_left(now)), stream_id, fmt(wake), live}
for _, v in ipairs(out) do reply[#reply + 1] = v end
return reply
