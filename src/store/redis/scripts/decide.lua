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
--     creation time in ms; "Z:..." (a quota in a time zone or with an
--     anchor day: its period table, calendar.lua): the same three numbers.
--     (A batch's requests share a few rules: each is sent and read once.)
--   then per request: cost, what to do: "T" take (check all limits, consume
--   only if all pass), "L" take and lease (below), "S" settle a lease
--   (below), "D" dry (check only: Redis Cluster asks this to name the right
--   reason of a denial), "R" refund (give `cost` back to every bucket, after
--   a take that a later step undid; quotas are never refunded), each with
--   "U" appended when the request counts usage (and then "A" when its plan
--   has quota alerts, and "Z" when it counts usage by local days), then the
--   number of limits, then with "U" the index (in KEYS) of the state hash
--   that counts it, then with "Z" its local day table (calendar.lua,
--   "Local-time periods"), then with "A" the alerts: the index in KEYS of
--   the events stream (0: none, answer the crossings only), about how many
--   events it keeps, the number of thresholds, each threshold (percent), the
--   key's id, the plan's id; then
--   for "L" the tokens asked, for "S" the tokens leased and the lease's
--   slot, then per limit three values: key index, field (in the state hash;
--   '' for a string key), rule index.
--   "F" give back (a refund of an earlier decision, docs/semantics.md
--   "Refunds"; below): with "U" when the decision counted usage (and "Z"
--   by local days, as above); after the usage index (and day table): the
--   index of the refund's marker key, the refund window's
--   end (ms), the start day of the decision's quota period (-1: none) and
--   the day whose usage counted it; then the limits as above.
-- Returns a flat array of nine values per request:
--   allowed (1/0), index of the limit described (1-based; the failing one on a
--   denial, the one with the least remaining on an allow; 0 when none),
--   its limit, remaining, milliseconds until reset, retry-after in ms (-1: none),
--   then on an allow the tokens leased (0: none), the lease's slot and the ms
--   it may be used for (0, 0 without a lease; a settle answers 0, then 1
--   when the lease had lapsed, then 0); on a denial 1 when the limit denied only because of
--   tokens leased out (a "soft" denial, which a settle can lift: the deny
--   cache must not keep it), else 0, then 0, 0;
--   or, for a request that failed: -1, the error message, 0, 0, 0, 0, 0, 0, 0;
--   "F" answers 1 when it gave back (else 0), 0, then what it did (1 gave
--   back, 2 already refunded, 3 the window passed, 4 the quota period is
--   another), the quota left after (0 without one), 1 when a limit is a
--   quota (else 0), -1, 0, 0, 0.
-- After the nine values of every request: seven per quota alert crossed
-- (below): the request's number (1-based), the threshold, the quota limit
-- in force, the quota used, the period's start and end (ms), and the id of
-- the event appended to the stream ('' when none was: no stream named, or
-- the XADD failed).
--
-- Quota alerts (docs/semantics.md, "Quota alerts"; src/alerts/mod.rs). When
-- a request's quota write makes the period's use reach a threshold not yet
-- fired (used * 100 >= threshold * limit), its bit is set in the state
-- hash's field `a`, "STARTDAY:LO:HI" (thresholds 1-50 are bits t-1 of LO,
-- 51-100 bits t-51 of HI; a value of another period has none fired), and
-- the event is appended to the stream, all in this call: one event per key,
-- threshold and period, whatever the concurrency. On a Redis Cluster the
-- stream is in another slot, so the crossing is only answered, and the
-- replica appends the event after the call.
--
-- Leases (docs/semantics.md, "Leased admission"). An "L" request is a take
-- that also asks for up to ASK more tokens of every limit, for its replica to
-- admit the same requests locally for LEASE_MS / 2. The tokens leased are
-- held, per limit, in two slots of LEASE_MS each (numbered floor(ms /
-- LEASE_MS)); a lease made at `now` goes to slot floor(now / LEASE_MS) + 2,
-- whose end is more than LEASE_MS away. While its slot has not ended, a
-- lease's tokens count as taken and do NOT refill (a bucket's level drains;
-- they are not in it). A settle ("S", the replica's report when its use ends)
-- takes the lease out of its slot and charges the USED tokens then, as if
-- every one had been used at that instant; the rest are given back. A slot
-- that ends without a settle (a replica stopped) lapses: its tokens are
-- charged as used at the instant a call sees it ended. Every token is thus
-- charged no earlier than it was used, and held as taken from before its use
-- until it is charged: Redis's view of every limit is never fuller than the
-- exact one, and the replicas together never admit more than one exact
-- bucket or quota would. A lease is at most a quarter of what a limit has
-- left, so near the limit leases shrink to nothing and requests are decided
-- one by one.

-- @clock (clock.lua is inserted here: now_us, now_ms, today, TTL_SLACK_MS, expire_at)
-- @calendar (calendar.lua is inserted here: DAY_MS, civil, days_from_civil, ymd, period)
-- @state (state.lua is inserted here: get, apply_all, usage_writes, flush, leases, keep_slots, ...)

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
      local v = get(k, f)
      local level, at = bucket_level(v, k, rate)
      local live, lapsed = leases(v)
      level = level + lapsed * NANO - cost * NANO
      if level < 0 then level = 0 end
      local nv = { level, at }
      keep_slots(nv, v, 0)
      if level == 0 and not nv.o1 and f == '' then
        writes[#writes + 1] = { k, f, false, now_ms }
      else
        writes[#writes + 1] = { k, f, nv, now_ms + ms_to_drain(level + live * NANO, rate) + 2 * LEASE_MS + 1 }
      end
    end
  end
  return { 1, 0, 0, 0, 0, -1, 0, 0, 0 }, writes
end

-- The current quota period of a rule: its start (the day number of its
-- local start date), end (ms), the limit in force (the offset applies in
-- the one period containing the plan's creation) and its start (ms).
local function quota_period(rule)
  local limit, offset, created = rule[2], rule[3], rule[4]
  local p = period(rule[1])
  local eff = limit
  if created >= p[1] and created < p[2] then eff = limit - offset end
  return p[4], p[2], eff, p[1]
end

-- A quota's value: used in the current period (with lapsed leases charged)
-- and its leases still live; another period's value counts nothing.
local function quota_state(v, k, start)
  if not v then return 0, 0 end
  if v[3] then error('quota ' .. KEYS[k] .. ' holds a value that is not DAY:USED') end
  if v[1] ~= start then return 0, 0, true end
  local live, lapsed = leases(v)
  return v[2] + lapsed, live
end

-- Quota alerts (above): the crossings answered, seven values each.
local EVENTS = {}

local function has_bit(mask, b)
  return math.floor(mask / 2 ^ b) % 2 == 1
end

-- Adds to `writes` the bits of the thresholds of `al` (a request's alerts)
-- that quota use `used` of `eff` reaches and that have not fired in the
-- period starting on day `start` (at `start_ms`, ending at `ends` ms) of
-- state hash `k`,
-- and notes them on `writes.alerts` for `fire` (once the request passed).
local function alerts_after(writes, al, k, start, ends, eff, used, start_ms)
  if eff <= 0 then return end
  local v = get(k, 'a')
  local lo, hi = 0, 0
  if v and v[1] == start then lo, hi = v[2], v[3] or 0 end
  local crossed = {}
  for _, t in ipairs(al.t) do
    if used * 100 >= t * eff then
      if t <= 50 and not has_bit(lo, t - 1) then
        lo = lo + 2 ^ (t - 1); crossed[#crossed + 1] = t
      elseif t > 50 and not has_bit(hi, t - 51) then
        hi = hi + 2 ^ (t - 51); crossed[#crossed + 1] = t
      end
    end
  end
  if #crossed > 0 then
    writes[#writes + 1] = { k, 'a', { start, lo, hi }, ends }
    writes.alerts = { al = al, t = crossed, eff = eff, used = used, start = start_ms, ends = ends }
  end
end

-- Records the crossings of request `r` (`writes.alerts`): appends each
-- event to the stream when the request names one, and answers it.
local function fire(r, x)
  local al = x.al
  local n = function(v) return string.format('%.0f', v) end
  for _, t in ipairs(x.t) do
    local id = ''
    if al.s > 0 then
      local ok, res = pcall(redis.call, 'XADD', KEYS[al.s], 'MAXLEN', '~', al.max, '*',
        'key_id', al.key, 'plan_id', al.plan, 'threshold', n(t), 'limit', n(x.eff), 'used', n(x.used),
        'period_start_ms', n(x.start), 'period_end_ms', n(x.ends))
      if ok then id = res end
    end
    local e = { r, t, x.eff, x.used, x.start, x.ends, id }
    for j = 1, 7 do EVENTS[#EVENTS + 1] = e[j] end
  end
end

-- Decides one request; returns its nine values and its writes (none when
-- denied or `dry`). `ask`: the tokens to lease besides (0: none). `uday`:
-- the local day table of its usage, if any. `al`: its quota alerts, if any.
local function decide(cost, limits, usage, dry, ask, uday, al)
  local best, best_limit, best_rem, best_reset = 0, 0, 0, 0
  local writes = {}
  local quota_used = nil
  -- the tokens each limit has left after this request, and for how long a
  -- lease may be used (a quota's must end with its period)
  local spare, valid = nil, LEASE_MS / 2
  local olds = {}
  local qa = nil -- the quota's state hash, period and limit (alerts)
  for i = 1, #limits do
    local l = limits[i]
    local k, f, rule = l[1], l[2], l[3]
    local kind = rule[1]
    local v = get(k, f)
    olds[i] = v
    if kind == 'B' then
      local rate, burst = rule[2], rule[3]
      local level, at = bucket_level(v, k, rate)
      local live, lapsed = leases(v)
      level = level + lapsed * NANO
      local held = live * NANO
      local cap = burst * NANO
      local need = cost * NANO
      local rem = idiv(cap - level - held, NANO)
      if rem < 0 then rem = 0 end
      if cost > burst or level + held + need > cap then
        local retry, soft = -1, 0
        if cost <= burst then
          if level + need <= cap then soft = 1 end
          retry = ms_to_drain(level + held + need - cap, rate)
        end
        return { 0, i, burst, rem, ms_to_drain(level + held, rate), retry, soft, 0, 0 }, nil
      end
      level = level + need
      rem = idiv(cap - level - held, NANO)
      local reset = ms_to_drain(level + held, rate)
      local keep = now_ms + reset + 1
      if live > 0 or ask > 0 then keep = keep + 2 * LEASE_MS end
      writes[#writes + 1] = { k, f, { level, at }, keep }
      if best == 0 or rem < best_rem then
        best, best_limit, best_rem, best_reset = i, burst, rem, reset
      end
      if spare == nil or rem < spare then spare = rem end
    else
      local start, ends, eff, start_ms = quota_period(rule)
      local used, live, other = quota_state(v, k, start)
      if other then olds[i] = false end -- another period's leases are gone
      local reset = ends - now_ms
      if used + live + cost > eff then
        local rem = eff - used - live
        if rem < 0 then rem = 0 end
        local soft = 0
        if used + cost <= eff then soft = 1 end
        return { 0, i, eff, rem, reset, reset, soft, 0, 0 }, nil
      end
      quota_used = used + cost
      qa = { k, start, ends, eff, start_ms }
      writes[#writes + 1] = { k, f, { start, quota_used }, ends }
      local rem = eff - used - live - cost
      if best == 0 or rem < best_rem then
        best, best_limit, best_rem, best_reset = i, eff, rem, reset
      end
      if spare == nil or rem < spare then spare = rem end
      if reset - 1 < valid then valid = reset - 1 end
    end
  end

  if dry then
    return { 1, best, best_limit, best_rem, best_reset, -1, 0, 0, 0 }, nil
  end
  -- the lease: at most a quarter of what the tightest limit has left
  local grant = 0
  if ask > 0 and spare ~= nil and valid > 0 then
    grant = floor(spare / 4)
    if grant > ask then grant = ask end
  end
  for i = 1, #limits do
    keep_slots(writes[i][3], olds[i], grant)
  end
  if usage then usage_writes(writes, usage, cost, quota_used, local_day(uday)) end
  if al and qa then alerts_after(writes, al, qa[1], qa[2], qa[3], qa[4], quota_used, qa[5]) end
  local slot = slot_now + 2
  if grant == 0 then valid, slot = 0, 0 end
  return { 1, best, best_limit, best_rem, best_reset, -1, grant, slot, valid }, writes
end

-- Settles a lease of `leased` tokens in slot `slot`, of which `used` were
-- used: takes it out of its slot and charges the used tokens now. A lease
-- whose slot has ended lapsed: it was charged in full already (only its use
-- is counted, in the usage).
local function settle(used, leased, slot, limits, usage, uday, al)
  local writes = {}
  local quota_used = nil
  local lapsed = 0
  for i = 1, #limits do
    local l = limits[i]
    local k, f, rule = l[1], l[2], l[3]
    local v = get(k, f)
    if rule[1] == 'B' and not v then
      lapsed = 1
    elseif rule[1] == 'B' then
      local rate = rule[2]
      local level, at = bucket_level(v, k, rate)
      local live, lapsed = leases(v)
      level = level + lapsed * NANO
      local nv = { level, at }
      if keep_slots(nv, v, 0, slot, leased) then
        nv[1] = level + used * NANO
        live = live - leased
      else
        lapsed = 1
      end
      writes[#writes + 1] = { k, f, nv, now_ms + ms_to_drain(nv[1] + live * NANO, rate) + 2 * LEASE_MS + 1 }
    elseif rule[1] ~= 'B' then
      local start, ends, eff, start_ms = quota_period(rule)
      local q, _, other = quota_state(v, k, start)
      if not v or other then
        lapsed = 1
      else
        local nv = { start, q }
        if keep_slots(nv, v, 0, slot, leased) then nv[2] = q + used else lapsed = 1 end
        quota_used = nv[2]
        writes[#writes + 1] = { k, f, nv, ends }
        if al then alerts_after(writes, al, k, start, ends, eff, quota_used, start_ms) end
      end
    end
  end
  if usage then usage_writes(writes, usage, used, quota_used, local_day(uday)) end
  return { 1, 0, 0, 0, 0, -1, 0, lapsed, 0 }, writes
end

-- The writes that take `cost` off the usage of day `day` of state hash `k`
-- (never below 0) and, with `q` (the quota used after a refund), record `q`
-- in today's usage, as a change of today (`t`: today's local date of a plan
-- in a time zone, else the UTC date, as for usage_writes).
local function usage_give(writes, k, day, cost, q, t)
  local today = t or today
  local function less(x) if x > cost then return x - cost end return 0 end
  local u = get(k, 'u')
  local uday, n, oq = nil, 0, nil
  if u then uday, n, oq = u[1], u[2], u[3] end
  if uday == day then
    if day < today and q ~= nil then
      writes[#writes + 1] = { k, 'h' .. ymd(day), { less(n), oq }, (day + USAGE_DAYS) * DAY_MS }
      writes[#writes + 1] = { k, 'u', { today, 0, q }, (today + USAGE_DAYS) * DAY_MS }
    else
      if day == today and q ~= nil then oq = q end
      writes[#writes + 1] = { k, 'u', { uday, less(n), oq }, (uday + USAGE_DAYS) * DAY_MS }
    end
    return
  end
  local h = get(k, 'h' .. ymd(day))
  if h then
    writes[#writes + 1] = { k, 'h' .. ymd(day), { less(h[1]), h[2] }, (day + USAGE_DAYS) * DAY_MS }
  end
  if q ~= nil then usage_writes(writes, k, 0, q, t) end
end

-- Gives `cost` back to every limit of an earlier decision, once
-- (docs/semantics.md, "Refunds"; `g`: the marker's key index `m`, the
-- window's end `until_ms`, the quota period's start day `period`, the usage
-- day `day`). Refused when the window has passed, when the quota's current
-- period is not the decision's, or when the marker exists; else the marker
-- is created (SET NX PX, until the window ends) and, in the same step, each
-- bucket's level goes down by the cost (never below full), the quota's
-- used too, and the decision day's usage. Everything is read before the
-- marker is set: a malformed value fails the refund before it counts.
local function give_back(cost, limits, usage, g, uday)
  if now_ms > g.until_ms then return { 0, 0, 3, 0, 0, -1, 0, 0, 0 }, nil end
  local quota_used, rem, has = nil, 0, 0
  local qwrites = {}
  for i = 1, #limits do
    local k, f, rule = limits[i][1], limits[i][2], limits[i][3]
    if rule[1] ~= 'B' then
      local start, ends, eff = quota_period(rule)
      if start ~= g.period then return { 0, 0, 4, 0, 0, -1, 0, 0, 0 }, nil end
      local v = get(k, f)
      local used, live, other = quota_state(v, k, start)
      if other then v = false end
      used = used - cost
      local nv = { start, used }
      keep_slots(nv, v, 0)
      qwrites[#qwrites + 1] = { k, f, nv, ends }
      quota_used = used
      rem = eff - used - live
      if rem < 0 then rem = 0 end
      has = 1
    end
  end
  local _, writes = refund(cost, limits)
  for _, w in ipairs(qwrites) do writes[#writes + 1] = w end
  if usage then usage_give(writes, usage, g.day, cost, quota_used, local_day(uday)) end
  local ttl = string.format('%.0f', g.until_ms - now_ms + 1 + TTL_SLACK_MS)
  if not redis.call('SET', KEYS[g.m], '1', 'NX', 'PX', ttl) then
    return { 0, 0, 2, 0, 0, -1, 0, 0, 0 }, nil
  end
  return { 1, 0, 1, rem, has, -1, 0, 0, 0 }, writes
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
  local uday = nil -- 'Z': usage counted by a local day table
  if usage and string.find(op, 'Z', 3, true) then
    uday = ARGV[a]
    a = a + 1
  end
  local al = nil
  if string.find(op, 'A', 3, true) then -- the request's quota alerts
    local n = tonumber(ARGV[a + 2])
    al = { s = tonumber(ARGV[a]), max = ARGV[a + 1], t = {}, key = ARGV[a + 3 + n], plan = ARGV[a + 4 + n] }
    for i = 1, n do al.t[i] = tonumber(ARGV[a + 2 + i]) end
    wants_field(usage, 'a')
    a = a + 5 + n
  end
  local x, y = 0, 0
  local o = string.sub(op, 1, 1)
  if o == 'L' then
    x = tonumber(ARGV[a]); a = a + 1
  elseif o == 'S' then
    x, y = tonumber(ARGV[a]), tonumber(ARGV[a + 1]); a = a + 2
  elseif o == 'F' then
    x = { m = tonumber(ARGV[a]), until_ms = tonumber(ARGV[a + 1]), period = tonumber(ARGV[a + 2]),
          day = tonumber(ARGV[a + 3]) }
    a = a + 4
    if usage then wants_field(usage, 'h' .. ymd(x.day)) end
  end
  local limits = {}
  for i = 1, n_limits do
    local k, f = tonumber(ARGV[a]), ARGV[a + 1]
    limits[i] = { k, f, rules[tonumber(ARGV[a + 2])] }
    if f == '' then wants_string(k) else wants_field(k, f) end
    a = a + 3
  end
  reqs[r] = { cost, o, limits, usage, x, y, uday, al }
end
load_all()

local out = {}
for r = 1, n_requests do
  local q = reqs[r]
  local ok, res, writes
  if q[2] == 'R' then
    ok, res, writes = pcall(refund, q[1], q[3])
  elseif q[2] == 'S' then
    ok, res, writes = pcall(settle, q[1], q[5], q[6], q[3], q[4], q[7], q[8])
  elseif q[2] == 'F' then
    ok, res, writes = pcall(give_back, q[1], q[3], q[4], q[5], q[7])
  else
    ok, res, writes = pcall(decide, q[1], q[3], q[4], q[2] == 'D', q[5], q[7], q[8])
  end
  if ok then
    if writes then apply_all(writes) end
    if writes and writes.alerts then fire(r, writes.alerts) end
  else
    -- an error raised by redis.call is a table with the message in `err`
    if type(res) == 'table' then res = res.err end
    res = { -1, tostring(res), 0, 0, 0, 0, 0, 0, 0 }
  end
  for j = 1, 9 do out[#out + 1] = res[j] end
end
flush()
for j = 1, #EVENTS do out[#out + 1] = EVENTS[j] end
return out
