-- decide.lua: check and consume the limits of one or more Authorize requests.
--
-- Why a script and not MULTI/EXEC: each request must read its counters, decide
-- whether ALL of its limits pass, and write only then. MULTI/EXEC cannot branch
-- on what it reads, and WATCH would retry under contention; a script runs
-- atomically on the server, in one round trip, with no retries.
--
-- Several pending requests are decided by one call (the batcher in
-- src/store/redis/mod.rs): each request is all-or-nothing on its own, and
-- requests are decided in order, each seeing the writes of the ones before it.
-- Every key is read once and written once per call (state.lua): a batch of
-- many decisions of one key costs one HMGET and one HSET.
-- One request's failure (a key of the wrong type, a malformed value) fails
-- that request alone: it is decided inside pcall on values read before, and
-- its writes reach the call's state only once it has passed; the writes at
-- the end cannot fail (each key's type was checked by reading it). Nothing
-- is charged for a failed request, and the others are decided as if it were
-- not there.
--
-- Token buckets are exact integer arithmetic (src/store/bucket.rs has the same
-- steps in Rust): a bucket's value is "LEVEL:TIME", its level in billionths of
-- a token below full and the instant of that level in µs; it regains RATE
-- (thousandths of a request per second = billionths of a token per µs) every
-- µs. Every number stays below 2^53, where Lua's doubles are exact integers.
--
-- KEYS: every key the batch touches, once each (state hashes, stage and
-- account bucket strings).
-- ARGV:
--   [1] the clock: empty (Redis's TIME), or µs since the epoch (clock.lua)
--   [2] number of requests
--   [3] number of rules, then four values per rule: its kind and three
--     numbers: "B" (a bucket): rate in thousandths of a request per second,
--     burst, 0; "D", "W", "M" (a quota of that period): limit, offset, plan
--     creation time in ms. (A batch's requests share a few rules: each is
--     sent and read once.)
--   then per request: cost, what to do: "T" take (check all limits, consume
--   only if all pass), "D" dry (check only: Redis Cluster asks this to name
--   the right reason of a denial), "R" refund (give `cost` back to every
--   bucket, after a take that a later step undid; quotas are never
--   refunded), each with "U" appended when the request counts usage, then
--   the number of limits, then with "U" the index (in KEYS) of the state
--   hash that counts it, then per limit three values: key
--   index, field (in the state hash; '' for a string key), rule index.
-- Returns a flat array of six values per request:
--   allowed (1/0), index of the limit described (1-based; the failing one on a
--   denial, the one with the least remaining on an allow; 0 when none),
--   its limit, remaining, milliseconds until reset, retry-after in ms (-1: none);
--   or, for a request that failed: -1, the error message, 0, 0, 0, 0.

-- @clock (clock.lua is inserted here: now_us, now_ms, today, TTL_SLACK_MS, expire_at)
-- @calendar (calendar.lua is inserted here: DAY_MS, civil, days_from_civil, ymd, period)
-- @state (state.lua is inserted here: get, apply_all, usage_writes, flush, ...)

local NANO = 1000000000

-- floor(a / b) and ceil(a / b) of non-negative integers below 2^53, exact
-- (a double quotient can be off by one near an integer).
local function idiv(a, b)
  local q = floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local function cdiv(a, b)
  local q = idiv(a, b)
  if q * b < a then q = q + 1 end
  return q
end
-- ms (rounded up) until `amount` billionths drain at `rate` per µs
local function ms_to_drain(amount, rate)
  if amount <= 0 or rate <= 0 then return 0 end
  return cdiv(cdiv(amount, rate), 1000)
end


-- A bucket's level at now_us, and the instant to store with a new level,
-- from its value ({LEVEL, TIME}; false: a full bucket).
local function bucket_level(v, k, rate)
  if not v then return 0, now_us end
  local level, at = v[1], v[2]
  if level < 0 or v[3] then error('bucket ' .. KEYS[k] .. ' holds a value that is not LEVEL:TIME') end
  if now_us > at then
    local drained = (now_us - at) * rate
    if drained >= level then level = 0 else level = level - drained end
    at = now_us
  end
  return level, at
end

-- The rules: { kind, p1, p2, p3 } each.
local rules = {}
local n_rules = tonumber(ARGV[3])
for i = 1, n_rules do
  local a = 4 + 4 * (i - 1)
  rules[i] = { ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]) }
end

-- Gives `cost` back to the request's buckets (a take undone on Redis
-- Cluster: see src/store/redis/cluster.rs). Never below an empty level.
local function refund(cost, limits)
  local writes = {}
  for i = 1, #limits do
    local l = limits[i]
    local k, f, rule = l[1], l[2], l[3]
    if rule[1] == 'B' then
      local rate = rule[2]
      local level, at = bucket_level(get(k, f), k, rate)
      level = level - cost * NANO
      if level <= 0 then
        if f == '' then
          writes[#writes + 1] = { k, f, false, now_ms }
        else
          writes[#writes + 1] = { k, f, { 0, at }, now_ms }
        end
      else
        writes[#writes + 1] = { k, f, { level, at }, now_ms + ms_to_drain(level, rate) + 1 }
      end
    end
  end
  return { 1, 0, 0, 0, 0, -1 }, writes
end

-- Decides one request; returns its six values and its writes (none when
-- denied or `dry`).
local function decide(cost, limits, usage, dry)
  local best, best_limit, best_rem, best_reset = 0, 0, 0, 0
  local writes = {}
  local quota_used = nil
  for i = 1, #limits do
    local l = limits[i]
    local k, f, rule = l[1], l[2], l[3]
    local kind = rule[1]
    if kind == 'B' then
      local rate, burst = rule[2], rule[3]
      local level, at = bucket_level(get(k, f), k, rate)
      local cap = burst * NANO
      local need = cost * NANO
      local rem = idiv(cap - level, NANO)
      if rem < 0 then rem = 0 end
      if cost > burst or level + need > cap then
        local retry = -1
        if cost <= burst then retry = ms_to_drain(level + need - cap, rate) end
        return { 0, i, burst, rem, ms_to_drain(level, rate), retry }, nil
      end
      level = level + need
      rem = idiv(cap - level, NANO)
      local reset = ms_to_drain(level, rate)
      writes[#writes + 1] = { k, f, { level, at }, now_ms + reset + 1 }
      if best == 0 or rem < best_rem then
        best, best_limit, best_rem, best_reset = i, burst, rem, reset
      end
    else
      local limit, offset, created = rule[2], rule[3], rule[4]
      local p = period(kind)
      local eff = limit
      -- the offset applies in the one period containing the plan's creation
      if created >= p[1] and created < p[2] then eff = limit - offset end
      local start = p[1] / DAY_MS
      local used = 0
      local v = get(k, f)
      if v then
        if v[3] then error('quota ' .. KEYS[k] .. ' holds a value that is not DAY:USED') end
        if v[1] == start then used = v[2] end
      end
      local reset = p[2] - now_ms
      if used + cost > eff then
        local rem = eff - used
        if rem < 0 then rem = 0 end
        return { 0, i, eff, rem, reset, reset }, nil
      end
      quota_used = used + cost
      writes[#writes + 1] = { k, f, { start, quota_used }, p[2] }
      local rem = eff - used - cost
      if best == 0 or rem < best_rem then
        best, best_limit, best_rem, best_reset = i, eff, rem, reset
      end
    end
  end

  if dry then
    return { 1, best, best_limit, best_rem, best_reset, -1 }, nil
  end
  if usage then usage_writes(writes, usage, cost, quota_used) end
  return { 1, best, best_limit, best_rem, best_reset, -1 }, writes
end

-- Each request's arguments, and the keys and fields it names (read once,
-- before anything is decided).
local n_requests = tonumber(ARGV[2])
local reqs = {}
local a = 4 + 4 * n_rules
for r = 1, n_requests do
  local cost = tonumber(ARGV[a])
  local op = ARGV[a + 1]
  local n_limits = tonumber(ARGV[a + 2])
  a = a + 3
  local usage = nil
  if string.byte(op, 2) == 85 then -- 'U'
    usage = tonumber(ARGV[a])
    wants_field(usage, 'u')
    a = a + 1
  end
  local limits = {}
  for i = 1, n_limits do
    local k, f = tonumber(ARGV[a]), ARGV[a + 1]
    limits[i] = { k, f, rules[tonumber(ARGV[a + 2])] }
    if f == '' then wants_string(k) else wants_field(k, f) end
    a = a + 3
  end
  reqs[r] = { cost, string.sub(op, 1, 1), limits, usage }
end
load_all()

local out = {}
for r = 1, n_requests do
  local q = reqs[r]
  local ok, res, writes
  if q[2] == 'R' then
    ok, res, writes = pcall(refund, q[1], q[3])
  else
    ok, res, writes = pcall(decide, q[1], q[3], q[4], q[2] == 'D')
  end
  if ok then
    if writes then apply_all(writes) end
  else
    -- an error raised by redis.call is a table with the message in `err`
    if type(res) == 'table' then res = res.err end
    res = { -1, tostring(res), 0, 0, 0, 0 }
  end
  for j = 1, 6 do out[#out + 1] = res[j] end
end
flush()
return out
