-- setcap.lua: change one resource's live cap now, atomically with admissions, and serve the
-- waiters a raised cap lets in.
--
-- KEYS: the pool's keys (see lib.lua).  ARGV: resource, cap (-1: no cap; '': the demand's).
-- Replies: {wake_ms} (as scan.lua).
-- Invariant: only the cap changes; permits held above a lowered cap stay held until released
-- (never revoked), so in-flight counts and leases are untouched.

local now = clock()
local field = 'l:' .. ARGV[1]
if ARGV[2] == '' then
  redis.call('HDEL', K.config, field)
else
  redis.call('HSET', K.config, field, ARGV[2])
  redis.call('HSET', K.meta, 'live', '1')
end
if redis.call('ZCARD', K.queue) == 0 then
  return {'-1'}
end
return {fmt(scan(now))}
