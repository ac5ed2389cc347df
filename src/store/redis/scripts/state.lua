-- state.lua: what one script call reads and writes, each key once (inserted
-- at a script's `-- @state` line; needs clock.lua and calendar.lua before it).
--
-- The per-key state of a plan is ONE hash, `P{k:KEY}:s:PLAN` (src/store/keys.rs):
--   b             the plan throttle, "LEVEL:TIME" (bucket.rs)
--   m:STAGE:METH  a plan per-method throttle, "LEVEL:TIME"
--   q             the quota, "STARTDAY:USED": used in the period starting that
--                 day (days since 1970-01-01); another period's value is 0
--   u             today's usage, "DAY:N" or "DAY:N:Q" (N used that day, Q the
--                 quota used after its last change); the first write of a
--                 later day moves it to a field of its own:
--   hYYYYMMDD     an earlier day's usage, "N" or "N:Q", kept 92 days
--   e             the day (since 1970-01-01) at whose start the hash expires
-- A bucket or quota with leases outstanding (decide.lua, "Leases") carries
-- four more numbers: "LEVEL:TIME:O1:S1:O2:S2" / "STARTDAY:USED:O1:S1:O2:S2",
-- the tokens leased out in (at most) two slots and the slots' numbers.
-- (One key per key and plan, and no other: a script call's keys then all
-- exist or all do not, which a slot being migrated in a Redis Cluster asks
-- of a command with several keys; and one key costs less memory.)
-- Stage and account throttles are strings of their own ("LEVEL:TIME").
--
-- A call reads every key it needs once (HMGET of all the fields the batch
-- names, or GET) before deciding anything, decides every request on these
-- values (a request that passes updates them, so the next request sees its
-- writes), and writes each changed key once at the end: one HSET per hash,
-- one SET per string, and PEXPIREAT only when a hash must live longer than
-- `e` says (so about once every three days for a key used daily).
--
-- Why: a batch of decisions of one key costs 2 commands whatever its size,
-- where it cost about 12 per decision, and each stored value is parsed and
-- formatted once per call. (What is left is mostly the Lua interpreter's
-- own time: reading the arguments, deciding, formatting; see
-- docs/benchmarks.md, "Redis work per decision".)

local H = {}      -- hash key index -> { raw = {field -> string|false}, val = {field -> {a, b, c}}, dirty = {field -> true}, need = ms, err = msg }
local S = {}      -- string key index -> { raw = string|false, val = {a, b, c}|false|nil, dirty = bool, ttl = ms, err = msg }
local ROLLED = {} -- hash key index -> true when a day's usage moved to its own field (prune old days)
local USAGE_DAYS = 93   -- a day's usage is readable until the start of day + 93 (92 days kept)

local function wants_field(k, f)
  local h = H[k]
  if not h then h = { raw = {}, val = {}, dirty = {}, need = 0, want = { 'e' } }; H[k] = h end
  if h.raw[f] == nil then h.raw[f] = false; h.want[#h.want + 1] = f end
end

local function wants_string(k)
  if not S[k] then S[k] = { raw = false, dirty = false, ttl = 0 } end
end

-- Reads every key asked for by wants_*; a key of another type is remembered
-- as an error for the requests that touch it.
local function load_all()
  for k, h in pairs(H) do
    local ok, r = pcall(redis.call, 'HMGET', KEYS[k], unpack(h.want))
    if ok then
      for i, f in ipairs(h.want) do h.raw[f] = r[i] end
    else
      if type(r) == 'table' then r = r.err end
      h.err = 'key ' .. KEYS[k] .. ': ' .. tostring(r)
    end
  end
  for k, s in pairs(S) do
    local ok, r = pcall(redis.call, 'GET', KEYS[k])
    if ok then s.raw = r else
      if type(r) == 'table' then r = r.err end
      s.err = 'key ' .. KEYS[k] .. ': ' .. tostring(r)
    end
  end
end

local function is_count(x)
  return x ~= nil and x == x and x >= -9007199254740991 and x <= 9007199254740991 and math.floor(x) == x
end

-- Every stored value is "A:B" or "A:B:C" (integers). -> {A, B, C}, or the
-- error message naming the key.
local function parse(v, k)
  local a, b, c = string.match(v, '^(%-?%d+):(%-?%d+):?(%-?%d*)$')
  if a == nil then
    -- a bucket or quota with leases outstanding: {A, B, o1 =, s1 =, o2 =, s2 =}
    local o1, s1, o2, s2
    a, b, o1, s1, o2, s2 = string.match(v, '^(%-?%d+):(%-?%d+):(%d+):(%d+):(%d+):(%d+)$')
    a, b, o1, s1, o2, s2 = tonumber(a), tonumber(b), tonumber(o1), tonumber(s1), tonumber(o2), tonumber(s2)
    if is_count(a) and is_count(b) and is_count(o1) and is_count(s1) and is_count(o2) and is_count(s2) then
      return { a, b, o1 = o1, s1 = s1, o2 = o2, s2 = s2 }
    end
  end
  a, b = tonumber(a), tonumber(b)
  if c == '' then c = nil else c = tonumber(c) end
  if not is_count(a) or not is_count(b) or (c ~= nil and not is_count(c)) then
    return nil, 'key ' .. KEYS[k] .. ' holds ' .. string.sub(v, 1, 40) .. ', not the expected numbers'
  end
  return { a, b, c }
end

-- The value at (key index, field; '' = the string key) as {A, B, C}, false
-- when absent; each stored value is parsed once per call.
local function get(k, f)
  local e
  if f == '' then e = S[k] else e = H[k] end
  if e.err then error(e.err) end
  local val, raw
  if f == '' then val, raw = e.val, e.raw else val, raw = e.val[f], e.raw[f] end
  if val ~= nil then return val end
  if not raw then val = false else
    local msg
    val, msg = parse(raw, k)
    if not val then error(msg) end
  end
  if f == '' then e.val = val else e.val[f] = val end
  return val
end

-- A lease slot's length, ms (decide.lua, "Leases"; src/limiter/lease.rs).
local LEASE_MS = 200
local slot_now = math.floor(now_ms / LEASE_MS)

-- The leases outstanding in value `v`: tokens in slots that have not ended
-- (live) and in slots that have (lapsed: to be charged as used).
local function leases(v)
  if not v or not v.o1 then return 0, 0 end
  local live, lapsed = 0, 0
  if v.s1 > slot_now then live = live + v.o1 else lapsed = lapsed + v.o1 end
  if v.s2 > slot_now then live = live + v.o2 else lapsed = lapsed + v.o2 end
  return live, lapsed
end

-- Puts on the new value `nv` the live slots of the old value `v`, with
-- `grant` tokens more in slot slot_now + 2 and `gone` tokens fewer in slot
-- `from` (a settle). Returns whether slot `from` held `gone` tokens.
local function keep_slots(nv, v, grant, from, gone)
  local o = {}
  local found = false
  if v and v.o1 then
    if v.s1 > slot_now and v.o1 > 0 then o[v.s1] = (o[v.s1] or 0) + v.o1 end
    if v.s2 > slot_now and v.o2 > 0 then o[v.s2] = (o[v.s2] or 0) + v.o2 end
  end
  if from and (o[from] or 0) >= gone then
    o[from] = o[from] - gone
    found = true
  end
  if grant > 0 then o[slot_now + 2] = (o[slot_now + 2] or 0) + grant end
  local n, total, last = 0, 0, 0
  for slot, t in pairs(o) do
    if t > 0 then
      n = n + 1
      total = total + t
      if slot > last then last = slot end
      if n == 1 then nv.o1, nv.s1 = t, slot else nv.o2, nv.s2 = t, slot end
    end
  end
  -- (more than two live slots only after a clock that went back: all are
  -- kept in the latest, which holds them longest)
  if n > 2 then nv.o1, nv.s1, nv.o2, nv.s2 = total, last, 0, 0 end
  if n == 1 then nv.o2, nv.s2 = 0, 0 end
  return found
end

-- Applies a request's writes (made only once the whole request passed).
-- Each write: { key index, field ('' = string key), value {A, B, C} (false
-- = delete a string), need: ms until which the value must be kept }.
local function apply_all(writes)
  for _, w in ipairs(writes) do
    local k, f = w[1], w[2]
    if f == '' then
      local s = S[k]
      s.val = w[3]; s.dirty = true; s.ttl = w[4] - now_ms
    else
      if string.byte(f, 1) == 104 then ROLLED[k] = true end -- 'h': a day moved
      local h = H[k]
      h.val[f] = w[3]; h.dirty[f] = true
      if w[4] > h.need then h.need = w[4] end
    end
  end
end

local function fmt(v)
  if v.o1 then
    return string.format('%.0f:%.0f:%.0f:%.0f:%.0f:%.0f', v[1], v[2], v.o1, v.s1, v.o2, v.s2)
  end
  if v[3] then return string.format('%.0f:%.0f:%.0f', v[1], v[2], v[3]) end
  if v[2] then return string.format('%.0f:%.0f', v[1], v[2]) end
  return string.format('%.0f', v[1])
end

-- The writes that count `add` more units (and, when `q` is given, the quota
-- used) in today's usage of state hash `k` (`t`: today's local date of a
-- plan in a time zone, else the UTC date). A record of an earlier day moves
-- to its own field first.
local function usage_writes(writes, k, add, q, t)
  local today = t or today
  local u = get(k, 'u')
  local day, n, oq = nil, 0, nil
  if u then day, n, oq = u[1], u[2], u[3] end
  if day ~= nil and day < today then
    writes[#writes + 1] = { k, 'h' .. ymd(day), { n, oq }, (day + USAGE_DAYS) * DAY_MS }
    n, oq = 0, nil
  end
  -- (a record of a later day, after a clock that went back across
  -- midnight, keeps counting in that day)
  local d = day
  if d == nil or d < today then d = today end
  if q ~= nil then oq = q end
  writes[#writes + 1] = { k, 'u', { d, n + add, oq }, (d + USAGE_DAYS) * DAY_MS }
end

-- Writes every changed key: one HSET per hash (with `e` and PEXPIREAT when
-- it must live longer, and after a day moved, HDEL of the days no longer
-- kept), SET ... PX or DEL per string.
local function flush()
  for k, h in pairs(H) do
    local args = {}
    for f in pairs(h.dirty) do
      args[#args + 1] = f; args[#args + 1] = fmt(h.val[f])
    end
    if #args > 0 then
      local e = tonumber(h.raw.e or '0') or 0
      local extend = h.need > e * DAY_MS
      if extend then
        e = math.floor(h.need / DAY_MS) + 2
        args[#args + 1] = 'e'; args[#args + 1] = string.format('%.0f', e)
      end
      redis.call('HSET', KEYS[k], unpack(args))
      if extend then expire_at(KEYS[k], e * DAY_MS) end
      if ROLLED[k] then
        local oldest = 'h' .. ymd(today - USAGE_DAYS + 1)
        local stale = {}
        for _, f in ipairs(redis.call('HKEYS', KEYS[k])) do
          if string.byte(f, 1) == 104 and f < oldest then stale[#stale + 1] = f end
        end
        if #stale > 0 then redis.call('HDEL', KEYS[k], unpack(stale)) end
      end
    end
  end
  for k, s in pairs(S) do
    if s.dirty then
      if s.val then
        redis.call('SET', KEYS[k], fmt(s.val), 'PX', math.max(s.ttl, 1) + TTL_SLACK_MS)
      else
        redis.call('DEL', KEYS[k])
      end
    end
  end
end
