-- set_remaining.lua: UpdateUsage. Sets a key's remaining quota in the
-- current period (API Gateway's "temporary extension" when above the limit).
--
-- Why a script: the current period must come from the Redis server's clock,
-- as in decide.lua, so that the counter set here is the one decisions read.
--
-- KEYS[1] quota key base (":YYYYMMDD" of the period start is appended)
-- KEYS[2] daily usage key base (":YYYYMMDD" of today is appended)
-- ARGV: limit, offset, plan creation time in ms, period code (D/W/M), remaining
-- Returns {remaining, period end in ms}.

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local today = math.floor(now_us / 86400000000)
-- @calendar (calendar.lua is inserted here)

local limit = tonumber(ARGV[1])
local offset = tonumber(ARGV[2])
local created = tonumber(ARGV[3])
local p = period(ARGV[4])
local remaining = tonumber(ARGV[5])
local eff = limit
if created >= p[1] and created < p[2] then eff = limit - offset end
local used = eff - remaining
local qkey = KEYS[1] .. p[3]
redis.call('SET', qkey, string.format('%d', used), 'PXAT', p[2])
local ukey = KEYS[2] .. ':' .. ymd(today)
redis.call('HSET', ukey, 'q', string.format('%d', used))
redis.call('PEXPIREAT', ukey, (today + 1) * DAY_MS + USAGE_KEEP_MS)
return { remaining, p[2] }
