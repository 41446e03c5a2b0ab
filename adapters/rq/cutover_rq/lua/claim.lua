-- Claim one job for a cutover worker, only if it is still runnable: removing it from its queue
-- list (or the scheduled registry, once due) is what decides who owns it.
-- ARGV: id, now, worker, execution member, started_at, wip score.  Returns 1 when claimed.
local id, now, worker, member, started_at, wip_score =
  ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local h = 'rq:job:' .. id
local f = redis.call('HMGET', h, 'status', 'origin', 'cutover_held')
local status, origin = f[1], f[2]
if not status or not origin or f[3] then return 0 end
local n = 0
if status == 'queued' then
  n = redis.call('LREM', 'rq:queue:' .. origin, 1, id)
elseif status == 'scheduled' then
  local s = redis.call('ZSCORE', 'rq:scheduled:' .. origin, id)
  if s and tonumber(s) <= now then
    n = redis.call('ZREM', 'rq:scheduled:' .. origin, id)
  end
end
if n == 0 then return 0 end
redis.call('HSET', h, 'status', 'started', 'started_at', started_at, 'worker_name', worker,
           'cutover_worker', worker, 'cutover_execution', member)
redis.call('ZADD', 'rq:wip:' .. origin, wip_score, member)
return 1
