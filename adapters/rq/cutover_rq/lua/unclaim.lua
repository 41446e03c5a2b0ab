-- Undo claim_next.lua for a job the worker refuses to run (unknown task, undecodable): the
-- hash fields the claim wrote get their earlier values back (or go, if they had none), the
-- execution leaves rq:wip, and the job goes back to its place in its queue (before the job that
-- followed it, else after the one before it, else at the front) or to the scheduled registry. Only while the claim is still this execution's.
-- ARGV: id, member, from ('queue'|'scheduled'), score, previous id, next id, n restored,
--       field, value, ...,
--       fields to delete...
local id, member, from, score, prev, nxt = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local nset = tonumber(ARGV[7])
local h = 'rq:job:' .. id
local f = redis.call('HMGET', h, 'cutover_execution', 'origin')
if f[1] ~= member or not f[2] then return 0 end
local origin = f[2]
local restore = {}
for i = 8, 7 + 2 * nset do restore[#restore + 1] = ARGV[i] end
if #restore > 0 then redis.call('HSET', h, unpack(restore)) end
for i = 8 + 2 * nset, #ARGV do redis.call('HDEL', h, ARGV[i]) end
redis.call('ZREM', 'rq:wip:' .. origin, member)
local key = 'rq:queue:' .. origin
if from == 'queue' then
  local placed = -1
  if nxt ~= '' then placed = redis.call('LINSERT', key, 'BEFORE', nxt, id) end
  if placed <= 0 and prev ~= '' then placed = redis.call('LINSERT', key, 'AFTER', prev, id) end
  if placed <= 0 then redis.call('LPUSH', key, id) end
else
  redis.call('ZADD', 'rq:scheduled:' .. origin, score, id)
end
return 1
