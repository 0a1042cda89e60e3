-- prune.lua: drop the leases the store keeps for this host that the host does not know of.
--
-- KEYS: the pool's keys (see lib.lua).
-- ARGV: host, known JSON [request id, ...] (every request the host holds, is admitting or
--       waiting for, or has a release or cancel of on the wire), minimum age (ms).
-- Replies: {dropped, wake_ms} (wake_ms >= 0: rescan then for bucket waiters).
-- Why: a failover loses the writes the old master acknowledged after its replica stopped
-- copying it. A lost release leaves a lease the host no longer holds, which the host's
-- heartbeat would renew for good. The host is the source of truth for its own leases (as in
-- register.lua): one it does not know of is in use nowhere.
-- Invariant: a lease younger than the minimum age (more than any call's deadline) is kept,
-- so a grant whose answer is still on its way to the host is never dropped; inflight[r]
-- stays the number of leases listing r.

local host, known, min_age = ARGV[1], cjson.decode(ARGV[2]), tonumber(ARGV[3])
local now = clock()
local keep = {}
for _, rid in ipairs(known) do keep[rid] = true end
local leases = redis.call('HGETALL', K.leases)
local dropped = 0
for i = 1, #leases, 2 do
  local rid = leases[i]
  if not keep[rid] then
    local lease = cjson.decode(leases[i + 1])
    if lease[1] == host and now - lease[2] >= min_age then
      drop_lease(rid, lease, now, false)
      dropped = dropped + 1
    end
  end
end
local wake = nil
if dropped > 0 then wake = scan(now) end
return {dropped, fmt(wake)}
