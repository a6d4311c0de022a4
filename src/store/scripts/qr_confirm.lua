-- Confirms a scanned QR login: scanned -> confirmed, by the approving session only.
-- Atomic: of concurrent confirms exactly one finds "scanned". Same semantics as
-- QrRecord::confirm.
--
-- KEYS[1]  tg:{qr:<family>}:qr      the QR login (hash)
-- ARGV[1]  the confirmed generation
-- ARGV[2]  the confirming session id
--
-- Returns 1 = confirmed, 0 = gone (unknown, expired, not scanned, confirmed already,
-- another session).

local f = redis.call('HMGET', KEYS[1], 'generation', 'state', 'approver_session')
if not f[1] then
  return 0
end
if f[1] ~= ARGV[1] or f[2] ~= 'scanned' or not f[3] or f[3] == '' or f[3] ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'confirmed')
return 1
