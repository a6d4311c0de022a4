-- Creates or replaces a session record, expiring at its end. Atomic.
--
-- KEYS[1]  tg:{sid}:session         the session record (hash)
-- ARGV[1]  expires_at, Unix seconds (a time in the past deletes the record)
-- ARGV[2..] field, value, field, value, ...
--
-- Returns 1.

redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIREAT', KEYS[1], ARGV[1])
return 1
