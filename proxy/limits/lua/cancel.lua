-- cancel.lua: a waiter's max wait is over; take it out of the queue, unless it was granted
-- at the same instant (then the grant stands and the host keeps it).
--
-- KEYS: the pool's keys (see lib.lua).
-- ARGV: host, request id, max wait (ms), tombstone lifetime (ms).
-- Replies: {'G', option, queued_ms} granted after all; {'C', retry_ms} removed;
--          {'X', retry_ms} not queued (lost with the store's data, or reaped).
-- Invariant: after this call the request is either leased (and its host knows it) or gone
-- for good (a tombstone stops a late re-registration from queueing it again).

local host, rid, max_wait, tomb_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = clock()
local lease = redis.call('HGET', K.leases, rid)
if lease then
  lease = cjson.decode(lease)
  return {'G', lease[4], fmt(lease[5])}
end
redis.call('ZADD', K.tombs, fmt(now + tomb_ms), rid)
local raw = redis.call('HGET', K.waiters, rid)
if not raw then return {'X', '1'} end
local w = cjson.decode(raw)
drop_waiter(rid, w)
scan(now)
return {'C', fmt(estimate(w.d, now, max_wait))}
