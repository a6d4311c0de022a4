-- Adds a session to its user's index and keeps the index alive as long as its
-- longest-lived session. Atomic.
--
-- KEYS[1]  tg:{u:<user>}:sessions   the index (hash sid → "ctp|created_at|expires_at")
-- ARGV[1]  session id
-- ARGV[2]  "ctp|created_at|expires_at"
-- ARGV[3]  expires_at, unix seconds
--
-- Returns 1.

redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = redis.call('TTL', KEYS[1])
local wanted = tonumber(ARGV[3]) - tonumber(redis.call('TIME')[1])
if ttl < 0 or ttl < wanted then
  redis.call('EXPIREAT', KEYS[1], ARGV[3])
end
return 1
