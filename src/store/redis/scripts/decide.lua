-- decide.lua: check and consume the limits of one or more Authorize requests.
--
-- Why a script and not MULTI/EXEC: each request must read its counters, decide
-- whether ALL of its limits pass, and write only then. MULTI/EXEC cannot branch
-- on what it reads, and WATCH would retry under contention; a script runs
-- atomically on the server, in one round trip, with no retries.
--
-- Several pending requests are decided by one call (the batcher in
-- src/store/redis/mod.rs): each request is still all-or-nothing on its own, and
-- requests are decided in order, each seeing the writes of the ones before it.
--
-- Time is the Redis server's own clock (TIME), so replicas with skewed clocks
-- agree. Every key written gets its TTL in the same call that writes it.
--
-- KEYS, per request, in order:
--   one key per limit: a token bucket's key, or a quota's key BASE (the
--   period's start date, ":YYYYMMDD", is appended here);
--   then, if the request counts usage, the daily usage key BASE (":YYYYMMDD"
--   of today is appended here).
--   Appended keys carry the same hash tag as their base, so they live in the
--   same cluster slot.
-- ARGV:
--   [1] number of requests
--   then per request: cost, number of limits, counts usage (0/1),
--   then per limit five values:
--     "B", emission interval in microseconds (1e6 / rate), tolerance in
--          microseconds (burst * interval), burst, 0 (unused)
--     "Q", limit, offset, plan creation time in ms, period code (D, W or M)
-- Returns a flat array of six integers per request:
--   allowed (1/0), index of the limit described (1-based; the failing one on a
--   denial, the one with the least remaining on an allow; 0 when none),
--   its limit, remaining, milliseconds until reset, retry-after in ms (-1: none).

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local today = math.floor(now_us / 86400000000)
-- @calendar (calendar.lua is inserted here: DAY_MS, civil, days_from_civil, ymd, period)
local function ceil_ms(us)
  if us <= 0 then return 0 end
  return math.ceil(us / 1000)
end

local n_requests = tonumber(ARGV[1])
local out = {}
local a = 2
local k = 1
for _ = 1, n_requests do
  local cost = tonumber(ARGV[a])
  local n_limits = tonumber(ARGV[a + 1])
  local counts_usage = ARGV[a + 2] == '1'
  local a0, k0 = a + 3, k
  a = a0 + 5 * n_limits
  k = k0 + n_limits
  local usage_key = nil
  if counts_usage then usage_key = KEYS[k]; k = k + 1 end

  local ok = true
  local best, best_limit, best_rem, best_reset, retry = 0, 0, 0, 0, -1
  local writes = {}
  local quota_used = nil
  for i = 1, n_limits do
    local ai = a0 + 5 * (i - 1)
    local key = KEYS[k0 + i - 1]
    if ARGV[ai] == 'B' then
      local interval = tonumber(ARGV[ai + 1])
      local tolerance = tonumber(ARGV[ai + 2])
      local burst = tonumber(ARGV[ai + 3])
      local tat = tonumber(redis.call('GET', key) or '0')
      if tat < now_us then tat = now_us end
      local new_tat = tat + cost * interval
      if cost > burst or new_tat - now_us > tolerance + 1 then
        -- 1 us of slack above absorbs floating-point rounding of stored instants
        ok = false
        local rem = floor((now_us + tolerance - tat) / interval + 1e-9)
        if rem < 0 then rem = 0 end
        best, best_limit, best_rem, best_reset = i, burst, rem, ceil_ms(tat - now_us)
        if cost > burst then retry = -1 else retry = ceil_ms(new_tat - tolerance - now_us) end
        break
      end
      local rem = floor((now_us + tolerance - new_tat) / interval + 1e-9)
      if rem < 0 then rem = 0 end
      local reset = ceil_ms(new_tat - now_us)
      writes[#writes + 1] = { 'B', key, new_tat, reset }
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
      local used = tonumber(redis.call('GET', qkey) or '0')
      local reset = p[2] - now_ms
      if used + cost > eff then
        ok = false
        local rem = eff - used
        if rem < 0 then rem = 0 end
        best, best_limit, best_rem, best_reset, retry = i, eff, rem, reset, reset
        break
      end
      writes[#writes + 1] = { 'Q', qkey, p[2] }
      quota_used = used + cost
      local rem = eff - used - cost
      if best == 0 or rem < best_rem then
        best, best_limit, best_rem, best_reset = i, eff, rem, reset
      end
    end
  end

  if ok then
    for _, w in ipairs(writes) do
      if w[1] == 'B' then
        redis.call('SET', w[2], string.format('%.0f', w[3]), 'PX', w[4] + 1)
      else
        redis.call('INCRBY', w[2], cost)
        redis.call('PEXPIREAT', w[2], w[3])
      end
    end
    if usage_key then
      local ukey = usage_key .. ':' .. ymd(today)
      redis.call('HINCRBY', ukey, 'n', cost)
      if quota_used then redis.call('HSET', ukey, 'q', quota_used) end
      redis.call('PEXPIREAT', ukey, (today + 1) * DAY_MS + USAGE_KEEP_MS)
    end
  end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = best
  out[#out + 1] = best_limit
  out[#out + 1] = best_rem
  out[#out + 1] = best_reset
  out[#out + 1] = retry
end
return out
