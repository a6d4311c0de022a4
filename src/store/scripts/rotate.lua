-- Rotates a refresh token: checks it, counts it against the daily cap, stores the new
-- one. Atomic.
--
-- KEYS[1]  tg:{sid}:session         the session record (hash)
-- KEYS[2]  tg:{sid}:reused          marker left by a reuse revocation
-- ARGV[1]  keyed hash of the presented refresh token
-- ARGV[2]  keyed hash of the new refresh token
-- ARGV[3]  grace window for the immediate parent, milliseconds (0 = off)
-- ARGV[4]  refreshes allowed per UTC day
-- ARGV[5]  today's UTC day number
-- ARGV[6]  now, unix milliseconds
-- ARGV[7]  the device of the signed request
--
-- Returns 1 = reused (the session is deleted now, or was for an earlier reuse),
-- 2 = session gone, 3 = cap reached,
-- 4 = device mismatch, or the session's fields (HGETALL form) after rotating.

local s = redis.call('HMGET', KEYS[1], 'refresh_hash', 'prev_hash', 'prev_at', 'rc_day', 'rc_n', 'device_id')
if not s[1] then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    return 1
  end
  return 2
end
if s[6] ~= ARGV[7] then
  return 4
end
local current = s[1] == ARGV[1]
local parent_in_grace = s[2] and s[2] == ARGV[1]
  and tonumber(ARGV[3]) > 0
  and tonumber(ARGV[6]) - tonumber(s[3] or '0') <= tonumber(ARGV[3])
if not current and not parent_in_grace then
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then
    redis.call('SET', KEYS[2], '1', 'PX', left)
  end
  redis.call('DEL', KEYS[1])
  return 1
end
local count = 0
if s[4] == ARGV[5] then
  count = tonumber(s[5] or '0')
end
if count >= tonumber(ARGV[4]) then
  return 3
end
if current then
  -- The presented token becomes the parent; a parent retry keeps its original window.
  redis.call('HSET', KEYS[1], 'prev_hash', ARGV[1], 'prev_at', ARGV[6])
end
redis.call('HSET', KEYS[1], 'refresh_hash', ARGV[2], 'rc_day', ARGV[5], 'rc_n', count + 1)
return redis.call('HGETALL', KEYS[1])
