-- Scans a QR login: pending -> scanned. Atomic. Same semantics as QrRecord::scan.
--
-- KEYS[1]  tg:{qr:<family>}:qr      the QR login (hash)
-- ARGV[1]  the scanned generation
-- ARGV[2]  the scanning session id, '' when the scan is unauthenticated
-- ARGV[3]  that session's user id
-- ARGV[4]  hash of a fresh poll secret (a login_other QR gives it to the scanner)
-- ARGV[5]  now, unix milliseconds
-- ARGV[6]  rotation period, milliseconds
-- ARGV[7]  the scanner's IP address (kept for a login_other QR's creator)
--
-- Returns 0 = gone (unknown, expired, rotated or due, already scanned),
-- 1 = a login_this QR needs a session, or {mode, client_type, ip, created_ms}.

local f = redis.call('HMGET', KEYS[1], 'generation', 'state', 'rotated_ms', 'mode',
  'owner_client_type', 'ip', 'created_ms')
if not f[1] then
  return 0
end
if f[1] ~= ARGV[1] or f[2] ~= 'pending'
    or tonumber(ARGV[5]) >= tonumber(f[3]) + tonumber(ARGV[6]) then
  return 0
end
if f[4] == 'login_this' then
  if ARGV[2] == '' then
    return 1
  end
  redis.call('HSET', KEYS[1], 'approver_session', ARGV[2], 'approver_user', ARGV[3],
    'state', 'scanned')
else
  redis.call('HSET', KEYS[1], 'scanner_hash', ARGV[4], 'scanner_ip', ARGV[7],
    'scanned_ms', ARGV[5], 'state', 'scanned')
end
return {f[4], f[5], f[6], f[7]}
