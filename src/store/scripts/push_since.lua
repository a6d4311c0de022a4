-- What a client that last saw push <epoch>:<seq> missed, in one step.
--
-- KEYS[1]  tg:{u:<user>}:pushes     the history
-- ARGV[1]  the epoch of `since` ('' when `since` is not this server's form)
-- ARGV[2]  the sequence of `since` ('0' when not this server's form)
-- ARGV[3]  the connecting session
--
-- Returns {} when there is no history; else {last_id, recovered (0|1), then for each
-- push after `since` that is for the whole user or for ARGV[3]: seq, session, topic,
-- data}. Recovered means the history holds every push after `since`: same epoch, and
-- `since` neither newer than the newest nor older than the one before the oldest.

local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if not first or not last then
  return {}
end
local epoch = last[2][2]
local first_seq = tonumber(string.match(first[1], '^(%d+)-'))
local last_seq = tonumber(string.match(last[1], '^(%d+)-'))
local out = {epoch .. ':' .. string.format('%d', last_seq)}
local since = tonumber(ARGV[2])
if epoch ~= ARGV[1] or since == nil or since > last_seq or since + 1 < first_seq then
  out[2] = 0
  return out
end
out[2] = 1
if since == last_seq then
  return out
end
local after = redis.call('XRANGE', KEYS[1], string.format('%d-0', since + 1), '+')
for _, entry in ipairs(after) do
  local f = entry[2]
  -- Fields in the order push.lua writes them: e, s, t, d.
  if f[4] == '' or f[4] == ARGV[3] then
    table.insert(out, string.match(entry[1], '^(%d+)-'))
    table.insert(out, f[4])
    table.insert(out, f[6])
    table.insert(out, f[8])
  end
end
return out
