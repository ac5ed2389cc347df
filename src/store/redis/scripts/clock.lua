-- clock.lua: the scripts' "now" (inserted at each script's `-- @clock` line;
-- see src/store/redis/mod.rs).
--
-- ARGV[1] is empty in production: time is the Redis server's own clock
-- (TIME), so replicas with skewed clocks agree. Only builds with the
-- `test-clock` feature pass an instant here (µs since the epoch), so that the
-- model-based tests can choose every instant. Keys still expire by Redis's
-- real clock, so such a test instant lengthens every TTL by a day
-- (TTL_SLACK_MS): a key must never vanish before the test's clock says so.

local now_us, TTL_SLACK_MS
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  TTL_SLACK_MS = 0
else
  now_us = tonumber(ARGV[1])
  TTL_SLACK_MS = 86400000
end
local now_ms = math.floor(now_us / 1000)
local today = math.floor(now_us / 86400000000)

-- Makes `key` expire at `at_ms` by the scripts' clock (exactly then, with
-- Redis's own clock).
local function expire_at(key, at_ms)
  if TTL_SLACK_MS == 0 then
    redis.call('PEXPIREAT', key, at_ms)
  else
    redis.call('PEXPIRE', key, at_ms - now_ms + TTL_SLACK_MS)
  end
end
