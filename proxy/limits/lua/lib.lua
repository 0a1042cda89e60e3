-- lib.lua: helpers shared by every llm-throttle script (prepended to each one at load time).
--
-- Key layout. Every key of a pool carries the same hash tag ({llmthrottle}), so each script
-- declares all of them, runs atomically, and works on one Redis Cluster shard:
--   KEYS[1]  meta      hash    epoch, pause_until (ms), wake_at (ms), rescan, arrival (us),
--                              live (set once any live cap exists)
--   KEYS[2]  inflight  hash    resource -> permits held
--   KEYS[3]  leases    hash    request id -> JSON [host, granted_ms, resources, option, queued_ms,
--                              charges taken]
--   KEYS[4]  hosts     zset    host -> lease deadline (ms); renewed by the host's heartbeat
--   KEYS[5]  hostn     hash    host -> how many leases it holds
--   KEYS[6]  tombs     zset    request id -> expiry (ms): released, never to be re-registered
--   KEYS[7]  queue     zset    request id -> priority * PRIORITY_SPAN + arrival (us): depth,
--                              arrival order (kept across data loss by register.lua)
--   KEYS[8]  waiters   hash    request id -> JSON {h, t, x, u, g, m, d} (host, enqueued ms,
--                              deadline ms, resources it touches, its unit, its fq member,
--                              demand)
--   KEYS[9]  queued    hash    resource -> waiters that could need it
--   KEYS[10] blocked   hash    resource -> lowest priority class with a waiter lacking it
--   KEYS[11] buckets   hash    bucket -> "level updated_ms"
--   KEYS[12] grants    stream  hand-offs to queued waiters: h host, r request id, o option, q ms
--   KEYS[13] hold      hash    resource -> average permit hold time (ms), for retry-after
--   KEYS[14] config    hash    caps and bucket specs, for readers that run no proxy; and
--                              l:<resource> -> a live cap (see cap_of)
--   KEYS[15] units     hash    unit -> waiters in it. A unit is "priority US flow US needs"
--                              (US = \31; needs: every resource and bucket, comma-joined):
--                              its waiters need the same things, so only its head matters
--   KEYS[16] fq        zset    every waiter, score 0, member "unit RS score RS request id"
--                              (RS = \30, score zero-padded): a unit's head is one
--                              ZRANGEBYLEX ... LIMIT 0 1, O(log n) at any queue length
--   KEYS[17] fair      hash    the fair-share counters (proxy/limits/fairness.py):
--                              f<p>US<flow> counter, n<p>US<flow> waiting, s<p>US<flow> tokens
--                              served, c<p> class counter, k<p> class waiting, v<p> virtual
--                              time of class p, V virtual time between classes
--
-- Invariant kept by every script: inflight[r] is the number of leases listing r. Counts only
-- change together with the lease that explains them, inside one script.
--
-- A demand (JSON from the host) is {p: priority, r: [resources], o: [[option resources]...],
-- c: [[bucket, amount, capacity, rate_per_s]...], k: {resource: cap}, f: flow, w: flow weight,
-- cw: class weight, m: fairness ('t' tokens, 'r' requests, 'f' fifo), n: cost (tokens)}: caps,
-- bucket specs and weights travel with the demand, so a queued waiter carries everything a
-- later hand-off must check.

local K = {
  meta = KEYS[1], inflight = KEYS[2], leases = KEYS[3], hosts = KEYS[4], hostn = KEYS[5],
  tombs = KEYS[6], queue = KEYS[7], waiters = KEYS[8], queued = KEYS[9], blocked = KEYS[10],
  buckets = KEYS[11], grants = KEYS[12], hold = KEYS[13], config = KEYS[14],
  units = KEYS[15], fq = KEYS[16], fair = KEYS[17],
}
local US, RS = '\31', '\30'

local PRIORITY_SPAN = 4e15  -- above any arrival time in us until the year 2096
local HOLD_DEFAULT_MS = 1000
local HOLD_ALPHA = 0.2
local STREAM_MAXLEN = 10000
-- a waiter past its deadline is its host's to cancel; one whose host never does is dropped
local EXPIRED_WAITER_GRACE_MS = 5000

local NOW_US = 0
-- the fair hash is pruned past this many fields (see charge_fair)
local FAIR_FIELDS_MAX = 12288

-- Redis TIME is the only clock: hosts' clocks never enter a decision.
local function clock()
  local t = redis.call('TIME')
  NOW_US = tonumber(t[1]) * 1000000 + tonumber(t[2])
  return NOW_US / 1000
end

local function num(value, default)
  if value then return tonumber(value) end
  return default
end

-- -- in-flight counts (cached for the script's run) -------------------------------------------

local inflight_cache = {}

local function inflight(r)
  local v = inflight_cache[r]
  if v == nil then
    v = num(redis.call('HGET', K.inflight, r), 0)
    inflight_cache[r] = v
  end
  return v
end

-- One HMGET for several resources' counts (a script about to read them all).
local function prefetch_inflight(resources)
  if #resources < 2 then return end
  local values = redis.call('HMGET', K.inflight, unpack(resources))
  for i, r in ipairs(resources) do inflight_cache[r] = num(values[i], 0) end
end

local function add_inflight(r, delta)
  local v = redis.call('HINCRBY', K.inflight, r, delta)
  if v <= 0 then
    redis.call('HDEL', K.inflight, r)
    v = 0
  end
  inflight_cache[r] = v
end

-- -- token buckets: the arithmetic of proxy/limits/bucket.py, in ms ---------------------------

local bucket_cache = {}

local function bucket(name, capacity, rate_ms, now)
  local b = bucket_cache[name]
  if b == nil then
    local raw = redis.call('HGET', K.buckets, name)
    if raw then
      local level, updated = string.match(raw, '^(%S+) (%S+)$')
      b = {tonumber(level), tonumber(updated)}
    else
      b = {capacity, now}
    end
    bucket_cache[name] = b
  end
  if now > b[2] then
    b[1] = math.min(capacity, b[1] + (now - b[2]) * rate_ms)
    b[2] = now
  end
  return b
end

local function bucket_wait(b, amount, capacity, rate_ms)
  local needed = math.min(amount, capacity)
  if b[1] >= needed then return 0 end
  if rate_ms <= 0 then return math.huge end
  return (needed - b[1]) / rate_ms
end

local function charge(c, now)
  local capacity, rate_ms = c[3], c[4] / 1000
  local b = bucket(c[1], capacity, rate_ms, now)
  b[1] = math.min(capacity, b[1] - c[2])
  redis.call('HSET', K.buckets, c[1], string.format('%.17g %.17g', b[1], b[2]))
end

local function charges_wait(d, now)
  local wait = 0
  for _, c in ipairs(d.c) do
    local rate_ms = c[4] / 1000
    local w = bucket_wait(bucket(c[1], c[3], rate_ms, now), c[2], c[3], rate_ms)
    if w > wait then wait = w end
  end
  return wait
end

-- -- the one atomic step (mirrors MemoryStore._try) --------------------------------------------

local function touched(d)
  local seen, out = {}, {}
  local function add(r)
    if not seen[r] then
      seen[r] = true
      out[#out + 1] = r
    end
  end
  for _, r in ipairs(d.r) do add(r) end
  for _, opt in ipairs(d.o) do
    for _, r in ipairs(opt) do add(r) end
  end
  return out
end

-- The cap of ``r`` for demand ``d``: the live cap every host obeys (config hash field
-- ``l:<r>``, written by setcap.lua for adaptive caps and reloads; -1: no cap) when one is set,
-- else the cap the demand carries. meta ``live`` says whether any is set: one read per script
-- while none is.
local live_any = nil
local live_cache = {}

local function cap_of(d, r)
  if live_any == nil then live_any = redis.call('HGET', K.meta, 'live') ~= false end
  if not live_any then return d.k[r] end
  local v = live_cache[r]
  if v == nil then
    v = num(redis.call('HGET', K.config, 'l:' .. r), false)
    live_cache[r] = v
  end
  if v == false then return d.k[r] end
  if v < 0 then return nil end
  return v
end

-- Which option (index) could be admitted now, or nil with what is missing and the longest
-- bucket wait (ms). ``is_blocked(name)`` says what earlier waiters already lack.
local function try(d, is_blocked, now)
  local missing = {}
  local function lacks(r)
    if is_blocked(r) then return true end
    local cap = cap_of(d, r)
    return cap ~= nil and inflight(r) >= cap
  end
  for _, r in ipairs(d.r) do
    if lacks(r) then missing[#missing + 1] = r end
  end
  local best, best_ratio, best_count = nil, math.huge, math.huge
  local option_missing = {}
  for i, opt in ipairs(d.o) do
    local ok = true
    for _, r in ipairs(opt) do
      if lacks(r) then
        ok = false
        option_missing[#option_missing + 1] = r
      end
    end
    if ok then
      local ratio, count = 0, 0
      local first = opt[1]
      if first then
        count = inflight(first)
        local cap = cap_of(d, first)
        if cap and cap > 0 then ratio = count / cap end
      end
      if ratio < best_ratio or (ratio == best_ratio and count < best_count) then
        best, best_ratio, best_count = i, ratio, count
      end
    end
  end
  if best == nil then
    for _, r in ipairs(option_missing) do missing[#missing + 1] = r end
  end
  local wait = 0
  for _, c in ipairs(d.c) do
    if is_blocked(c[1]) then
      missing[#missing + 1] = c[1]
    else
      local rate_ms = c[4] / 1000
      local w = bucket_wait(bucket(c[1], c[3], rate_ms, now), c[2], c[3], rate_ms)
      if w > 0 then
        missing[#missing + 1] = c[1]
        if w > wait then wait = w end
      end
    end
  end
  if #missing > 0 or best == nil then return nil, missing, wait end
  return best, missing, 0
end

-- Take every permit and charge of option ``opt``: the lease and its counts appear together.
local function take(rid, host, d, opt, now, queued_ms)
  local held = {}
  for _, r in ipairs(d.r) do held[#held + 1] = r end
  for _, r in ipairs(d.o[opt]) do held[#held + 1] = r end
  for _, r in ipairs(held) do add_inflight(r, 1) end
  for _, c in ipairs(d.c) do charge(c, now) end
  -- [7]: what the release needs to correct the fair-share counters with the real usage
  local fair = {d.p, d.f or '', d.w or 1, d.cw or 1, d.n or 1, d.m or 't'}
  redis.call('HSET', K.leases, rid, cjson.encode({host, now, held, opt, queued_ms, d.c, fair}))
  redis.call('HINCRBY', K.hostn, host, 1)
end

-- Give a lease's permits back (``lease`` decoded); ``observe`` feeds the hold-time average.
local function drop_lease(rid, lease, now, observe)
  local held_for = now - lease[2]
  local resources = lease[3]
  for _, r in ipairs(resources) do add_inflight(r, -1) end
  if observe and #resources > 0 then  -- the hold-time averages: one read, one write
    local prev = redis.call('HMGET', K.hold, unpack(resources))
    local fields = {}
    for i, r in ipairs(resources) do
      local avg = held_for
      local p = num(prev[i], nil)
      if p then avg = p + HOLD_ALPHA * (held_for - p) end
      fields[#fields + 1] = r
      fields[#fields + 1] = string.format('%.3f', avg)
    end
    redis.call('HSET', K.hold, unpack(fields))
  end
  redis.call('HDEL', K.leases, rid)
  if redis.call('HINCRBY', K.hostn, lease[1], -1) <= 0 then
    redis.call('HDEL', K.hostn, lease[1])
  end
end

-- -- the queue -------------------------------------------------------------------------------

local function next_score(priority)
  local us = NOW_US
  local last = num(redis.call('HGET', K.meta, 'arrival'), 0)
  if us <= last then us = last + 1 end
  redis.call('HSET', K.meta, 'arrival', string.format('%.0f', us))
  return priority * PRIORITY_SPAN + us
end

-- -- fair share (mirrors proxy/limits/fairness.py) --------------------------------------------

local function fifo(d) return d.m == 'f' end

-- attained order: flows are never lifted (their counter is what they were served)
local function attained(d) return d.m == 'a' end

local function cost_of(d)
  if d.m == 't' or d.m == 'a' then return d.n or 1 end
  return 1
end

local function flow_of(d)
  if fifo(d) then return '' end
  return d.f or ''
end

local function needs_of(d)
  local out = touched(d)
  for _, c in ipairs(d.c) do out[#out + 1] = c[1] end
  return table.concat(out, ',')
end

local function unit_of(d)
  return tostring(d.p) .. US .. flow_of(d) .. US .. needs_of(d)
end

local function fnum(field, default)
  return num(redis.call('HGET', K.fair, field), default)
end

-- A flow at or behind its class's virtual time would be lifted anyway: nothing to remember
-- (in attained order the counter is the flow's history: kept, within FAIR_FIELDS_MAX).
local function forget_if_idle(d, p, flow)
  if attained(d) then return end
  local fkey = 'f' .. p .. US .. flow
  if fnum(fkey, 0) <= fnum('v' .. p, 0) then redis.call('HDEL', K.fair, fkey) end
end

-- A waiter comes in; a flow (or class) back from idle is lifted: no banked credit.
local function join(d)
  local p, flow = d.p, flow_of(d)
  if redis.call('HINCRBY', K.fair, 'n' .. p .. US .. flow, 1) == 1 and not attained(d) then
    local fkey = 'f' .. p .. US .. flow
    local lifted = math.max(fnum(fkey, 0), fnum('v' .. p, 0))
    redis.call('HSET', K.fair, fkey, string.format('%.17g', lifted))
  end
  if redis.call('HINCRBY', K.fair, 'k' .. p, 1) == 1 then
    local lifted = math.max(fnum('c' .. p, 0), fnum('V', 0))
    redis.call('HSET', K.fair, 'c' .. p, string.format('%.17g', lifted))
  end
end

local function leave(d)
  local p, flow = d.p, flow_of(d)
  local nkey = 'n' .. p .. US .. flow
  if redis.call('HINCRBY', K.fair, nkey, -1) <= 0 then
    redis.call('HDEL', K.fair, nkey)
    forget_if_idle(d, p, flow)
  end
  if redis.call('HINCRBY', K.fair, 'k' .. p, -1) <= 0 then redis.call('HDEL', K.fair, 'k' .. p) end
end

-- A grant charges its flow and class (``queued``: served from the queue, which moves the
-- virtual times). Returns nothing; one HMGET and one HSET.
local function charge_fair(d, queued)
  if fifo(d) then return end
  local p, flow = d.p, flow_of(d)
  local fkey, skey, ckey = 'f' .. p .. US .. flow, 's' .. p .. US .. flow, 'c' .. p
  local v = redis.call('HMGET', K.fair, fkey, 'v' .. p, skey, ckey, 'n' .. p .. US .. flow,
    'k' .. p, 'V')
  local counter = num(v[1], nil) or num(v[2], 0)
  local class_counter = num(v[4], 0)
  -- Served at once with nobody of its flow (class) waiting: back from idle, it starts at
  -- virtual time, as join() would lift it; charged from a counter lagging virtual time, the
  -- lift at its first queued waiter would wipe these grants (free slots: banked credit).
  -- (A queued grant's waiter has left already: its flow was lifted when it joined.)
  if not queued then
    if v[5] == false and not attained(d) then counter = math.max(counter, num(v[2], 0)) end
    if v[6] == false then class_counter = math.max(class_counter, num(v[7], 0)) end
  end
  local cost = cost_of(d)
  local fields = {}
  if queued then
    fields = {'v' .. p, string.format('%.17g', counter), 'V', string.format('%.17g', class_counter)}
  end
  local idle = not queued and v[5] == false and not attained(d)
    and counter + cost / (d.w or 1) <= num(v[2], 0)
  if not idle then
    fields[#fields + 1] = fkey
    fields[#fields + 1] = string.format('%.17g', counter + cost / (d.w or 1))
  end
  fields[#fields + 1] = skey
  fields[#fields + 1] = string.format('%.17g', num(v[3], 0) + cost)
  fields[#fields + 1] = ckey
  fields[#fields + 1] = string.format('%.17g', class_counter + cost / (d.cw or 1))
  redis.call('HSET', K.fair, unpack(fields))
  -- bounded: past FAIR_FIELDS_MAX (many distinct flows), forget tokens served and the
  -- counters of flows with nobody waiting (once per that many new flows: O(1) amortized)
  if redis.call('HLEN', K.fair) > FAIR_FIELDS_MAX then
    local names = redis.call('HKEYS', K.fair)
    local waiting = {}
    for _, name in ipairs(names) do
      if string.sub(name, 1, 1) == 'n' then waiting[string.sub(name, 2)] = true end
    end
    for _, name in ipairs(names) do
      local kind = string.sub(name, 1, 1)
      if kind == 's' or (kind == 'f' and not waiting[string.sub(name, 2)]) then
        redis.call('HDEL', K.fair, name)
      end
    end
  end
end

-- The release knows the real usage: move the counters by (used - reserved).
local function settle_fair(fair, used)
  if not fair or (fair[6] ~= 't' and fair[6] ~= 'a') then return end
  local delta = used - fair[5]
  if delta == 0 then return end
  local p, flow = fair[1], fair[2]
  local fkey = 'f' .. p .. US .. flow
  if redis.call('HEXISTS', K.fair, fkey) == 1 then
    redis.call('HINCRBYFLOAT', K.fair, fkey, string.format('%.17g', delta / fair[3]))
  end
  redis.call('HINCRBYFLOAT', K.fair, 'c' .. p, string.format('%.17g', delta / fair[4]))
  redis.call('HINCRBYFLOAT', K.fair, 's' .. p .. US .. flow, string.format('%.17g', delta))
end

-- Queue a waiter; ``raw`` is the demand's JSON exactly as the host sent it.
local function add_waiter(rid, host, d, raw, score, enqueued, deadline)
  local u = touched(d)
  local g = unit_of(d)
  local m = g .. RS .. string.format('%020.0f', score) .. RS .. rid
  local head = cjson.encode({h = host, t = enqueued, x = deadline, u = u, g = g, m = m})
  redis.call('HSET', K.waiters, rid, string.sub(head, 1, -2) .. ',"d":' .. raw .. '}')
  redis.call('ZADD', K.queue, string.format('%.0f', score), rid)
  redis.call('ZADD', K.fq, 0, m)
  redis.call('HINCRBY', K.units, g, 1)
  join(d)
  for _, r in ipairs(u) do redis.call('HINCRBY', K.queued, r, 1) end
end

local function drop_waiter(rid, w)
  redis.call('ZREM', K.queue, rid)
  redis.call('HDEL', K.waiters, rid)
  if w.m then
    if redis.call('ZREM', K.fq, w.m) == 1 then
      if redis.call('HINCRBY', K.units, w.g, -1) <= 0 then redis.call('HDEL', K.units, w.g) end
      leave(w.d)
    end
  end
  for _, r in ipairs(w.u) do
    if redis.call('HINCRBY', K.queued, r, -1) <= 0 then redis.call('HDEL', K.queued, r) end
  end
end

local function pause_left(now)
  local left = num(redis.call('HGET', K.meta, 'pause_until'), 0) - now
  if left > 0 then return left end
  return 0
end

local function stream_last_id()
  local last = redis.call('XREVRANGE', K.grants, '+', '-', 'COUNT', 1)
  if #last == 0 then return '0-0' end
  return last[1][1]
end

-- The head of unit ``g``: its fq member, its score and its request id (or nil: empty).
local function unit_head(g)
  local first = redis.call('ZRANGEBYLEX', K.fq, '[' .. g .. RS, '(' .. g .. '\31', 'LIMIT', 0, 1)
  if #first == 0 then return nil end
  local m = first[1]
  local score, rid = string.match(string.sub(m, #g + 2), '^(%d+)\30(.*)$')
  return m, tonumber(score), rid
end

-- Serve unit heads in fair order (fairness.py: the class with the smallest counter, then the
-- flow with the smallest counter, then the oldest head; fifo: priority, then arrival;
-- attained: starved heads first). Each
-- head not served blocks what it lacks for every unit after it, and its unit sits the round
-- out. Cost: O(units + grants), not O(waiters). Mirrors FairQueue.serve + MemoryStore._scan.
-- Returns ms until a bucket-blocked waiter could be served (or nil). Skipped during a
-- recovery pause (marked for later).
local function scan(now)
  if pause_left(now) > 0 then
    redis.call('HSET', K.meta, 'rescan', '1')
    return nil
  end
  redis.call('HDEL', K.meta, 'rescan')
  local flat = redis.call('HGETALL', K.units)
  local by_class = {}
  for i = 1, #flat, 2 do
    local g = flat[i]
    local p, flow = string.match(g, '^(%d+)\31([^\31]*)\31')
    p = tonumber(p)
    if by_class[p] == nil then by_class[p] = {} end
    local list = by_class[p]
    list[#list + 1] = {g = g, p = p, flow = flow}
  end
  local blocked, first_priority = {}, {}
  local function is_blocked(name) return blocked[name] == true end
  local next_wake = nil
  local counters, class_counters = {}, {}
  local is_fifo = nil
  -- one HGET per counter per scan (a grant below forgets the counters it changes)
  local function cached(cache, key, field)
    local c = cache[key]
    if c == nil then
      c = fnum(field, 0)
      cache[key] = c
    end
    return c
  end
  local function flow_counter(p, flow)
    local key = p .. US .. flow
    return cached(counters, key, 'f' .. key)
  end
  local function class_counter(p) return cached(class_counters, p, 'c' .. p) end
  -- load a unit's head (and its waiter); false when the unit is empty
  local function load(unit)
    while true do
      local m, score, rid = unit_head(unit.g)
      if m == nil then
        redis.call('HDEL', K.units, unit.g)
        return false
      end
      local raw = redis.call('HGET', K.waiters, rid)
      if not raw then
        redis.call('ZREM', K.fq, m)  -- its waiter went without its fq entry: drop the entry
      else
        local w = cjson.decode(raw)
        if w.x + EXPIRED_WAITER_GRACE_MS < now then
          drop_waiter(rid, w)
        else
          unit.rid, unit.w, unit.score = rid, w, score
          if is_fifo == nil then is_fifo = fifo(w.d) end
          return true
        end
      end
    end
  end
  while true do
    local best_p, best_pkey = nil, nil
    for p, list in pairs(by_class) do
      if #list > 0 then
        local key
        if is_fifo then key = p else key = class_counter(p) end
        if best_p == nil or key < best_pkey or (key == best_pkey and p < best_p) then
          best_p, best_pkey = p, key
        end
      end
    end
    if best_p == nil then break end
    local list = by_class[best_p]
    local best_i, best_r, best_c, best_s = nil, nil, nil, nil
    local i = 1
    while i <= #list do
      local unit = list[i]
      if unit.w == nil and not load(unit) then
        table.remove(list, i)
      else
        -- (rank, counter, arrival): a head starved in attained order (queued ``sv`` ms or
        -- longer) goes first, oldest first; then the smallest counter
        local rank, c = 2, 0
        local d = unit.w.d
        if attained(d) and d.sv and now - unit.w.t >= d.sv then
          rank = 1
        elseif not is_fifo then
          c = flow_counter(unit.p, unit.flow)
        end
        if best_i == nil or rank < best_r or (rank == best_r and (c < best_c
            or (c == best_c and unit.score < best_s))) then
          best_i, best_r, best_c, best_s = i, rank, c, unit.score
        end
        i = i + 1
      end
    end
    if best_i ~= nil then
      local unit = list[best_i]
      local w, rid = unit.w, unit.rid
      local opt, missing, wait = try(w.d, is_blocked, now)
      if opt then
        drop_waiter(rid, w)
        local queued_ms = now - w.t
        take(rid, w.h, w.d, opt, now, queued_ms)
        charge_fair(w.d, true)
        if not is_fifo then
          local key = unit.p .. US .. unit.flow
          counters[key] = nil
          class_counters[unit.p] = nil
        end
        redis.call('XADD', K.grants, 'MAXLEN', '~', STREAM_MAXLEN, '*',
          'h', w.h, 'r', rid, 'o', opt, 'q', string.format('%.3f', queued_ms))
        unit.w, unit.rid, unit.score = nil, nil, nil
      else
        if wait > 0 and (next_wake == nil or wait < next_wake) then next_wake = wait end
        for _, name in ipairs(missing) do
          if not blocked[name] then
            blocked[name] = true
            -- fifo: later arrivals of this priority or lower wait behind it; fair: all do
            if is_fifo then first_priority[name] = w.d.p else first_priority[name] = 0 end
          end
        end
        table.remove(list, best_i)  -- holds its turn: nobody behind it in the unit passes
      end
    end
  end
  redis.call('DEL', K.blocked)
  local fields = {}
  for name, priority in pairs(first_priority) do
    fields[#fields + 1] = name
    fields[#fields + 1] = priority
  end
  if #fields > 0 then redis.call('HSET', K.blocked, unpack(fields)) end
  if next_wake then
    redis.call('HSET', K.meta, 'wake_at', string.format('%.3f', now + next_wake))
  else
    redis.call('HDEL', K.meta, 'wake_at')
  end
  return next_wake
end

-- Expected wait before ``d`` could be served: queue ahead x hold time / cap, or the bucket.
-- ``observed_only``: count only resources whose hold time was measured (no guesses).
local function estimate(d, now, max_wait, observed_only)
  local est = charges_wait(d, now)
  for _, r in ipairs(touched(d)) do
    local cap = cap_of(d, r)
    if cap and cap > 0 then
      local hold = num(redis.call('HGET', K.hold, r), nil)
      if hold == nil and not observed_only then hold = HOLD_DEFAULT_MS end
      if hold ~= nil then
        local ahead = num(redis.call('HGET', K.queued, r), 0) + 1
        local e = hold * ahead / cap
        if e > est then est = e end
      end
    end
  end
  return math.min(math.max(est, 1), max_wait)
end

-- The data-loss marker: missing means this Redis lost (or never had) the pool's state. Whoever
-- finds it missing creates a new epoch and pauses admissions so live hosts can re-register.
local function current_epoch(now, host, pause_ms)
  local epoch = redis.call('HGET', K.meta, 'epoch')
  if epoch then return epoch end
  epoch = host .. '@' .. string.format('%.0f', NOW_US)
  redis.call('HSET', K.meta, 'epoch', epoch)
  if pause_ms > 0 then
    redis.call('HSET', K.meta, 'pause_until', string.format('%.3f', now + pause_ms))
  end
  return epoch
end

-- Hosts whose lease deadline passed are gone: their permits and waiters are taken back.
local function reap(now)
  local dead = redis.call('ZRANGEBYSCORE', K.hosts, '-inf', string.format('%.3f', now))
  if #dead == 0 then return false end
  local gone = {}
  for _, h in ipairs(dead) do
    gone[h] = true
    redis.call('ZREM', K.hosts, h)
  end
  local leases = redis.call('HGETALL', K.leases)
  for i = 1, #leases, 2 do
    local lease = cjson.decode(leases[i + 1])
    if gone[lease[1]] then drop_lease(leases[i], lease, now, false) end
  end
  local waiters = redis.call('HGETALL', K.waiters)
  for i = 1, #waiters, 2 do
    local w = cjson.decode(waiters[i + 1])
    if gone[w.h] then drop_waiter(waiters[i], w) end
  end
  for _, h in ipairs(dead) do redis.call('HDEL', K.hostn, h) end
  return true
end

local function fmt(x)
  if x == nil then return '-1' end
  return string.format('%.3f', x)
end
