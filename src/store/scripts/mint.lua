-- Mints a ticket: checks the session, records the nonce, stores the ticket. Atomic.
--
-- KEYS[1]  tg:{sid}:session         the session record (hash)
-- KEYS[2]  tg:{sid}:nonce:<nonce>   the request's nonce
-- KEYS[3]  tg:{sid}:ticket:<id>     the ticket
-- ARGV[1]  nonce TTL, milliseconds (>= 1)
-- ARGV[2]  the grant, TicketGrant::encode()
-- ARGV[3]  ticket TTL, milliseconds (>= 1)
--
-- Returns 0 = minted, 1 = nonce replayed, 2 = session gone. Only "minted" writes.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 2
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then
  return 1
end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
return 0
