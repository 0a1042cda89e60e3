-- heartbeat.lua: one call per host per interval renews every lease the host holds.
--
-- KEYS: the pool's keys (see lib.lua).
-- ARGV: epoch the host knows, host, lease TTL (ms), leases the host holds, recovery pause (ms),
--       most leases the host can have in the store, but for grants to its queued waiters
--       not handed over yet (held, admitting, owed, or with a release or cancel on the wire;
--       '' from a host that does not say).
-- Replies: {status, epoch, pause_ms, live_hosts, wake_ms} where status is
--   'OK', 'E' (the store lost its data or was reset: re-register), 'S' (the store holds
--   fewer of this host's leases than the host does: re-register the missing ones), or 'L'
--   (the store holds more than the host can have: leases a failover kept after their
--   releases were lost; prune them, prune.lua).
-- Also: takes back the leases and waiters of hosts whose deadline passed (a dead host's
-- permits return within TTL + one interval), drops expired tombstones, serves the queue when
-- a bucket refill or the end of a pause is due and no host did it yet.
-- Invariant: leases are renewed per host (one deadline for all of them), so a heartbeat's
-- cost does not grow with the number of leases.

local epoch_arg, host, ttl, held, pause_ms =
  ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local most = tonumber(ARGV[6] or '')
local now = clock()
local epoch = current_epoch(now, host, pause_ms)
redis.call('ZADD', K.hosts, fmt(now + ttl), host)
local reaped = reap(now)
redis.call('ZREMRANGEBYSCORE', K.tombs, '-inf', fmt(now))

local status = 'OK'
if epoch ~= epoch_arg then
  status = 'E'
else
  local counted = num(redis.call('HGET', K.hostn, host), 0)
  if counted < held then
    status = 'S'
  elseif most and counted > most then
    status = 'L'
  end
end

local wake = nil
local due = num(redis.call('HGET', K.meta, 'wake_at'), math.huge) <= now
if reaped or due or redis.call('HGET', K.meta, 'rescan') then wake = scan(now) end
local live = redis.call('ZCOUNT', K.hosts, fmt(now), '+inf')
return {status, epoch, fmt(pause_left(now)), live, fmt(wake)}
