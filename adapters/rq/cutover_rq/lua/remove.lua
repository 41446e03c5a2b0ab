-- Delete jobs from every place RQ or cutover keeps them, except a dependents set that a deferred
-- job still needs. ARGV: id...  Returns how many existed.
local removed = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  local h = 'rq:job:' .. id
  local f = redis.call('HMGET', h, 'origin', 'cutover_job_key', 'status', 'cutover_held')
  local origin, jobkey, status, held = f[1], f[2], f[3], f[4]
  if redis.call('EXISTS', h) == 1 then removed = removed + 1 end
  if origin then
    -- A held job is in no list (take removed it): skip the O(length) list scans, which would
    -- make releasing a drained batch quadratic.
    if not held then
      redis.call('LREM', 'rq:queue:' .. origin, 0, id)
      redis.call('LREM', 'rq:queue:' .. origin .. ':intermediate', 0, id)
    end
    for _, reg in ipairs({'scheduled', 'deferred', 'failed', 'finished', 'canceled', 'ready'}) do
      redis.call('ZREM', 'rq:' .. reg .. ':' .. origin, id)
    end
    if status == 'started' and not held then
      for _, m in ipairs(redis.call('ZRANGE', 'rq:wip:' .. origin, 0, -1)) do
        if m == id or string.sub(m, 1, #id + 1) == id .. ':' then
          redis.call('ZREM', 'rq:wip:' .. origin, m)
        end
      end
    end
    redis.call('ZREM', 'cutover:held:' .. origin, id)
  end
  if jobkey and redis.call('GET', 'cutover:key:' .. jobkey) == id then
    redis.call('DEL', 'cutover:key:' .. jobkey)
  end
  -- Its parents no longer need to release it (as RQ's own delete does).
  for _, p in ipairs(redis.call('SMEMBERS', 'rq:job::' .. id .. ':dependencies')) do
    redis.call('SREM', 'rq:job:' .. p .. ':dependents', id)
    redis.call('SREM', 'cutover:held-dependents:' .. p, id)  -- held out of that set (take.lua)
  end
  -- Its dependents set stays while a dependent still waits on it: the job moved to another
  -- backend, and the set is what lets it release them if it comes back, and what tells
  -- dependents.lua that its outcome is elsewhere (not expired after finishing).
  local waiting = false
  for _, c in ipairs(redis.call('SMEMBERS', h .. ':dependents')) do
    if redis.call('HGET', 'rq:job:' .. c, 'status') == 'deferred' then waiting = true; break end
  end
  if not waiting then redis.call('DEL', h .. ':dependents') end
  redis.call('DEL', h, 'rq:job::' .. id .. ':dependencies', 'rq:results:' .. id,
             'rq:executions:' .. id)
end
return removed
