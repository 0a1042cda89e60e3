-- scan.lua: serve the queue now (a bucket has refilled, or a recovery pause is over).
--
-- KEYS: the pool's keys (see lib.lua).  ARGV: none.
-- Replies: {wake_ms} (>= 0: the next time a bucket-blocked waiter could be served).
-- Invariant: the same hand-off as after a release; harmless when nothing is due.

local now = clock()
if redis.call('ZCARD', K.queue) == 0 then
  redis.call('HDEL', K.meta, 'wake_at')
  return {'-1'}
end
return {fmt(scan(now))}
