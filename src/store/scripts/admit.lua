-- Admits a ticket: consumes it, then checks device and session. Atomic.
--
-- KEYS[1]  tg:{sid}:ticket:<id>     the ticket
-- KEYS[2]  tg:{sid}:session         the session record (hash)
-- ARGV[1]  the device presenting the ticket
--
-- Returns 0 = unknown, 1 = device mismatch, 2 = session gone, or the grant string
-- (TicketGrant::encode(), device first) when admitted. The ticket is gone in every case.

local grant = redis.call('GETDEL', KEYS[1])
if not grant then
  return 0
end
local bar = string.find(grant, '|', 1, true)
local device = grant
if bar then
  device = string.sub(grant, 1, bar - 1)
end
if device ~= ARGV[1] then
  return 1
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 2
end
return grant
