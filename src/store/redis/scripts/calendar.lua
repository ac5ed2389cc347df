-- calendar.lua: UTC calendar arithmetic shared by the scripts (prepended to
-- each of them when they are loaded; see src/store/redis/mod.rs). It mirrors
-- src/calendar.rs; the conformance suite keeps the two in step.
--
-- Needs `today` (days since 1970-01-01) defined before it (clock.lua).

local DAY_MS = 86400000
local USAGE_KEEP_MS = 92 * DAY_MS

local function floor(x) return math.floor(x) end

-- days since 1970-01-01 -> year, month, day (H. Hinnant's civil_from_days)
local function civil(z)
  z = z + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local d = doy - floor((153 * mp + 2) / 5) + 1
  local m
  if mp < 10 then m = mp + 3 else m = mp - 9 end
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp
  if m > 2 then mp = m - 3 else mp = m + 9 end
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function ymd(days)
  local y, m, d = civil(days)
  return string.format('%04d%02d%02d', y, m, d)
end

-- Local-time periods (src/localtime.rs; docs/semantics.md, "Local-time
-- quotas"): Lua has no time zone database, so for a quota in a time zone or
-- with an anchor day the replica sends a table of three consecutive periods
-- around its own clock, 'Z:B0:B1:B2:B3:S0:S1:S2' (boundaries in ms, each
-- period's local start date in days), and the script picks the one that
-- contains ITS now: Redis's clock still decides. A usage day table has the
-- same form (three local days). None containing now means the replica's
-- clock is a whole period off: the request fails, nothing is counted.
local ztables = {}
local function zone_pick(code)
  local t = ztables[code]
  if t == nil then
    local b0, b1, b2, b3, s0, s1, s2 = string.match(code,
      '^Z:(%-?%d+):(%-?%d+):(%-?%d+):(%-?%d+):(%-?%d+):(%-?%d+):(%-?%d+)$')
    if b0 == nil then
      t = { err = 'a local-time period table is malformed: ' .. string.sub(code, 1, 120) }
    else
      local b = { tonumber(b0), tonumber(b1), tonumber(b2), tonumber(b3) }
      local st = { tonumber(s0), tonumber(s1), tonumber(s2) }
      for i = 1, 3 do
        if not t and b[i] <= now_ms and now_ms < b[i + 1] then t = { b[i], b[i + 1], st[i] } end
      end
      if not t then
        t = { err = string.format("no period of the quota's time zone contains Redis's time %.0f ms " ..
          "(the replica sent periods from %.0f to %.0f ms): the replica's clock is a whole period " ..
          "away from Redis's; check the clocks (NTP)", now_ms, b[1], b[4]) }
      end
    end
    ztables[code] = t
  end
  if t.err then error(t.err) end
  return t
end

-- The local date (days) of a usage day table at now; nil without one (the
-- UTC date: `today`).
local function local_day(code)
  if not code then return nil end
  return zone_pick(code)[3]
end

-- period code -> {start ms, end ms, start suffix, start day}
local periods = {}
local function period(code)
  local p = periods[code]
  if p then return p end
  if string.byte(code, 1) == 90 then -- 'Z': a local-time table
    local t = zone_pick(code)
    p = { t[1], t[2], ':' .. ymd(t[3]), t[3] }
    periods[code] = p
    return p
  end
  local s, e
  if code == 'D' then
    s = today; e = today + 1
  elseif code == 'W' then
    s = today - ((today + 3) % 7); e = s + 7
  else
    local y, m = civil(today)
    s = days_from_civil(y, m, 1)
    if m == 12 then e = days_from_civil(y + 1, 1, 1) else e = days_from_civil(y, m + 1, 1) end
  end
  p = { s * DAY_MS, e * DAY_MS, ':' .. ymd(s), s }
  periods[code] = p
  return p
end

