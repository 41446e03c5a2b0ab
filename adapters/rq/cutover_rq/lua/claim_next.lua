-- Claim the next runnable job for a cutover worker in one call: the first job of the first
-- unpaused queue (then its due scheduled jobs) that is still runnable and not in the caller's
-- skip list is taken off its list (or the scheduled registry) and marked started, atomically,
-- so concurrent worker threads each get a different job instead of racing for the same one.
-- ARGV: now, worker, started_at, wip score, execution id, n skipped, skipped ids...,
--       queue names... (none: every queue in rq:queues, in name order).
-- Returns nil, or {id, from ('queue'|'scheduled'), score, previous id, next id, field, value,
-- ...}: its neighbours in the queue list ('' for none; where unclaim.lua puts it back) and the
-- job hash as it was before the claim (what the caller decodes; what unclaim.lua restores).
local now, worker, started_at, wip_score, execution =
  tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local nskip = tonumber(ARGV[6])
if redis.call('SISMEMBER', 'cutover:paused', '*') == 1 then return nil end
local skip = {}
for i = 7, 6 + nskip do skip[ARGV[i]] = true end
local queues = {}
for i = 7 + nskip, #ARGV do queues[#queues + 1] = ARGV[i] end
if #queues == 0 then
  for _, key in ipairs(redis.call('SMEMBERS', 'rq:queues')) do
    if string.sub(key, 1, 9) == 'rq:queue:' then queues[#queues + 1] = string.sub(key, 10) end
  end
  table.sort(queues)
end

local function take(id, from, score, prev, nxt)
  local h = 'rq:job:' .. id
  local f = redis.call('HMGET', h, 'status', 'origin', 'cutover_held')
  local status, origin = f[1], f[2]
  if not status or not origin or f[3] then return nil end
  local n = 0
  if from == 'queue' and status == 'queued' then
    n = redis.call('LREM', 'rq:queue:' .. origin, 1, id)
  elseif from == 'scheduled' and status == 'scheduled' then
    local s = redis.call('ZSCORE', 'rq:scheduled:' .. origin, id)
    if s and tonumber(s) <= now then
      score = s
      n = redis.call('ZREM', 'rq:scheduled:' .. origin, id)
    end
  end
  if n == 0 then return nil end
  local before = redis.call('HGETALL', h)
  local member = id .. ':' .. execution
  redis.call('HSET', h, 'status', 'started', 'started_at', started_at, 'worker_name', worker,
             'cutover_worker', worker, 'cutover_execution', member)
  redis.call('ZADD', 'rq:wip:' .. origin, wip_score, member)
  local out = {id, from, score, prev or '', nxt or ''}
  for _, v in ipairs(before) do out[#out + 1] = v end
  return out
end

for _, q in ipairs(queues) do
  if redis.call('SISMEMBER', 'cutover:paused', q) == 0 then
    local ids = redis.call('LRANGE', 'rq:queue:' .. q, 0, 100)
    for k = 1, math.min(#ids, 100) do
      local id = ids[k]
      if not skip[id] then
        local got = take(id, 'queue', '0', ids[k - 1], ids[k + 1])
        if got then return got end
      end
    end
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', 'rq:scheduled:' .. q, '-inf', now,
                                   'LIMIT', 0, 100)) do
      if not skip[id] then
        local got = take(id, 'scheduled', '0', nil, nil)
        if got then return got end
      end
    end
  end
end
return nil
