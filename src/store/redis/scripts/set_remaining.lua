-- set_remaining.lua: UpdateUsage. Sets a key's remaining quota in the
-- current period (API Gateway's "temporary extension" when above the limit).
--
-- Why a script: the current period must come from the same clock as
-- decide.lua's (Redis's TIME), so that the counter set here is the one
-- decisions read.
--
-- KEYS[1] the state hash of the key in the plan (state.lua)
-- ARGV: [1] the clock (clock.lua), limit, offset, plan creation time in ms,
-- period code (D/W/M, or a local-time period table 'Z:...': calendar.lua),
-- remaining, and for a plan in a time zone its local day table
-- Returns {remaining, period end in ms}.

-- @clock (clock.lua is inserted here: now_us, now_ms, today, TTL_SLACK_MS, expire_at)
-- @calendar (calendar.lua is inserted here)
-- @state (state.lua is inserted here)

local limit = tonumber(ARGV[2])
local offset = tonumber(ARGV[3])
local created = tonumber(ARGV[4])
local p = period(ARGV[5])
local remaining = tonumber(ARGV[6])
local uday = local_day(ARGV[7])
local eff = limit
if created >= p[1] and created < p[2] then eff = limit - offset end
local used = eff - remaining
wants_field(1, 'q')
wants_field(1, 'u')
load_all()
-- leases outstanding in this period stay outstanding (their settles charge
-- what they used on top of the value set here)
local q = { p[4], used }
local ok_old, old = pcall(get, 1, 'q')
if ok_old and old and not old[3] and old[1] == q[1] then keep_slots(q, old, 0) end
local writes = { { 1, 'q', q, p[2] } }
-- a malformed usage record is replaced rather than failing the update
local ok = pcall(usage_writes, writes, 1, 0, used, uday)
if not ok then
  local d = uday or today
  writes[2] = { 1, 'u', { d, 0, used }, (d + USAGE_DAYS) * DAY_MS }
end
apply_all(writes)
flush()
return { remaining, p[2] }
