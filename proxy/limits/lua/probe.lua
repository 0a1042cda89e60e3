-- probe.lua: which commands the other scripts call does this user lack? (start-up ACL check)
--
-- KEYS: the pool's keys (see lib.lua); ARGV: a probe key name under the pool's hash tag.
-- Replies: the names of the commands refused with NOPERM (empty: the ACL is enough).
-- Invariant: touches only the probe keys, and deletes them.

local h, z, x = ARGV[1], ARGV[1] .. ':z', ARGV[1] .. ':x'
local calls = {
  {'TIME'}, {'EXISTS', h}, {'HGET', h, 'f'}, {'HMGET', h, 'f'}, {'HSET', h, 'f', '1'},
  {'HINCRBY', h, 'n', '1'}, {'HINCRBYFLOAT', h, 'v', '1'}, {'HEXISTS', h, 'f'},
  {'HGETALL', h}, {'HKEYS', h}, {'HLEN', h}, {'HDEL', h, 'f'},
  {'ZADD', z, '1', 'm'}, {'ZCARD', z}, {'ZSCORE', z, 'm'}, {'ZCOUNT', z, '-inf', '+inf'},
  {'ZRANGE', z, '0', '-1'}, {'ZRANGEBYSCORE', z, '-inf', '+inf'}, {'ZRANGEBYLEX', z, '-', '+'},
  {'ZREMRANGEBYSCORE', z, '-inf', '-inf'}, {'ZREM', z, 'm'},
  {'XADD', x, 'MAXLEN', '~', '10', '*', 'h', ''}, {'XREVRANGE', x, '+', '-', 'COUNT', '1'},
  {'DEL', h, z, x},
}
local missing = {}
for _, c in ipairs(calls) do
  local r = redis.pcall(unpack(c))
  -- a refused command reads 'NOPERM ...' or (7.0) 'ERR The user executing the script can't
  -- run this command or subcommand'
  if type(r) == 'table' and r.err and (string.find(r.err, 'NOPERM', 1, true)
      or string.find(r.err, "can't run this command", 1, true)) then
    missing[#missing + 1] = string.lower(c[1])
  end
end
redis.pcall('DEL', h, z, x)
return missing
