-- Polls a QR login. Atomic. Same semantics as QrRecord::poll: the secret (compared in
-- constant time, by hash) and the device come first, then the pace, then rotation and
-- state; a confirmed QR polled by its redeemer is deleted.
--
-- KEYS[1]  tg:{qr:<family>}:qr      the QR login (hash)
-- ARGV[1]  the polled generation
-- ARGV[2]  hash of the presented poll secret
-- ARGV[3]  the poller's device id
-- ARGV[4]  the poller's client type
-- ARGV[5]  now, unix milliseconds
-- ARGV[6]  shortest interval between polls, milliseconds
-- ARGV[7]  rotation period, milliseconds
-- ARGV[8]  the generation that replaces a due one
--
-- Returns 0 = gone (unknown, expired, wrong secret or device), {1, wait_ms} = slow
-- down, {2, generation, expires_ms} = rotated, 3 = pending, 4 = scanned (or
-- {4, scanner_ip, scanned_ms} to a login_other QR's creator),
-- 5 = confirmed (not this poller's to redeem), {6, user_id, approver_session} =
-- redeemed (the record is deleted).

local function equal(a, b)
  if not a or not b or #a ~= #b then
    return false
  end
  local diff = 0
  for i = 1, #a do
    diff = bit.bor(diff, bit.bxor(string.byte(a, i), string.byte(b, i)))
  end
  return diff == 0
end

local f = redis.call('HMGET', KEYS[1], 'generation', 'state', 'mode', 'owner_hash',
  'owner_device', 'owner_client_type', 'scanner_hash', 'scanner_device',
  'scanner_client_type', 'owner_poll_ms', 'scanner_poll_ms', 'rotated_ms', 'expires_ms',
  'approver_user', 'approver_session', 'scanner_ip', 'scanned_ms')
if not f[1] then
  return 0
end

local owner = equal(f[4], ARGV[2])
local scanner = false
if f[7] and f[7] ~= '' then
  scanner = equal(f[7], ARGV[2])
end
if owner then
  if f[5] ~= ARGV[3] or f[6] ~= ARGV[4] then
    return 0
  end
elseif scanner then
  if not f[8] or f[8] == '' then
    redis.call('HSET', KEYS[1], 'scanner_device', ARGV[3], 'scanner_client_type', ARGV[4])
  elseif f[8] ~= ARGV[3] or f[9] ~= ARGV[4] then
    return 0
  end
else
  return 0
end

local now = tonumber(ARGV[5])
local interval = tonumber(ARGV[6])
local last, field
if owner then
  last, field = tonumber(f[10]) or 0, 'owner_poll_ms'
else
  last, field = tonumber(f[11]) or 0, 'scanner_poll_ms'
end
if last > 0 and now - last < interval then
  return {1, math.max(interval - math.max(now - last, 0), 1)}
end
redis.call('HSET', KEYS[1], field, ARGV[5])

local expires = tonumber(f[13])
if f[1] ~= ARGV[1] then
  return {2, f[1], expires}
end
if f[2] == 'pending' then
  if now >= tonumber(f[12]) + tonumber(ARGV[7]) then
    redis.call('HSET', KEYS[1], 'generation', ARGV[8], 'rotated_ms', ARGV[5])
    return {2, ARGV[8], expires}
  end
  return 3
end
if f[2] == 'scanned' then
  if owner and f[3] == 'login_other' then
    return {4, f[16], f[17]}
  end
  return 4
end
local redeemer = scanner
if f[3] == 'login_this' then
  redeemer = owner
end
if not redeemer then
  return 5
end
redis.call('DEL', KEYS[1])
return {6, f[14], f[15]}
