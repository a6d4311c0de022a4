-- Creates (or replaces) a QR login record, expiring after its life. Atomic.
--
-- KEYS[1]  tg:{qr:<family>}:qr      the QR login (hash)
-- ARGV[1]  life, milliseconds (>= 1)
-- ARGV[2..] field, value, field, value, ...  (store/qr.rs, QrRecord)
--
-- Returns 1.

redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
