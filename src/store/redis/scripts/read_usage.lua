-- read_usage.lua: GetUsage. Reads the daily usage of keys in a plan.
--
-- KEYS: the state hashes of keys in a plan (state.lua)
-- ARGV: [1] the clock (clock.lua), [2] the number of days, then the days
-- (days since 1970-01-01)
-- Returns, per key and per day, two values: units used (nil: no record) and
-- quota used after the day's last change (nil: none; it can be negative). A day is kept 92 days:
-- its record is readable until the start of day + 93, by the scripts' clock,
-- whatever is still stored.

-- @clock (clock.lua is inserted here: now_us, now_ms, today, TTL_SLACK_MS, expire_at)
-- @calendar (calendar.lua is inserted here)
-- @state (state.lua is inserted here)

local n_days = tonumber(ARGV[2])
local days, fields = {}, {}
for i = 1, n_days do
  days[i] = tonumber(ARGV[2 + i])
  fields[i] = 'h' .. ymd(days[i])
end
local out = {}
for k = 1, #KEYS do
  local uday, un, uq
  local got = redis.call('HMGET', KEYS[k], 'u', unpack(fields))
  if got[1] then
    local v = parse(got[1], k)
    if v then uday, un, uq = v[1], v[2], v[3] end
  end
  local hist = {}
  for i = 1, n_days do hist[i] = got[i + 1] end
  for i = 1, n_days do
    local d = days[i]
    local n, q = false, false
    if now_ms < (d + USAGE_DAYS) * DAY_MS then
      if uday == d then
        n = un; q = uq or false
      elseif hist[i] then
        local a, b = string.match(hist[i], '^(%-?%d+):?(%-?%d*)$')
        n = tonumber(a) or 0
        q = tonumber(b) or false
      end
    end
    out[#out + 1] = n
    out[#out + 1] = q
  end
end
return out
