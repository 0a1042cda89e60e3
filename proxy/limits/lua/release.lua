-- release.lua: give a request's permits back, settle its tokens, hand off to waiters.
--
-- KEYS: the pool's keys (see lib.lua).
-- ARGV: host, request id, settle JSON ([[bucket, amount, capacity, rate_per_s]...] or ''),
--       tombstone lifetime (ms), refund ('1': the host never used this grant, e.g. the
--       admit's answer was lost; give its charges back too), tokens really used ('' unknown:
--       corrects the flow's fair-share counter).
-- Also forgets a request still queued (a waiter whose host gave up on it), so one call cleans
-- up whatever state a request left.
-- Replies: {'OK', wake_ms} (wake_ms >= 0: rescan then for bucket waiters), {'D'} if done before.
-- Invariant: runs at most once per request id (the tombstone), so a retried call never gives
-- permits back twice nor settles twice; the tombstone also stops a heartbeat already on the
-- wire from re-registering the lease.

local host, rid, settle, tomb_ms, refund = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local used = tonumber(ARGV[6] or '')
local now = clock()
if redis.call('ZADD', K.tombs, 'NX', fmt(now + tomb_ms), rid) == 0 then return {'D'} end

local lease = redis.call('HGET', K.leases, rid)
local dropped_waiter = false
if lease then
  lease = cjson.decode(lease)
  drop_lease(rid, lease, now, refund ~= '1')
  if used then settle_fair(lease[7], used) end
  if refund == '1' and lease[6] then
    for _, c in ipairs(lease[6]) do charge({c[1], -c[2], c[3], c[4]}, now) end
  end
else
  local w = redis.call('HGET', K.waiters, rid)
  if w then
    drop_waiter(rid, cjson.decode(w))
    dropped_waiter = true
  end
end
if settle ~= '' then
  for _, c in ipairs(cjson.decode(settle)) do charge(c, now) end
end
local wake = nil
if dropped_waiter or redis.call('ZCARD', K.queue) > 0 then wake = scan(now) end
return {'OK', fmt(wake)}
