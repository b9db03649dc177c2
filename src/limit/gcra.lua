-- keygate: one client's GCRA budget and calendar quota, in one call.
-- Redis's own clock (TIME), so the instances' clocks do not matter.
--
-- KEYS[1]  the rate bucket: its theoretical arrival time (TAT), ms since the epoch
-- KEYS[2]  the quota count of the current period (only when ARGV[3] > 0)
-- ARGV[1]  emission interval in ms (1000 / per_second); 0 when the rate is not shared
-- ARGV[2]  burst
-- ARGV[3]  quota requests per period; 0 for none
-- ARGV[4]  lifetime of the quota key in ms (to the period's end, plus slack)
--
-- Returns {verdict, remaining, retry_after_ms, reset_ms, quota_used}:
-- verdict 0 allowed, 1 rate limited, 2 quota exceeded. Only an allowed
-- request is counted, in the bucket and in the quota.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local quota = tonumber(ARGV[3])
local remaining, reset, new_tat = burst, 0, nil
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
  if tat < now then tat = now end
  local tolerance = interval * (burst - 1)
  -- 1 µs of slack: the TAT is stored rounded to µs.
  if tat - now > tolerance + 0.001 then
    return {1, 0, math.ceil(tat - tolerance - now), math.ceil(tat - now), -1}
  end
  new_tat = tat + interval
  remaining = math.floor((now + tolerance - tat) / interval + 0.000001)
  reset = new_tat - now
end
local used = -1
if quota > 0 then
  used = tonumber(redis.call('GET', KEYS[2]) or 0) or 0
  if used >= quota then
    return {2, 0, 0, 0, used}
  end
  used = redis.call('INCR', KEYS[2])
  if used == 1 then
    redis.call('PEXPIRE', KEYS[2], ARGV[4])
  end
end
if new_tat then
  -- The key expires once the bucket would be full again.
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
end
return {0, remaining, 0, math.ceil(reset), used}
