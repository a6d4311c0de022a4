-- Appends a push to its user's history and, when asked, publishes the hub message that
-- delivers it, in one atomic step: the order of the history is then the order in which
-- every node hears the pushes, so every socket of the user gets them in id order,
-- whichever nodes published them.
--
-- KEYS[1]  tg:{u:<user>}:pushes     the history (stream, entry ids <seq>-0); on a
--          Cluster tg:{<p>}:pushes:<user>, in the slot of the user's hub partition
-- ARGV[1]  pushes kept (MAXLEN, exact)
-- ARGV[2]  TTL in ms after this push
-- ARGV[3]  a fresh epoch, used when the history is missing
-- ARGV[4]  the session the push is for, or '' for the whole user
-- ARGV[5]  topic
-- ARGV[6]  data (JSON text)
-- ARGV[7]  hub channel, or '' to publish nothing
-- ARGV[8]  hub message text before the id
-- ARGV[9]  hub message text after the id
-- ARGV[10] 'sharded' on a Redis Cluster: SPUBLISH (the channel is then in KEYS[1]'s
--          slot), else PUBLISH
--
-- Returns the push id, `<epoch>:<seq>`.

local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local epoch = ARGV[3]
local seq = 1
if last then
  -- The entry's first field is `e`, the epoch.
  epoch = last[2][2]
  seq = tonumber(string.match(last[1], '^(%d+)-')) + 1
else
  -- A missing history, or an empty stream left behind: start a new epoch.
  redis.call('DEL', KEYS[1])
end
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], string.format('%d-0', seq),
  'e', epoch, 's', ARGV[4], 't', ARGV[5], 'd', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local id = epoch .. ':' .. string.format('%d', seq)
if ARGV[7] ~= '' then
  local publish = 'PUBLISH'
  if ARGV[10] == 'sharded' then
    publish = 'SPUBLISH'
  end
  redis.call(publish, ARGV[7], ARGV[8] .. id .. ARGV[9])
end
return id
