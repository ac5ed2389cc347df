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

-- period code -> {start day, end day, start suffix}
local periods = {}
local function period(code)
  local p = periods[code]
  if p then return p end
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
  p = { s * DAY_MS, e * DAY_MS, ':' .. ymd(s) }
  periods[code] = p
  return p
end

