-- leave.lua: a host shuts down: give back every lease it holds, drop its waiters, and hand
-- the permits to the hosts still running.
--
-- KEYS: the pool's keys (see lib.lua).  ARGV: host, tombstone lifetime (ms).
-- Replies: {leases released, waiters dropped}.
-- Invariant: the same as a release of each lease (tombstoned, so nothing re-registers them).

local host, tomb_ms = ARGV[1], tonumber(ARGV[2])
local now = clock()
local released, dropped = 0, 0
local leases = redis.call('HGETALL', K.leases)
for i = 1, #leases, 2 do
  local lease = cjson.decode(leases[i + 1])
  if lease[1] == host then
    drop_lease(leases[i], lease, now, true)
    redis.call('ZADD', K.tombs, fmt(now + tomb_ms), leases[i])
    released = released + 1
  end
end
local waiters = redis.call('HGETALL', K.waiters)
for i = 1, #waiters, 2 do
  local w = cjson.decode(waiters[i + 1])
  if w.h == host then
    drop_waiter(waiters[i], w)
    redis.call('ZADD', K.tombs, fmt(now + tomb_ms), waiters[i])
    dropped = dropped + 1
  end
end
redis.call('ZREM', K.hosts, host)
redis.call('HDEL', K.hostn, host)
if redis.call('ZCARD', K.queue) > 0 or dropped > 0 then scan(now) end
return {released, dropped}
