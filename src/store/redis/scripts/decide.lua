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
-- One request's failure (a key of the wrong type, a malformed value) fails
-- that request alone: it is decided inside pcall, every value it reads is
-- checked before anything is written, and its writes are ordered so that the
-- only one that can fail (HINCRBY on the usage hash) comes first. Nothing is
-- charged for a failed request, and the others are decided as if it were not
-- there.
--
-- Token buckets are exact integer arithmetic (src/store/bucket.rs has the same
-- steps in Rust): a bucket's value is "LEVEL:TIME", its level in billionths of
-- a token below full and the instant of that level in µs; it regains RATE
-- (thousandths of a request per second = billionths of a token per µs) every
-- µs. Every number stays below 2^53, where Lua's doubles are exact integers.
--
-- KEYS, per request, in order:
--   one key per limit: a token bucket's key, or a quota's key BASE (the
--   period's start date, ":YYYYMMDD", is appended here);
--   then, if the request counts usage, the daily usage key BASE (":YYYYMMDD"
--   of today is appended here).
--   Appended keys carry the same hash tag as their base, so they live in the
--   same cluster slot.
-- ARGV:
--   [1] the clock: empty (Redis's TIME), or µs since the epoch (clock.lua)
--   [2] number of requests
--   then per request: cost, number of limits, what to do: "T" take (check
--   all limits, consume only if all pass), "D" dry (check only: Redis Cluster
--   asks this to name the right reason of a denial), "R" refund (give `cost`
--   back to every bucket, after a take that a later step undid; quotas are
--   never refunded), each with "U" appended when the request counts usage,
--   then per limit five values:
--     "B", rate in thousandths of a request per second, burst, 0, 0 (unused)
--     "Q", limit, offset, plan creation time in ms, period code (D, W or M)
-- Returns a flat array of six values per request:
--   allowed (1/0), index of the limit described (1-based; the failing one on a
--   denial, the one with the least remaining on an allow; 0 when none),
--   its limit, remaining, milliseconds until reset, retry-after in ms (-1: none);
--   or, for a request that failed: -1, the error message, 0, 0, 0, 0.

-- @clock (clock.lua is inserted here: now_us, now_ms, today, TTL_SLACK_MS, expire_at)
-- @calendar (calendar.lua is inserted here: DAY_MS, civil, days_from_civil, ymd, period)

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

local function is_count(x)
  return x ~= nil and x == x and x >= -9007199254740991 and x <= 9007199254740991 and floor(x) == x
end

-- A bucket's level at now_us, and the instant to store with a new level.
local function bucket_level(key, rate)
  local v = redis.call('GET', key)
  if not v then return 0, now_us end
  local sep = string.find(v, ':', 1, true)
  local level, at
  if sep then
    level = tonumber(string.sub(v, 1, sep - 1))
    at = tonumber(string.sub(v, sep + 1))
  end
  if not is_count(level) or not is_count(at) or level < 0 then
    error('bucket ' .. key .. ' holds ' .. string.sub(v, 1, 40) .. ', not LEVEL:TIME')
  end
  if now_us > at then
    local drained = (now_us - at) * rate
    if drained >= level then level = 0 else level = level - drained end
    at = now_us
  end
  return level, at
end

-- Gives `cost` back to the request's buckets (a take undone on Redis
-- Cluster: see src/store/redis/cluster.rs). Never below an empty level.
local function refund(cost, n_limits, a0, k0)
  for i = 1, n_limits do
    local ai = a0 + 5 * (i - 1)
    if ARGV[ai] == 'B' then
      local key = KEYS[k0 + i - 1]
      local rate = tonumber(ARGV[ai + 1])
      local level, at = bucket_level(key, rate)
      level = level - cost * NANO
      if level <= 0 then
        redis.call('DEL', key)
      else
        redis.call('SET', key, string.format('%.0f:%.0f', level, at), 'PX', ms_to_drain(level, rate) + 1 + TTL_SLACK_MS)
      end
    end
  end
  return { 1, 0, 0, 0, 0, -1 }
end

-- Decides one request; returns its six values. Reads first, writes last
-- (none when `dry`).
local function decide(cost, n_limits, a0, k0, usage_key, dry)
  local best, best_limit, best_rem, best_reset = 0, 0, 0, 0
  local writes = {}
  local quota_used = nil
  for i = 1, n_limits do
    local ai = a0 + 5 * (i - 1)
    local key = KEYS[k0 + i - 1]
    if ARGV[ai] == 'B' then
      local rate = tonumber(ARGV[ai + 1])
      local burst = tonumber(ARGV[ai + 2])
      local level, at = bucket_level(key, rate)
      local cap = burst * NANO
      local need = cost * NANO
      local rem = idiv(cap - level, NANO)
      if rem < 0 then rem = 0 end
      if cost > burst or level + need > cap then
        local retry = -1
        if cost <= burst then retry = ms_to_drain(level + need - cap, rate) end
        return { 0, i, burst, rem, ms_to_drain(level, rate), retry }
      end
      level = level + need
      rem = idiv(cap - level, NANO)
      local reset = ms_to_drain(level, rate)
      writes[#writes + 1] = { 'B', key, string.format('%.0f:%.0f', level, at), reset + 1 + TTL_SLACK_MS }
      if best == 0 or rem < best_rem then
        best, best_limit, best_rem, best_reset = i, burst, rem, reset
      end
    else
      local limit = tonumber(ARGV[ai + 1])
      local offset = tonumber(ARGV[ai + 2])
      local created = tonumber(ARGV[ai + 3])
      local p = period(ARGV[ai + 4])
      local eff = limit
      -- the offset applies in the one period containing the plan's creation
      if created >= p[1] and created < p[2] then eff = limit - offset end
      local qkey = key .. p[3]
      local raw = redis.call('GET', qkey)
      local used = tonumber(raw or '0')
      if not is_count(used) then
        error('quota counter ' .. qkey .. ' holds ' .. string.sub(tostring(raw), 1, 40) .. ', not an integer')
      end
      local reset = p[2] - now_ms
      if used + cost > eff then
        local rem = eff - used
        if rem < 0 then rem = 0 end
        return { 0, i, eff, rem, reset, reset }
      end
      writes[#writes + 1] = { 'Q', qkey, p[2] }
      quota_used = used + cost
      local rem = eff - used - cost
      if best == 0 or rem < best_rem then
        best, best_limit, best_rem, best_reset = i, eff, rem, reset
      end
    end
  end

  if dry then
    return { 1, best, best_limit, best_rem, best_reset, -1 }
  end
  -- Writes. HINCRBY on the usage hash is the only one that can fail (a key of
  -- another type): it goes first, so a failure leaves nothing written.
  if usage_key then
    local ukey = usage_key .. ':' .. ymd(today)
    redis.call('HINCRBY', ukey, 'n', cost)
    if quota_used then redis.call('HSET', ukey, 'q', string.format('%.0f', quota_used)) end
    expire_at(ukey, (today + 1) * DAY_MS + USAGE_KEEP_MS)
  end
  for _, w in ipairs(writes) do
    if w[1] == 'B' then
      redis.call('SET', w[2], w[3], 'PX', w[4])
    else
      -- the counter was read as an integer above, so INCRBY cannot fail
      redis.call('INCRBY', w[2], cost)
      expire_at(w[2], w[3])
    end
  end
  return { 1, best, best_limit, best_rem, best_reset, -1 }
end

local n_requests = tonumber(ARGV[2])
local out = {}
local a = 3
local k = 1
for _ = 1, n_requests do
  local cost = tonumber(ARGV[a])
  local n_limits = tonumber(ARGV[a + 1])
  local op = string.sub(ARGV[a + 2], 1, 1)
  local counts_usage = string.sub(ARGV[a + 2], 2, 2) == 'U'
  local a0, k0 = a + 3, k
  a = a0 + 5 * n_limits
  k = k0 + n_limits
  local usage_key = nil
  if counts_usage then usage_key = KEYS[k]; k = k + 1 end
  local ok, r
  if op == 'R' then
    ok, r = pcall(refund, cost, n_limits, a0, k0)
  else
    ok, r = pcall(decide, cost, n_limits, a0, k0, usage_key, op == 'D')
  end
  if not ok then
    -- an error raised by redis.call is a table with the message in `err`
    if type(r) == 'table' then r = r.err end
    r = { -1, tostring(r), 0, 0, 0, 0 }
  end
  for j = 1, 6 do out[#out + 1] = r[j] end
end
return out
