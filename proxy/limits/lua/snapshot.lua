-- snapshot.lua: a consistent read of the whole pool, for status pages and dispatchers.
--
-- KEYS: the pool's keys (see lib.lua).  ARGV: none.  Writes nothing.
-- Replies: {now_ms, queue_depth, oldest_wait_ms, live_hosts, pause_ms,
--           inflight (flat pairs), queued (flat pairs), oldest wait per resource (flat pairs),
--           buckets (flat pairs of "level updated_ms"), config (flat pairs),
--           fair-share counters (flat pairs, see lib.lua)}
-- In-flight counts leave out the leases of hosts past their deadline (not yet reaped), so a
-- reader sees what the next heartbeat will leave.

local now = clock()
local inflight_map = {}
local flat = redis.call('HGETALL', K.inflight)
for i = 1, #flat, 2 do inflight_map[flat[i]] = tonumber(flat[i + 1]) end
if redis.call('ZCOUNT', K.hosts, '-inf', fmt(now)) > 0 then
  local dead = {}
  for _, h in ipairs(redis.call('ZRANGEBYSCORE', K.hosts, '-inf', fmt(now))) do
    dead[h] = true
  end
  local leases = redis.call('HGETALL', K.leases)
  for i = 1, #leases, 2 do
    local lease = cjson.decode(leases[i + 1])
    if dead[lease[1]] then
      for _, r in ipairs(lease[3]) do inflight_map[r] = (inflight_map[r] or 1) - 1 end
    end
  end
end
local inflight_out = {}
for r, n in pairs(inflight_map) do
  inflight_out[#inflight_out + 1] = r
  inflight_out[#inflight_out + 1] = tostring(n)
end

local oldest, oldest_any = {}, nil
local waiters = redis.call('HGETALL', K.waiters)
for i = 1, #waiters, 2 do
  local w = cjson.decode(waiters[i + 1])
  if oldest_any == nil or w.t < oldest_any then oldest_any = w.t end
  for _, r in ipairs(w.u) do
    if oldest[r] == nil or w.t < oldest[r] then oldest[r] = w.t end
  end
end
local oldest_out = {}
for r, t in pairs(oldest) do
  oldest_out[#oldest_out + 1] = r
  oldest_out[#oldest_out + 1] = fmt(now - t)
end
local oldest_wait = 0
if oldest_any then oldest_wait = now - oldest_any end

return {
  fmt(now), redis.call('ZCARD', K.queue), fmt(oldest_wait),
  redis.call('ZCOUNT', K.hosts, fmt(now), '+inf'), fmt(pause_left(now)),
  inflight_out, redis.call('HGETALL', K.queued), oldest_out,
  redis.call('HGETALL', K.buckets), redis.call('HGETALL', K.config),
  redis.call('HGETALL', K.fair),
}
