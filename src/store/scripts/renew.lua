-- Counts a sliding renewal (X-New-Token): once per access token, within the daily cap.
-- Atomic.
--
-- KEYS[1]  tg:{sid}:session         the session record (hash)
-- KEYS[2]  tg:{sid}:renewed:<jti>   marker: this access token was renewed
-- ARGV[1]  marker TTL, milliseconds (>= 1)
-- ARGV[2]  refreshes allowed per UTC day
-- ARGV[3]  today's UTC day number
--
-- Returns 0 = renewed, 1 = already renewed, 2 = session gone, 3 = cap reached.

local s = redis.call('HMGET', KEYS[1], 'rc_day', 'rc_n', 'session_id')
if not s[3] then
  return 2
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 1
end
local count = 0
if s[1] == ARGV[3] then
  count = tonumber(s[2] or '0')
end
if count >= tonumber(ARGV[2]) then
  return 3
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
redis.call('HSET', KEYS[1], 'rc_day', ARGV[3], 'rc_n', count + 1)
return 0
