-- set_remaining.lua: UpdateUsage. Sets a key's remaining quota in the
-- current period (API Gateway's "temporary extension" when above the limit).
--
-- Why a script: the current period must come from the same clock as
-- decide.lua's (Redis's TIME), so that the counter set here is the one
-- decisions read.
--
-- KEYS[1] quota key base (":YYYYMMDD" of the period start is appended)
-- KEYS[2] daily usage key base (":YYYYMMDD" of today is appended)
-- ARGV: [1] the clock (clock.lua), limit, offset, plan creation time in ms,
-- period code (D/W/M), remaining
-- Returns {remaining, period end in ms}.

-- @clock (clock.lua is inserted here: now_us, now_ms, today, TTL_SLACK_MS, expire_at)
-- @calendar (calendar.lua is inserted here)

local limit = tonumber(ARGV[2])
local offset = tonumber(ARGV[3])
local created = tonumber(ARGV[4])
local p = period(ARGV[5])
local remaining = tonumber(ARGV[6])
local eff = limit
if created >= p[1] and created < p[2] then eff = limit - offset end
local used = eff - remaining
local qkey = KEYS[1] .. p[3]
redis.call('SET', qkey, string.format('%.0f', used))
expire_at(qkey, p[2])
local ukey = KEYS[2] .. ':' .. ymd(today)
redis.call('HSET', ukey, 'q', string.format('%.0f', used))
expire_at(ukey, (today + 1) * DAY_MS + USAGE_KEEP_MS)
return { remaining, p[2] }
